"""Shared fixtures. Real-server fixtures (Kafka, MongoDB, PostgreSQL, Prometheus) live in
``tests/support/servers.py`` and start lazily, only for tests that ask for them; the plant and
store fixtures in ``tests/support/plants.py``. Every helper module the tests share is in
``tests/support/``; the test files mirror the packages' layout."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Helpers' own asserts report their values, as the tests' do (the plugins below are rewritten anyway).
pytest.register_assert_rewrite("tests.support")

pytest_plugins = ["tests.support.servers", "tests.support.plants"]

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
