"""A database driver's error as one line a plant engineer can act on: the cause first
(connection refused, name does not resolve, ...), then the driver's first line without the
topology dump PyMongo appends. Shared by the worker's readiness and the recipe publisher."""
from __future__ import annotations

MONGO_CAUSES = (("Errno 111", "connection refused"), ("Connection refused", "connection refused"),
                ("Name or service not known", "host name does not resolve"),
                ("nodename nor servname", "host name does not resolve"),
                ("Temporary failure in name resolution", "host name does not resolve"),
                ("timed out", "timed out"), ("Authentication failed", "authentication failed"))


def mongo_cause(text: str) -> str:
    """``text`` (a PyMongo error message, one line) as ``cause: message`` without the topology dump."""
    text = text.split(" (configured timeouts")[0].split(", Timeout:")[0].split(", Topology Description:")[0]
    cause = next((plain for marker, plain in MONGO_CAUSES if marker in text), None)
    return f"{cause}: {text}" if cause else text
