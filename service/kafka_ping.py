"""Readiness ping shared by the Kafka sink and the Kafka source: one metadata round trip, and when
it fails, a TCP probe of each bootstrap address so the reason names *which* broker and *why*
(connection refused, name not resolved, connect timed out, or connected but no answer: a hung broker)."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from service.redact import one_line


async def metadata_ping(client: Any, timeout_s: float, what: str, endpoint: str = "") -> str | None:
    """``None`` when ``client`` (an aiokafka client) gets a metadata answer in time, else why not."""
    where = f"{what} {endpoint}" if endpoint else what
    try:
        await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
    except asyncio.TimeoutError:
        cause = f"no metadata answer within {timeout_s} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
        cause = one_line(exc)
    else:
        return None
    if endpoint:
        diagnosis = await tcp_diagnosis(endpoint, min(timeout_s, 2.0))
        if diagnosis:
            return f"{what}: {diagnosis} ({cause})"
    return f"{where}: {cause}"


SILENT_BROKER = "accepts connections but does not answer (broker hung or overloaded)"


async def tcp_diagnosis(endpoints: str, timeout_s: float, default_port: int = 9092, accepted: str = SILENT_BROKER) -> str:
    """``host:port: connection refused; host2:port: ...`` for each address (Kafka bootstrap servers
    by default; ``accepted`` is what to say of an address that accepts a connection)."""
    results = await asyncio.gather(*(_probe(e.strip(), timeout_s, default_port, accepted) for e in endpoints.split(",") if e.strip()))
    return "; ".join(results)


async def _probe(endpoint: str, timeout_s: float, default_port: int = 9092, accepted: str = SILENT_BROKER) -> str:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]") or endpoint
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port or default_port)), timeout_s)
    except ConnectionRefusedError:
        return f"{endpoint}: connection refused"
    except socket.gaierror:
        return f"{endpoint}: host name does not resolve"
    except asyncio.TimeoutError:
        return f"{endpoint}: connect timed out after {timeout_s:g} s"
    except (OSError, ValueError) as exc:
        return f"{endpoint}: {one_line(exc)}"
    writer.close()
    return f"{endpoint}: {accepted}"
