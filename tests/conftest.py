"""Shared fixtures. Real-server fixtures (Kafka, MongoDB, PostgreSQL, Prometheus) live in
``tests/fixtures/servers.py`` and start lazily, only for tests that ask for them."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytest_plugins = ["tests.fixtures.servers", "tests.plants"]

_QUIETED = ("aiokafka", "pymongo", "uvicorn.access", "kafka")


@pytest.fixture(autouse=True)
def _logging_as_before() -> Iterator[None]:
    """Give every test the logging it started with.

    ``moldwatch run`` invoked in process (CliRunner) points the root logger at the runner's
    stdout, which is closed when ``invoke`` returns: later tests' log lines then fail to write,
    and a worker under test logs into a dead stream."""
    root = logging.getLogger()
    handlers, level, raise_exceptions = list(root.handlers), root.level, logging.raiseExceptions
    levels = {name: logging.getLogger(name).level for name in _QUIETED}
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.raiseExceptions = raise_exceptions
    for name, quieted in levels.items():
        logging.getLogger(name).setLevel(quieted)
    structlog.configure(**config)
