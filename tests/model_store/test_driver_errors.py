"""Driver errors as one actionable line (model_store/driver_errors.py) and the recipe publisher's
fail-fast check against a port nobody listens on (a real socket, no server needed)."""
from __future__ import annotations

import pytest

from model_store.driver_errors import mongo_cause
from model_store.recipe.mongo import MongoPublishError, check_reachable
from service.devservers import free_port

TOPOLOGY = ("127.0.0.1:1: [Errno 111] Connection refused (configured timeouts: socketTimeoutMS: 10000.0ms, "
            "connectTimeoutMS: 10000.0ms), Timeout: 10.0s, Topology Description: <TopologyDescription id: 6b13, "
            "topology_type: Unknown, servers: [<ServerDescription ('127.0.0.1', 1) server_type: Unknown>]>")


@pytest.mark.parametrize(("text", "expected"), [
    (TOPOLOGY, "connection refused: 127.0.0.1:1: [Errno 111] Connection refused"),
    ("h.invalid:27017: [Errno -2] Name or service not known, Timeout: 5.0s, Topology Description: <...>",
     "host name does not resolve: h.invalid:27017: [Errno -2] Name or service not known"),
    ("Authentication failed., full error: {'ok': 0.0}", "authentication failed: Authentication failed., full error: {'ok': 0.0}"),
    ("something new", "something new"),
    # TLS: PyMongo's error carries the ssl module's text (seen against the TLS test server)
    ("127.0.0.1:5: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006) "
     "(configured timeouts: socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms), Timeout: 2.0s, Topology Description: <...>",
     "TLS certificate verify failed: certificate has expired (renew the MongoDB server's certificate): 127.0.0.1:5: "
     "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)"),
    ("h:5: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid "
     "for '10.0.0.1'. (_ssl.c:1006)",
     "TLS certificate verify failed: IP address mismatch, certificate is not valid for '10.0.0.1'. (the certificate "
     "does not name this host: connect by a name it holds): h:5: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
     "failed: IP address mismatch, certificate is not valid for '10.0.0.1'. (_ssl.c:1006)"),
    ("h:5: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)",
     "TLS handshake refused by the server: it wants a client certificate (set mongo_tls_certificate_key_file): "
     "h:5: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)"),
    ("h:5: [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
     "TLS handshake failed: the server does not speak TLS on this port (unset mongo_tls, or use the server's TLS "
     "port): h:5: [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
])
def test_mongo_cause_puts_the_cause_first_and_drops_the_topology(text: str, expected: str) -> None:
    assert mongo_cause(text) == expected


def test_publishing_to_a_dead_server_fails_in_one_line_without_the_password() -> None:
    uri = f"mongodb://moldwatch:s%40cret@127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=500"
    with pytest.raises(MongoPublishError) as caught:
        check_reachable(uri)
    message = str(caught.value)
    assert "\n" not in message and "s%40cret" not in message and "Topology" not in message
    assert message.startswith("mongodb://moldwatch:***@127.0.0.1:") and ": connection refused: " in message
