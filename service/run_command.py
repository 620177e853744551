"""``moldwatch run``: the streaming worker as a command.

Its options are generated from :class:`~service.config.WorkerSettings`, so ``--help`` lists every
setting with its environment variable and default, and cannot drift from the model. A flag wins
over the environment, which wins over ``.env``. Secrets have no flag on purpose (a command line
is visible to every user of the host in ``ps``): they come from the environment or ``.env`` only.

The command owns the process: its signal handlers and the HTTP server (:func:`serve`), started
beside the :class:`~service.worker.Worker`, which only exposes what the endpoints need
(liveness, readiness, ``score_document``, recipes, metrics).
"""
from __future__ import annotations

import asyncio
import inspect
import signal
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

from service.cli_errors import fail, user_errors
from service.config import WorkerSettings, env_name, is_secret

if TYPE_CHECKING:
    from service.worker import Worker

SECRETS = [name for name in WorkerSettings.model_fields if is_secret(name)]


def _cli_type(annotation: Any) -> type:
    """The click-friendly type of a setting: Literals and secrets are strings, Optionals unwrapped."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _cli_type(args[0])
    if annotation in (bool, int, float, str, Path):
        return annotation
    return str


def _choices(annotation: Any) -> list[str]:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return [str(c) for c in typing.get_args(candidate)]
    return []


def _parameters() -> list[inspect.Parameter]:
    params = [
        inspect.Parameter(
            "env_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--env-file", help="Read settings from this file instead of ./.env.",
                                 rich_help_panel="Source"),
        )
    ]
    for name, field in WorkerSettings.model_fields.items():
        if name in SECRETS:
            continue
        kind = _cli_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        choices = _choices(field.annotation)
        default = field.default if field.default is not None else "none"
        text = (field.description or "").rstrip(".") + "."
        if choices:
            text += f" One of: {', '.join(choices)}."
        text += f" (env {env_name(name)}; default: {default})"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(None, *decls, help=text, show_default=False, rich_help_panel=str(extra.get("panel", "")) or None)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None, default=option))
    return params


def _settings(env_file: Path | None, overrides: dict[str, Any]) -> WorkerSettings:
    try:
        return WorkerSettings(_env_file=env_file or ".env", **overrides)  # type: ignore[call-arg]  # pydantic-settings' own init argument
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        if where:
            where = f"--{where.replace('_', '-')} / {env_name(where)}: "
        message = str(err.get("msg", ""))
        for prefix in ("Value error, ", "Assertion failed, "):  # pydantic's wrapping of a validator's own message
            message = message.removeprefix(prefix)
        fail(f"{where}{message}")
        raise  # unreachable: fail() exits


async def serve(worker: Worker, install_signal_handlers: bool = False) -> int:
    """Run ``worker`` with its HTTP server beside it (``http_enabled``) on this loop; return the
    worker's exit code. ``worker.http_port`` says where it listens once it does.

    Raises ``OSError`` when the HTTP port cannot be bound (before the worker starts), and what
    :meth:`Worker.run` raises. With ``install_signal_handlers``, SIGTERM/SIGINT call
    :meth:`Worker.stop` (a second one stops waiting for Kafka).
    """
    import structlog

    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
    for sig in signals:
        loop.add_signal_handler(sig, worker.stop)
    http: Any = None
    token_watch: asyncio.Task[None] | None = None
    try:
        if worker.settings.http_enabled:
            from service.http import start_http
            from service.http_guard import guarded_app

            app, tokens, tls = await guarded_app(worker)
            host = worker.settings.http_host
            http = await start_http(app, host, worker.settings.http_port, tls)
            worker.http_port = http[2]
            if tokens is not None and tokens.file is not None:
                token_watch = asyncio.create_task(tokens.file.watch(), name="moldwatch-http-tokens")
            structlog.get_logger("moldwatch.http").info(
                "http serving", url=f"{'https' if tls else 'http'}://{host}:{worker.http_port}",
                endpoints="/healthz /readyz /metrics /score /recipes/{facility}/{item}",
                access="tokens" if tokens is not None else "open")
        return await worker.run()
    finally:
        if token_watch is not None:
            token_watch.cancel()
        if worker.feedback is not None:
            await worker.feedback.close()
        if http is not None:
            from service.http import stop_http

            await stop_http(http[0], http[1])
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(**options: Any) -> None:
    env_file = options.pop("env_file", None)
    if env_file is not None and not Path(env_file).is_file():
        fail(f"{env_file}: env file not found")
    settings = _settings(env_file, {k: v for k, v in options.items() if v is not None})

    from service.logs import configure_logging
    from service.worker import Worker

    configure_logging(settings.log_level, settings.log_format)
    worker = Worker(settings)
    from service.gc_tuning import tune_for_streaming

    tune_for_streaming()  # this process runs the worker and nothing else
    from service.http_auth import ExposureError, TokenFileError

    try:
        code = asyncio.run(serve(worker, install_signal_handlers=True))
    except OSError as exc:
        fail(str(exc.strerror or exc))
        return
    except (TokenFileError, ExposureError) as exc:
        fail(str(exc))
        return
    raise typer.Exit(code)


# typer reads the options from the signature built here; a function declares no __signature__ to mypy.
run.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]  # see above
run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}  # type: ignore[attr-defined]  # see above
run.__annotations__["return"] = None

_EPILOG = (
    "Settings come from flags, then MOLDWATCH_* environment variables, then .env. "
    "Secrets are read from the environment or .env only: " + ", ".join(env_name(s) for s in SECRETS) + ". "
    "SIGTERM/SIGINT: stop reading, drain, flush Kafka, checkpoint, exit 0."
)


def register(app: typer.Typer) -> None:
    """Add ``run`` to a CLI app (called by service.cli)."""
    app.command(
        "run",
        help="Run the streaming worker: MongoDB change stream (or a Kafka topic) -> score -> Kafka verdicts, "
        "with /healthz /readyz /metrics and POST /score.",
        epilog=_EPILOG,
    )(user_errors(run))


__all__ = ["register", "run", "serve"]
