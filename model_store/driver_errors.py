"""A database driver's error as one line a plant engineer can act on: the cause first
(connection refused, name does not resolve, a TLS certificate problem, ...), then the driver's
first line without the topology dump PyMongo appends. Shared by the worker's readiness and the
recipe publisher."""
from __future__ import annotations

import re

MONGO_CAUSES = (("Errno 111", "connection refused"), ("Connection refused", "connection refused"),
                ("Name or service not known", "host name does not resolve"),
                ("nodename nor servname", "host name does not resolve"),
                ("Temporary failure in name resolution", "host name does not resolve"),
                ("timed out", "timed out"), ("Authentication failed", "authentication failed"))

# PyMongo reports TLS failures as the ssl module's text inside its own error (AutoReconnect,
# ServerSelectionTimeoutError): "host:port: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify
# failed: certificate has expired (_ssl.c:1006)". OpenSSL's verify message -> what to do about it.
_VERIFY_FAILED = re.compile(r"certificate verify failed: (.+?)(?: \(_ssl\.c:\d+\)|$)")
_VERIFY_HINTS = (
    ("expired", "renew the MongoDB server's certificate"),
    ("not yet valid", "the server's certificate starts later: check the clocks"),
    ("local issuer", "the server's certificate is not signed by a CA the worker trusts: "
                     "set mongo_tls_ca_file to the CA that signed it"),
    ("self-signed", "the server's certificate is not signed by a CA the worker trusts: "
                    "set mongo_tls_ca_file to the CA that signed it"),
    ("self signed", "the server's certificate is not signed by a CA the worker trusts: "
                    "set mongo_tls_ca_file to the CA that signed it"),
    ("mismatch", "the certificate does not name this host: connect by a name it holds"),
)
# Other TLS failures, by a marker of the ssl module's or PyMongo's text (checked in this order).
_TLS_CAUSES = (
    # The server's alert after the handshake: it wanted a client certificate it trusts (mutual TLS).
    ("ALERT_BAD_CERTIFICATE", "TLS handshake refused by the server: it wants a client certificate signed by a CA it "
                              "trusts (set mongo_tls_certificate_key_file)"),
    ("ALERT_CERTIFICATE_REQUIRED", "TLS handshake refused by the server: it wants a client certificate "
                                   "(set mongo_tls_certificate_key_file)"),
    ("ALERT_UNKNOWN_CA", "TLS handshake refused by the server: it does not trust the CA of the worker's client "
                         "certificate (mongo_tls_certificate_key_file)"),
    # The worker speaks TLS to a server that does not: a real mongod drops the connection at the
    # ClientHello, some servers just wait for more bytes.
    ("WRONG_VERSION_NUMBER", "TLS handshake failed: the server does not speak TLS on this port "
                             "(unset mongo_tls, or use the server's TLS port)"),
    ("EOF occurred in violation of protocol", "TLS handshake failed: the server closed the connection "
                                              "(does it speak TLS on this port? else unset mongo_tls)"),
    ("handshake operation timed out", "TLS handshake timed out: the server accepts connections but does not answer "
                                      "TLS (does it speak TLS on this port? else unset mongo_tls)"),
    # The worker speaks plain MongoDB to a TLS-only server: the server hangs up without a reply.
    ("connection closed", "connection closed by the server without a reply (if the server requires TLS: "
                          "set mongo_tls and mongo_tls_ca_file)"),
)


def mongo_cause(text: str) -> str:
    """``text`` (a PyMongo error message, one line) as ``cause: message`` without the topology dump."""
    text = text.split(" (configured timeouts")[0].split(", Timeout:")[0].split(", Topology Description:")[0]
    cause = tls_cause(text) or next((plain for marker, plain in MONGO_CAUSES if marker in text), None)
    return f"{cause}: {text}" if cause else text


def tls_cause(text: str) -> str | None:
    """What a TLS failure in ``text`` means and what to do about it; None when it is not one."""
    verify = _VERIFY_FAILED.search(text)
    if verify:
        message = verify.group(1).strip()
        hint = next((h for key, h in _VERIFY_HINTS if key in message.lower()), "")
        return f"TLS certificate verify failed: {message}" + (f" ({hint})" if hint else "")
    return next((plain for marker, plain in _TLS_CAUSES if marker in text), None)
