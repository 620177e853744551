"""The HTTP server's gate: which endpoint needs which scope, the token table (environment and a
watched file) and the rate limit on failures, as ASGI middleware in front of the FastAPI app.

The rules themselves (token format, decision, limiter) are pure logic in ``service.http_auth``;
this module is the adapter: it reads the file, keeps the table current through a
:class:`~service.reloader.Reloader` (a token removed from the file stops working within two polls,
no restart), counts failures in the worker's registry and writes the audit lines.

Endpoint scopes: ``/healthz`` and ``/readyz`` are open (orchestrators probe without credentials);
``POST /score`` needs ``score``; ``GET /recipes/...`` needs ``recipes``; ``/feedback`` needs
``feedback`` (every write there is logged with the token's name: an audit line); ``/metrics``
needs ``metrics`` unless ``http_metrics_open``. Any other path needs a valid token before it is
told that it does not exist, so the server does not map itself out to strangers.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.http import TlsFiles, create_app
from service.http_auth import (
    Decision,
    FailureLimiter,
    TokenFileError,
    TokenTable,
    authorize,
    check_exposure,
    is_loopback,
    parse_tokens,
)
from service.reloader import Reloader

if TYPE_CHECKING:
    from service.worker import Worker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
AUDITED_SCOPES = frozenset({"feedback"})  # scopes whose requests change what the worker decides
ANY_TOKEN = "any"  # pseudo-scope of an unknown path: any valid token may learn it is a 404
FAILURE_REASONS = ("missing_token", "bad_scheme", "oversized", "invalid_token", "missing_scope", "rate_limited")

log = structlog.get_logger("moldwatch.http")


def required_scope(method: str, path: str, metrics_open: bool) -> str | None:
    """The scope a request needs; None for an open endpoint."""
    if path in OPEN_PATHS:
        return None
    if path == "/metrics":
        return None if metrics_open else "metrics"
    if path == "/score":
        return "score"
    if path.startswith("/recipes/"):
        return "recipes"
    if path == "/feedback" or path.startswith("/feedback/"):
        return "feedback"
    return ANY_TOKEN


class TokenStore:
    """The token table served now: the environment's lines (fixed) plus the watched file's."""

    def __init__(self, env_lines: str | None, path: Path | None, poll_s: float,
                 on_changed: Callable[[TokenTable], None] | None = None) -> None:
        self._env = parse_tokens(env_lines, "MOLDWATCH_HTTP_TOKENS") if env_lines else TokenTable()
        self._on_changed = on_changed
        self.file: Reloader[TokenTable] | None = None
        if path is not None:
            self.file = Reloader("tokens file", path, self._read, poll_s, on_loaded=self._loaded,
                                 on_failed=lambda exc: self._changed())
        self.table = self._env

    async def start(self) -> None:
        """Read the file once; a missing or invalid file at start is an error (raised), not an open server."""
        if self.file is not None:
            if not self.file.path.is_file():
                raise TokenFileError(f"{self.file.path}: tokens file not found (--http-tokens-file)")
            await self.file.load(force=True, raise_errors=True)
        self._changed()

    async def _read(self, path: Path, force: bool) -> TokenTable:
        try:
            text = path.read_text(encoding="utf-8")  # noqa: ASYNC240 - a tokens file of a few lines: cheaper than a thread hop
        except UnicodeDecodeError as exc:
            raise TokenFileError(f"{path}: not UTF-8 text (byte {exc.start}); expected token lines") from None
        table = parse_tokens(text, str(path))
        clash = set(table.names()) & set(self._env.names())
        if clash:
            raise TokenFileError(f"{path}: token name {sorted(clash)[0]!r} is also in MOLDWATCH_HTTP_TOKENS")
        return table

    def _loaded(self, table: TokenTable) -> None:
        self.table = TokenTable({**self._env.by_digest, **table.by_digest})
        log.info("http tokens loaded", tokens=len(self.table), names=self.table.names())
        self._changed()

    def _changed(self) -> None:
        if self._on_changed is not None:
            self._on_changed(self.table)

    def rejected(self) -> str | None:
        """Why the newest tokens file was refused (the previous tokens still hold), or None."""
        return self.file.rejected() if self.file is not None else None


class HttpGuard:
    """ASGI middleware: decide every request before the app sees it."""

    def __init__(self, app: ASGIApp, tokens: TokenStore, *, metrics_open: bool, limiter: FailureLimiter,
                 registry: CollectorRegistry) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics_open = metrics_open
        self.limiter = limiter
        self.failures = Counter("moldwatch_http_auth_failures", "HTTP requests refused for their credentials, "
                                "by reason (rate_limited: the client used up its failure budget).", ["reason"],
                                registry=registry)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.token_count = Gauge("moldwatch_http_tokens", "Bearer tokens accepted by the HTTP server now.",
                                 registry=registry)
        self.tokens_rejected = Gauge("moldwatch_http_tokens_rejected", "1 while the newest tokens file is refused "
                                     "(the previous tokens still hold; /readyz names why).", registry=registry)
        self.token_count.set(len(tokens.table))

    def refresh_gauges(self) -> None:
        self.token_count.set(len(self.tokens.table))
        self.tokens_rejected.set(1 if self.tokens.rejected() else 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope.get("method", "GET"), scope.get("path", ""), self.metrics_open)
        if needed is None:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.limiter.retry_after(client)
        if wait > 0:
            self.failures.labels("rate_limited").inc()
            await _refuse(send, 429, "rate_limited", "too many failed attempts from this address; retry later",
                          {"retry-after": str(max(1, int(wait + 0.999)))})
            return
        decision = self._decide(scope, needed)
        if not decision.allowed:
            self.failures.labels(decision.reason).inc()
            if self.limiter.failed(client):
                log.warning("http client refused too often; answering 429 until its budget refills",
                            client=client, reason=decision.reason, path=scope.get("path", "")[:200])
            await _refuse(send, decision.status, decision.reason, decision.message,
                          {"www-authenticate": 'Bearer realm="moldwatch"'} if decision.status == 401 else {})
            return
        if decision.token is not None:
            scope.setdefault("state", {})["token"] = decision.token.name  # the endpoint may record who it was
        if needed in AUDITED_SCOPES and decision.token is not None:
            log.info("audit", token=decision.token.name, method=scope.get("method"), path=scope.get("path", "")[:200],
                     client=client)
        await self.app(scope, receive, send)

    def _decide(self, scope: Scope, needed: str) -> Decision:
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        if needed == ANY_TOKEN:
            decision = authorize(self.tokens.table, header, "score")
            if decision.status == 403:  # a valid token of any scope may learn that the path does not exist
                return Decision(0, "ok", token=None)
            return decision
        return authorize(self.tokens.table, header, needed)


async def guarded_app(worker: Worker) -> tuple[ASGIApp, TokenStore | None, TlsFiles | None]:
    """The worker's HTTP app behind its gate, as the settings ask; the token store (None: no tokens
    configured, scoped endpoints open) and the TLS files (None: plain HTTP).

    Raises :class:`TokenFileError` for an unreadable token table and :class:`ExposureError` for
    open scoped endpoints on an address other machines can reach without ``http_allow_open``.
    """
    settings = worker.settings
    env_tokens = settings.http_tokens.get_secret_value() if settings.http_tokens else None
    configured = bool(env_tokens and env_tokens.strip()) or settings.http_tokens_file is not None
    tls = None
    if settings.http_tls_cert_file is not None and settings.http_tls_key_file is not None:
        password = settings.http_tls_key_password.get_secret_value() if settings.http_tls_key_password else None
        tls = TlsFiles(settings.http_tls_cert_file, settings.http_tls_key_file, password, settings.http_tls_client_ca_file)
    if not configured:
        check_exposure(settings.http_host, TokenTable(), settings.http_allow_open)
        if not is_loopback(settings.http_host):
            log.warning("http scoped endpoints are open to the network (http_allow_open): anyone who reaches "  # noqa: G004 - structlog renders the event once: no deferred %-formatting to keep
                        f"{settings.http_host}:{settings.http_port} may score records and read recipes and metrics")
        return create_app(worker), None, tls
    guard: HttpGuard | None = None

    def changed(_: TokenTable) -> None:
        if guard is not None:
            guard.refresh_gauges()

    tokens = TokenStore(env_tokens, settings.http_tokens_file, settings.store_poll_s, on_changed=changed)
    await tokens.start()
    if not len(tokens.table):
        log.warning("http token table is empty: every scoped endpoint answers 401 until tokens are added",
                    file=str(settings.http_tokens_file))

    def warnings() -> dict[str, str]:
        rejected = tokens.rejected()
        return {"http_tokens": f"newer tokens file rejected ({rejected}); the previous tokens still hold"} if rejected else {}

    app = create_app(worker, warnings)
    limiter = FailureLimiter(settings.http_auth_burst, settings.http_auth_window_s)
    guard = HttpGuard(app, tokens, metrics_open=settings.http_metrics_open, limiter=limiter,
                      registry=worker.metrics.registry)
    guard.refresh_gauges()
    return guard, tokens, tls


async def _refuse(send: Send, status: int, reason: str, message: str, headers: dict[str, str]) -> None:
    body = json.dumps({"reason": reason, "error": message}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["HttpGuard", "TokenStore", "guarded_app", "required_scope", "OPEN_PATHS", "FAILURE_REASONS"]
