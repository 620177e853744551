"""Shared fixtures. Real-server fixtures (Kafka, MongoDB, PostgreSQL, Prometheus) live in
``tests/fixtures/servers.py`` and start lazily, only for tests that ask for them."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytest_plugins = ["tests.fixtures.servers", "tests.plants"]
