"""structlog set-up: JSON lines for log shippers, key-value text for people at a terminal.

Libraries that log through the standard library (uvicorn, aiokafka, pymongo) go through the same
processors, so one worker writes one format. Tests assert on events with
``structlog.testing.capture_logs()``.
"""
from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, Literal, TextIO

import structlog
from pydantic import SecretStr

from service.redact import SCRUB

EventDict = MutableMapping[str, Any]
"""What a processor receives and returns: the event's key-value pairs."""

_MASK = "**********"
# Keys whose values are never logged whatever their type: a password passed as a plain str by
# mistake must not reach a log shipper either.
_SECRET_KEYS = frozenset({"password", "sasl_password", "mongo_password", "kafka_sasl_password", "secret", "token_secret"})


def mask_secrets(_: Any, __: str, event: EventDict) -> EventDict:
    """Mask ``SecretStr`` values and values of keys that name a secret (``None``, not set, stays
    ``None``); scrub every other string of registered secrets and URI credentials
    (:data:`service.redact.SCRUB`)."""
    for key, value in event.items():
        if value is None:  # an unset secret is shown as unset: a mask would claim one is configured
            continue
        if isinstance(value, SecretStr) or key.lower() in _SECRET_KEYS:
            event[key] = _MASK
        elif isinstance(value, (str, list, tuple, dict)):
            event[key] = SCRUB.value(value)
    return event


def scrub_rendered(_: Any, __: str, line: Any) -> Any:
    """After rendering: scrub the final line, tracebacks included (they are rendered last)."""
    return SCRUB(line) if isinstance(line, str) else line


def exception_text(exc_info: tuple[type[BaseException], BaseException, TracebackType | None]) -> str:
    """The traceback as text, and never an exception of its own.

    CPython 3.11 parses each frame's source line to draw carets, and its AST converter keeps one
    recursion counter for all threads: two threads formatting a traceback at once (a driver's
    monitor thread and the event loop) can raise ``SystemError: AST constructor recursion depth
    mismatch``. A log line must not take the worker down, so the frames are then written without
    carets."""
    try:
        return "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    except Exception:  # noqa: BLE001 - whatever the formatter hit, the frames below still describe the error
        frames = traceback.extract_tb(exc_info[2])
        lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}\n' for f in frames]
        return "".join(["Traceback (most recent call last):\n", *lines,
                        *traceback.format_exception_only(exc_info[0], exc_info[1])]).rstrip("\n")


def _plain_traceback(sio: TextIO, exc_info: tuple[type[BaseException], BaseException, TracebackType | None]) -> None:
    sio.write("\n" + exception_text(exc_info))


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stdout) in one format.

    ``auto`` picks JSON unless the stream is a terminal: containers and systemd capture stdout,
    where one JSON object per line is what Loki / Elasticsearch parse without rules.
    """
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=_isatty(stream), exception_formatter=_plain_traceback)
    )
    shared = _shared_processors()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(exception_text) if as_json else _identity,
            renderer,
            scrub_rendered,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # A handler that cannot write (stdout closed) must not raise into the code that logged: the
    # worker keeps scoring and /metrics still shows it. Python's logging docs advise this in production.
    logging.raiseExceptions = False
    # Chatty libraries: their INFO lines are connection churn, not events an operator acts on.
    for name in ("aiokafka", "pymongo", "uvicorn.access", "kafka"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    client = logging.getLogger("aiokafka.client")
    if not any(isinstance(f, RetriedConnectionFilter) for f in client.filters):
        client.addFilter(RetriedConnectionFilter())


class RetriedConnectionFilter(logging.Filter):
    """Drops aiokafka's "Unable connect to ..." ERROR lines: the worker retries that connection and
    says so itself, once per retry, at warning (``kafka unreachable, retrying``, naming the address
    and the cause, and /readyz says it too). Left in, every retry logs twice, the library's line at
    a severity that pages someone for a broker that is merely starting."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and str(record.msg).startswith("Unable connect to"))


def _identity(_: Any, __: str, event: EventDict) -> EventDict:
    return event


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def get_logger(name: str = "moldwatch") -> Any:
    return structlog.get_logger(name)


__all__ = ["configure_logging", "exception_text", "get_logger", "mask_secrets", "EventDict"]
