"""Who may call which HTTP endpoint: bearer tokens with scopes, kept hashed, and a limit on failures.

Pure logic, no I/O: the HTTP adapter (``service.http``) reads the header and the client address
and asks :func:`authorize`; the run command reads the token file and asks :func:`check_exposure`.

Why each rule:

- **Tokens are stored as SHA-256 digests** (``NAME SCOPES sha256:HEX`` per line), never in clear:
  a leaked token file or environment dump does not let anyone in. A plain hash (no salt, no
  stretching) is enough because the tokens are 256-bit random strings made by
  ``moldwatch token create``: there is nothing to guess, only to look up.
- **A request is matched by its digest**, one dict lookup: the cost of a wrong token is one hash,
  the same for every wrong token, and no comparison leaks how much of a token was right.
- **Scopes** say what a token may do (``score``, ``recipes``, ``feedback``, ``metrics``); a valid
  token without the scope gets 403, every other failure 401. Bodies never say which tokens exist
  or which names they carry.
- **Oversized credentials** (an ``Authorization`` header over :data:`MAX_AUTHORIZATION_BYTES`) are
  refused before hashing.
- **Failures are rate limited per client address** (a token bucket, :class:`FailureLimiter`): a
  client past its budget gets 429 with ``Retry-After`` and is not even hashed until the bucket
  refills. The table of clients is bounded (least recently failed dropped first), so a flood of
  addresses cannot grow memory. Trade-off: a well-behaved client behind the same address as an
  attacker (one NAT) waits out the window too.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from model_store.errors import MoldwatchError

SCOPES: tuple[str, ...] = ("score", "recipes", "feedback", "metrics")
# Longer than any token this project makes (``mw_`` + 43 characters) by far, short enough that a
# hostile header costs nothing to refuse.
MAX_AUTHORIZATION_BYTES = 512
TOKEN_PREFIX = "mw_"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class TokenFileError(MoldwatchError, ValueError):
    """A token table that cannot be read; the message names the place (file:line) and what was expected."""


class ExposureError(MoldwatchError, ValueError):
    """Scoped endpoints would be open to the network; the message says what to do."""


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class TokenTable:
    """Known tokens by digest (``sha256`` hex of the token text)."""

    by_digest: Mapping[str, Token] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_digest)

    def names(self) -> list[str]:
        return sorted(t.name for t in self.by_digest.values())


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe: it goes into a header and a shell variable)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_line(name: str, scopes: list[str], token: str) -> str:
    """The table line for ``token`` (what ``moldwatch token create`` appends to the file)."""
    if not _NAME.match(name) or name.startswith(TOKEN_PREFIX):
        raise TokenFileError(f"token name {name[:80]!r}: expected 1-64 letters, digits or _.@-, not starting with "
                             f"{TOKEN_PREFIX}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise TokenFileError(f"scopes {','.join(scopes) or '(none)'}: expected one or more of {', '.join(SCOPES)}")
    return f"{name} {','.join(sorted(set(scopes), key=SCOPES.index))} sha256:{token_digest(token)}"


def parse_tokens(text: str, where: str) -> TokenTable:
    """Read a token table: one ``NAME SCOPE[,SCOPE...] sha256:HEX`` per line (``;`` also ends a
    line, for an environment variable); blank lines and ``#`` comments are skipped.

    Raises :class:`TokenFileError` naming ``where:line`` and what was expected.
    """
    by_digest: dict[str, Token] = {}
    names: set[str] = set()
    lines = text.replace(";", "\n").splitlines()
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        at = f"{where}:{number}"
        parts = line.split()
        if len(parts) != 3:
            raise TokenFileError(f"{at}: expected 'NAME SCOPES sha256:HEX' (3 fields), got {len(parts)}")
        name, scope_text, digest_text = parts
        if name.startswith(TOKEN_PREFIX):  # a token pasted into the name field would be logged as a name
            raise TokenFileError(f"{at}: the name looks like a token; expected 'NAME SCOPES sha256:HEX' with a "
                                 "name such as mes-gateway (names are logged, tokens never)")
        if not _NAME.match(name):
            raise TokenFileError(f"{at}: token name {name[:80]!r}: expected 1-64 letters, digits or _.@-")
        scopes = [s for s in scope_text.split(",") if s]
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise TokenFileError(f"{at}: scope {(unknown or [scope_text])[0][:40]!r} unknown; expected one or more of "
                                 f"{', '.join(SCOPES)}, comma-separated")
        match = _DIGEST.match(digest_text)
        if match is None:
            hint = " (this looks like a token in clear: store its digest, see `moldwatch token create`)" \
                if digest_text.startswith(TOKEN_PREFIX) else ""
            raise TokenFileError(f"{at}: expected sha256:<64 lowercase hex digits>{hint}")
        if name in names:
            raise TokenFileError(f"{at}: token name {name!r} appears twice")
        if match.group(1) in by_digest:
            raise TokenFileError(f"{at}: the same token is listed twice")
        names.add(name)
        by_digest[match.group(1)] = Token(name, frozenset(scopes))
    return TokenTable(by_digest)


@dataclass(frozen=True)
class Decision:
    """What to answer: ``status`` 0 lets the request through (``token`` says whose it is)."""

    status: int
    reason: str  # a metric label: ok, missing_token, bad_scheme, oversized, invalid_token, missing_scope
    message: str = ""
    token: Token | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 0


def authorize(table: TokenTable, authorization: bytes | None, scope: str) -> Decision:
    """Decide on one request to an endpoint that needs ``scope``, from its ``Authorization`` header."""
    if authorization is None or not authorization.strip():
        return Decision(401, "missing_token", f"this endpoint needs a bearer token with the {scope!r} scope "
                        "(header 'Authorization: Bearer <token>')")
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        return Decision(401, "oversized", f"Authorization header over {MAX_AUTHORIZATION_BYTES} bytes")
    scheme, _, credential = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credential.strip():
        return Decision(401, "bad_scheme", "expected 'Authorization: Bearer <token>'")
    digest = hashlib.sha256(credential.strip()).hexdigest()
    token = table.by_digest.get(digest)
    if token is None:
        return Decision(401, "invalid_token", "token not accepted")
    if scope not in token.scopes:
        return Decision(403, "missing_scope", f"this token does not carry the {scope!r} scope")
    return Decision(0, "ok", token=token)


class FailureLimiter:
    """Per-client token bucket of failed attempts: ``burst`` failures at once, refilled at
    ``burst / window_s`` per second; at most ``max_clients`` addresses remembered."""

    def __init__(self, burst: int = 20, window_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or window_s <= 0 or max_clients < 1:
            raise ValueError("burst >= 1, window_s > 0 and max_clients >= 1 expected")
        self.burst = burst
        self.rate = burst / window_s
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 while it has budget left."""
        if client not in self._buckets:
            return 0.0
        level = self._level(client, self._clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def failed(self, client: str) -> bool:
        """Count one failure of ``client``; True when this one used up its budget (log it once)."""
        now = self._clock()
        level = self._level(client, now) - 1.0
        self._buckets[client] = (max(level, 0.0), now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return 0.0 <= level < 1.0

    def __len__(self) -> int:
        return len(self._buckets)


def is_loopback(host: str) -> bool:
    """True only for addresses that no other machine can reach (``localhost`` included)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure(host: str, table: TokenTable, allow_open: bool) -> None:
    """Refuse to serve scoped endpoints without tokens on an address other machines can reach."""
    if len(table) or allow_open or is_loopback(host):
        return
    raise ExposureError(
        f"HTTP on {host} would serve /score, /recipes and /metrics to anyone on the network: give tokens "
        "(--http-tokens-file or MOLDWATCH_HTTP_TOKENS; make one with `moldwatch token create NAME --scopes ...`), "
        "bind to 127.0.0.1 (--http-host), or accept it explicitly with --http-allow-open (insecure)")


__all__ = [
    "SCOPES", "MAX_AUTHORIZATION_BYTES", "Token", "TokenTable", "TokenFileError", "ExposureError", "Decision",
    "FailureLimiter", "authorize", "parse_tokens", "token_line", "token_digest", "new_token", "is_loopback",
    "check_exposure",
]
