"""Logging never raises into the code that logs: tracebacks that cannot be formatted, streams that closed."""
from __future__ import annotations

import io
import json
import logging
import sys
import traceback

import pytest
import structlog

from service.logs import configure_logging, exception_text


def _raised() -> tuple[type[BaseException], BaseException, object]:
    def inner() -> None:
        raise KeyError("facility F07")

    try:
        inner()
    except KeyError:
        return sys.exc_info()  # type: ignore[return-value]
    raise AssertionError("unreachable")


def _format_fails(*_: object, **__: object) -> list[str]:
    # What CPython 3.11 raises when two threads parse source lines for carets at once.
    raise SystemError("AST constructor recursion depth mismatch (before=51, after=47)")


def test_a_traceback_is_the_standard_one_when_formatting_works():
    exc_info = _raised()
    assert exception_text(exc_info) == "".join(traceback.format_exception(*exc_info)).rstrip("\n")  # type: ignore[arg-type]


def test_a_traceback_that_cannot_be_formatted_still_names_each_frame_and_the_error(monkeypatch):
    exc_info = _raised()
    monkeypatch.setattr(traceback, "format_exception", _format_fails)
    text = exception_text(exc_info)  # type: ignore[arg-type]
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'facility F07'"
    assert ", in _raised" in lines[1] and ", in inner" in lines[2] and __file__ in lines[1]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_an_exception_logged_while_formatting_fails_is_still_one_line_with_its_error(monkeypatch, fmt):
    stream = io.StringIO()
    configure_logging("info", fmt, stream=stream)  # type: ignore[arg-type]
    monkeypatch.setattr(traceback, "format_exception", _format_fails)
    try:
        raise ValueError("bad shot")
    except ValueError as exc:
        structlog.get_logger("t").error("scoring failed", exc_info=exc)
        logging.getLogger("pymongo").exception("monitor failed")
    text = stream.getvalue()
    assert text.count("ValueError: bad shot") == 2 and "SystemError" not in text
    if fmt == "json":
        events = [json.loads(line) for line in text.splitlines()]
        assert [e["event"] for e in events] == ["scoring failed", "monitor failed"]
        assert all(e["exception"].endswith("ValueError: bad shot") for e in events)


def test_a_closed_log_stream_does_not_raise_into_the_caller(capsys):
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    stream.close()  # what CliRunner does to the stdout the root handler holds
    structlog.get_logger("t").info("still scoring")
    logging.getLogger("aiokafka").warning("still connecting")
    assert "Logging error" not in capsys.readouterr().err


def test_the_kafka_librarys_retried_connection_errors_are_left_to_the_workers_own_warning() -> None:
    import io
    import logging

    from service.logs import configure_logging

    stream = io.StringIO()
    configure_logging("info", "json", stream)
    client = logging.getLogger("aiokafka.client")
    client.error('Unable connect to "%s:%s": %s', "localhost", 9092, "[Errno 111] Connect call failed")
    client.error("Unable connect to node with id %s: %s", 1, "refused")
    client.error("Topic moldwatch.verdicts is not authorized")  # anything else still shows
    configure_logging("info", "json", stream)  # configuring twice adds no second filter
    assert len([f for f in client.filters if type(f).__name__ == "RetriedConnectionFilter"]) == 1
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "not authorized" in lines[0]
