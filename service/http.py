"""HTTP adapter of the worker: probes, metrics and synchronous scoring, served by uvicorn inside
the worker's own event loop (no second process, no thread: the probes see the real loop). The run
command starts it beside the worker (``service.run_command.serve``); the worker knows nothing of it.

- ``GET /healthz``  liveness: answering at all proves the loop is responsive; 503 if a worker
  task died (a restart is the fix).
- ``GET /readyz``   readiness: 200 only when the source (MongoDB or Kafka), the Kafka producer
  and the model store are all usable; 503 with the reasons otherwise.
- ``GET /metrics``  Prometheus text exposition of the worker's own registry.
- ``POST /score``   score one JSON record now and return its verdict; 422 with the reason when
  the record is invalid (the original team's FastAPI endpoint). Every bad request is a 4xx with a
  reason: 413 for a body over ``http_max_body_bytes`` (read no further than that), 422 for a body
  that is not JSON, not an object, or nests deeper than ``http_max_json_depth``.
Access (``service.http_guard``): the probes are open; every other endpoint needs a bearer token
with its scope when tokens are configured (``score``, ``recipes``, ``metrics``), else 401/403/429.

- ``GET /recipes/{facility}/{item}``  the recommended setting and operating window of a
  facility/item (from the worker's recipes file); 404 with the reason when there is none, or
  when the worker has no recipes file.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_store.errors import StoreError
from service.decode import NOT_A_DOCUMENT, DeadLetter
from service.feedback_intake import FeedbackUnavailable
from service.redact import SCRUB
from service.sink import dumps

if TYPE_CHECKING:
    from service.worker import Worker


def create_app(worker: Worker, extra_warnings: Callable[[], dict[str, str]] = dict) -> FastAPI:
    """The endpoints; ``extra_warnings`` adds the HTTP layer's own (a refused tokens file) to /readyz."""
    # No /docs, /redoc or /openapi.json: the API is documented in README, and an unauthenticated
    # map of the endpoints helps nobody but a stranger.
    app = FastAPI(title="moldwatch worker", summary="Per-shot anomaly verdicts for injection molding.",
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok, body = worker.liveness()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok, reasons = await worker.readiness()  # reasons are scrubbed of secrets by the worker
        body: dict[str, Any] = {"ready": ok, "reasons": reasons}
        warnings = {**worker.readiness_warnings(), **extra_warnings()}
        if warnings:
            body["warnings"] = warnings  # serving, but an operator should look (e.g. a rejected new store)
        if worker.model_version:
            body["model_version"] = worker.model_version
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        # Scrubbed like every other output: no label or info value may carry a secret.
        return Response(SCRUB(generate_latest(worker.metrics.registry).decode()), media_type=CONTENT_TYPE_LATEST)

    async def json_object(request: Request) -> Any:
        """The body as a parsed JSON value, or the JSONResponse refusing it (bounded size and depth)."""
        limit = worker.settings.http_max_body_bytes
        body = await read_bounded(request, limit)
        if body is None:
            return JSONResponse({"reason": "body_too_large", "error": f"request body exceeds {limit} bytes"}, status_code=413)
        try:
            document = json.loads(body)
        except RecursionError:
            return JSONResponse({"reason": "too_deep", "error": "JSON nests too deeply"}, status_code=422)
        except ValueError as exc:  # includes UnicodeDecodeError
            return JSONResponse({"reason": NOT_A_DOCUMENT, "error": f"body is not JSON: {str(exc)[:200]}"}, status_code=422)
        depth = json_depth(document)
        if depth > worker.settings.http_max_json_depth:
            return JSONResponse({"reason": "too_deep", "error": f"JSON nests {depth} levels deep; at most "
                                 f"{worker.settings.http_max_json_depth} are accepted"}, status_code=422)
        return document

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        if worker.feedback is None:
            return JSONResponse({"reason": "feedback_not_configured", "error": "this worker takes no feedback "
                                 "(set kafka_feedback_topic / MOLDWATCH_KAFKA_FEEDBACK_TOPIC)"}, status_code=404)
        document = await json_object(request)
        if isinstance(document, Response):
            return document
        token = request.scope.get("state", {}).get("token")
        try:
            status, body = await worker.feedback.submit(document, "http", token)
        except FeedbackUnavailable as exc:
            return JSONResponse({"reason": "not_ready", "error": f"{exc}; retry with the same idempotency_key"},
                                status_code=503)
        return Response(dumps(body), status_code=status, media_type="application/json")

    @app.post("/score")
    async def score(request: Request) -> Response:
        document = await json_object(request)
        if isinstance(document, Response):
            return document
        if not isinstance(document, dict):
            return JSONResponse({"reason": NOT_A_DOCUMENT, "error": f"expected a JSON object, got {type(document).__name__}"},
                                status_code=422)
        try:
            outcome = await worker.score_document(document)
        except LookupError as exc:  # no store loaded yet
            return JSONResponse({"reason": "not_ready", "error": str(exc)}, status_code=503)
        except StoreError as exc:  # the store broke under the engine: the worker reloads it
            return JSONResponse({"reason": "not_ready", "error": f"model store unusable: {str(exc)[:200]}"}, status_code=503)
        if isinstance(outcome, DeadLetter):
            return JSONResponse({"reason": outcome.reason, "error": outcome.error}, status_code=422)
        return Response(dumps(outcome), media_type="application/json")

    @app.get("/recipes/{facility}/{item:path}")  # :path: an item name may hold a slash
    async def recipe(facility: str, item: str) -> Response:
        found, reason, error = worker.recipe(facility, item)
        if found is None:
            return JSONResponse({"reason": reason, "error": error, "facility": facility, "item": item}, status_code=404)
        return Response(dumps(found), media_type="application/json")

    return app


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` bytes (never buffers more than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``{}`` is 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
            deepest = max(deepest, depth + 1)
    return deepest


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the run command owns SIGTERM/SIGINT (the worker drains before exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """HTTPS: the server's certificate chain and key; with ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    key_password: str | None = None
    client_ca: Path | None = None


async def start_http(app: Any, host: str, port: int,
                     tls: TlsFiles | None = None) -> tuple[EmbeddedServer, asyncio.Task[None], int]:
    """Serve the ASGI ``app`` on the running loop; return the server, its task and the bound port.

    The socket is bound here, not by uvicorn: uvicorn answers a bind failure with ``sys.exit``,
    which would end the whole worker instead of giving a one-line error. TLS files are loaded
    before binding, so a bad certificate or key is one line naming the file.
    """
    tls_options: dict[str, Any] = {}
    if tls is not None:
        tls_options = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key), "ssl_keyfile_password": tls.key_password}
        if tls.client_ca is not None:
            tls_options |= {"ssl_ca_certs": str(tls.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        check_tls_files(tls)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                            **tls_options)
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="moldwatch-http")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("HTTP server stopped while starting")
        await asyncio.sleep(0.01)
    return server, task, bound


def check_tls_files(tls: TlsFiles) -> None:
    """Load the files as the server will; raise ``OSError`` naming the file and the cause."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key), tls.key_password)
    except FileNotFoundError as exc:
        raise OSError(exc.errno, f"HTTPS: {exc.filename or tls.cert}: file not found") from None
    except ssl.SSLError as exc:
        raise OSError(0, f"HTTPS: {tls.cert} / {tls.key}: not a usable certificate and key ({exc.reason or exc}); "
                      "expected PEM files, the key matching the certificate (and http_tls_key_password if it is "
                      "encrypted)") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(str(tls.client_ca))
        except (FileNotFoundError, ssl.SSLError) as exc:
            raise OSError(0, f"HTTPS: {tls.client_ca}: not a usable CA file for client certificates ({exc})") from None


async def stop_http(server: EmbeddedServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 5)


__all__ = ["create_app", "start_http", "stop_http", "EmbeddedServer", "TlsFiles", "check_tls_files"]
