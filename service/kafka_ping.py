"""Readiness ping shared by the Kafka sink and the Kafka source: one metadata round trip."""
from __future__ import annotations

import asyncio
from typing import Any

from service.redact import one_line


async def metadata_ping(client: Any, timeout_s: float, what: str, endpoint: str = "") -> str | None:
    """``None`` when ``client`` (an aiokafka client) gets a metadata answer in time, else why not:
    which endpoint (``host:port``) and the cause (connection refused, timed out, ...)."""
    where = f"{what} {endpoint}" if endpoint else what
    try:
        await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
    except asyncio.TimeoutError:
        return f"{where}: no metadata answer within {timeout_s} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
        return f"{where}: {one_line(exc)}"
    return None
