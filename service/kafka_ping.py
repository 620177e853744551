"""Readiness ping shared by the Kafka sink and the Kafka source: one metadata round trip, and when
it fails, a TCP probe of each bootstrap address so the reason names *which* broker and *why*
(connection refused, name not resolved, connect timed out, or connected but no answer: a hung broker).

When a client cannot even start (aiokafka says only "Unable to bootstrap"), :func:`connect_failure`
connects to each bootstrap address once more with the worker's TLS and SASL settings and names the
cause: wrong SASL user or password, a certificate the worker does not trust, an expired one."""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aiokafka.errors import AuthenticationFailedError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from service.client_internals import open_connection
from service.redact import one_line

if TYPE_CHECKING:
    from service.config import WorkerSettings


async def metadata_ping(request: Awaitable[Any], timeout_s: float, what: str, endpoint: str = "") -> str | None:
    """``None`` when ``request`` (a client's metadata request to the cluster) is answered in time,
    else why not."""
    where = f"{what} {endpoint}" if endpoint else what
    try:
        await asyncio.wait_for(request, timeout_s)
    except TimeoutError:
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
    except TimeoutError:
        return f"{endpoint}: connect timed out after {timeout_s:g} s"
    except (OSError, ValueError) as exc:
        return f"{endpoint}: {one_line(exc)}"
    writer.close()
    return f"{endpoint}: {accepted}"


# What to do about each certificate verification failure (OpenSSL's verify message -> the fix).
_VERIFY_HINTS = (
    ("expired", "renew the broker's certificate"),
    ("not yet valid", "the broker's certificate starts later: check the clocks"),
    ("local issuer", "the broker's certificate is not signed by a CA the worker trusts: "
                     "set kafka_tls_ca_file to the CA that signed it"),
    ("self-signed", "the broker's certificate is not signed by a CA the worker trusts: "
                    "set kafka_tls_ca_file to the CA that signed it"),
    ("hostname mismatch", "the certificate does not name this address: connect by a name it holds"),
    ("ip address mismatch", "the certificate does not name this address: connect by a name it holds"),
)


async def connect_failure(settings: WorkerSettings, error: BaseException) -> str:
    """Why a Kafka client of the worker could not start, as ``host:port: cause`` (one line, no secret).

    ``error`` is what the client raised; it is named only when no bootstrap address shows a cause
    of its own (aiokafka's own "Unable to bootstrap" hides the SASL or TLS error).
    """
    endpoints = [e.strip() for e in settings.kafka_bootstrap_servers.split(",") if e.strip()]
    timeout_s = min(settings.kafka_request_timeout_ms / 1000, 5.0)
    causes = await asyncio.gather(*(_connect_cause(e, settings, timeout_s) for e in endpoints))
    named = [c for c in causes if c]
    return "; ".join(named) if named else f"{settings.kafka_bootstrap_servers}: {one_line(error)}"


async def _connect_cause(endpoint: str, settings: WorkerSettings, timeout_s: float) -> str | None:
    """Connect to one broker as the worker's clients do (TLS handshake, SASL); None when that works."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]") or endpoint
    try:
        conn = await asyncio.wait_for(
            open_connection(host, int(port or 9092), client_id=settings.kafka_client_id,
                            request_timeout_ms=int(timeout_s * 1000), **settings.kafka_security_kwargs()),
            timeout_s)
    except (SaslAuthenticationFailed, AuthenticationFailedError):
        return (f"{endpoint}: SASL authentication failed for user {settings.kafka_sasl_username!r} "
                f"(wrong user or password; {settings.kafka_sasl_mechanism})")
    except UnsupportedSaslMechanismError:
        return f"{endpoint}: the broker does not enable SASL mechanism {settings.kafka_sasl_mechanism} on this listener"
    except ssl.SSLCertVerificationError as exc:
        message = exc.verify_message or one_line(exc)
        hint = next((h for key, h in _VERIFY_HINTS if key in message.lower()), "")
        return f"{endpoint}: TLS certificate verify failed: {message}" + (f" ({hint})" if hint else "")
    except ssl.SSLError as exc:
        return (f"{endpoint}: TLS handshake failed: {exc.reason or one_line(exc)} "
                f"(is this a TLS listener, and kafka_tls / kafka_security_protocol right?)")
    except Exception:  # noqa: BLE001 - not a TLS or SASL cause: the TCP probe says what it can
        return await _probe(endpoint, timeout_s)
    conn.close()
    return None
