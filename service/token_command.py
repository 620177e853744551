"""``moldwatch token``: make, list and revoke the HTTP server's bearer tokens.

The tokens file holds one ``NAME SCOPES sha256:HEX`` line per token (``service.http_auth``); the
token itself is printed once, by ``create``, and never stored. Every change rewrites the file
atomically (a temporary file renamed into place, mode 600), so a running worker re-reads a whole
file within two polls and never half of one. Rotation: create the new token, hand it out, revoke
the old one; nothing restarts.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from service.cli_errors import user_errors
from service.http_auth import SCOPES, TokenFileError, new_token, parse_tokens, token_line

token_app = typer.Typer(help="Bearer tokens for the worker's HTTP API (POST /score, /recipes, /feedback, /metrics).",
                        no_args_is_help=True)

FILE_OPTION = typer.Option(..., "--file", "-f", help="The tokens file (the worker's --http-tokens-file).")


def _read(path: Path) -> str:
    if not path.exists():
        return ""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path}: not UTF-8 text (byte {exc.start}); expected token lines") from None
    parse_tokens(text, str(path))  # refuse to add to (or remove from) a file the worker would refuse
    return text


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    partial.replace(path)


def create(name: str = typer.Argument(..., help="Who holds the token (shown in audit lines and logs)."),
           scopes: str = typer.Option(..., "--scopes", help=f"Comma-separated: {', '.join(SCOPES)}."),
           file: Path = FILE_OPTION) -> None:
    """Make a token, add its digest to the file and print the token (once: it is not stored)."""
    text = _read(file)
    if name in parse_tokens(text, str(file)).names():
        raise TokenFileError(f"{file}: a token named {name!r} exists; revoke it first or pick another name")
    token = new_token()
    line = token_line(name, [s.strip() for s in scopes.split(",") if s.strip()], token)
    _write(file, text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")
    typer.echo(token)
    print(f"token {name!r} ({line.split()[1]}) added to {file}; the token above is shown only now. "
          "Send it as 'Authorization: Bearer <token>'.", file=sys.stderr)


def revoke(name: str = typer.Argument(..., help="The token's name."), file: Path = FILE_OPTION) -> None:
    """Remove a token from the file; a running worker refuses it within two polls of the store."""
    text = _read(file)
    if name not in parse_tokens(text, str(file)).names():
        raise TokenFileError(f"{file}: no token named {name!r}")
    kept = [line for line in text.splitlines(keepends=True)
            if line.split("#", 1)[0].split()[:1] != [name]]
    _write(file, "".join(kept))
    print(f"token {name!r} removed from {file}", file=sys.stderr)


def list_tokens(file: Path = FILE_OPTION) -> None:
    """Names and scopes of the tokens in the file (the tokens themselves are not stored)."""
    table = parse_tokens(_read(file), str(file))
    for token in sorted(table.by_digest.values(), key=lambda t: t.name):
        typer.echo(f"{token.name}\t{','.join(s for s in SCOPES if s in token.scopes)}")


def register(app: typer.Typer) -> None:
    """Add ``token`` to a CLI app (called by service.cli, like the other command modules)."""
    token_app.command(name="create")(user_errors(create))
    token_app.command(name="revoke")(user_errors(revoke))
    token_app.command(name="list")(user_errors(list_tokens))
    app.add_typer(token_app, name="token")


__all__ = ["register", "create", "revoke", "list_tokens"]
