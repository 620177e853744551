"""A throwaway certificate authority for the secured test servers, made fresh in each test run.

Nothing here is ever committed or reused: every KafkaServer(security=...) and MongoServer(tls=True)
gets its own CA, a server certificate for its loopback address, an *expired* one (for the
"certificate has expired" error), a second, unrelated CA (for "the client trusts another CA") and a
client certificate with a password-protected key (mutual TLS). Kafka 3.9 reads PEM key stores
directly (``ssl.keystore.type=PEM``) and netty, under the MongoDB test server, reads the same PEM
files, so no keytool, JKS or PKCS#12 is involved.

Needs ``trustme`` (the ``test`` extra): imported lazily, so the serving install never needs it.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


@dataclass(frozen=True)
class TestPki:
    """Files of one test PKI (all PEM)."""

    ca_file: Path  # the CA that signed server_pem and expired_pem: what a client must trust
    other_ca_file: Path  # an unrelated CA: a client trusting only this one must refuse the broker
    server_pem: Path  # private key (PKCS#8) + certificate chain, valid now
    expired_pem: Path  # same shape, expired yesterday
    client_pem: Path  # a client's certificate (signed by ca_file) and its key, encrypted with client_key_password
    client_key_password: str  # fresh per run


def make_pki(directory: Path, host: str) -> TestPki:
    """Write a fresh CA, a server certificate for ``host`` and an expired one into ``directory``."""
    try:
        import trustme
    except ImportError as exc:  # the secured servers are test tools; the serving install lacks trustme
        raise RuntimeError("the secured test servers need trustme: pip install 'moldwatch[test]'") from exc
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca, other = trustme.CA(organization_name="moldwatch test CA"), trustme.CA(organization_name="some other CA")
    good = ca.issue_cert(host, not_before=now - timedelta(hours=1), not_after=now + timedelta(days=2))
    expired = ca.issue_cert(host, not_before=now - timedelta(days=3), not_after=now - timedelta(days=1))
    # trustme's leaves carry both serverAuth and clientAuth: this one is a client by its name only.
    client = ca.issue_cert("moldwatch-worker", common_name="moldwatch-worker",
                           not_before=now - timedelta(hours=1), not_after=now + timedelta(days=2))
    pki = TestPki(directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem", directory / "expired.pem",
                  directory / "client.pem", secrets.token_urlsafe(12))
    ca.cert_pem.write_to_path(str(pki.ca_file))
    other.cert_pem.write_to_path(str(pki.other_ca_file))
    for leaf, path, password in ((good, pki.server_pem, None), (expired, pki.expired_pem, None),
                                 (client, pki.client_pem, pki.client_key_password)):
        path.write_bytes(_pkcs8(leaf.private_key_pem.bytes(), password)
                         + b"".join(p.bytes() for p in leaf.cert_chain_pems))
        path.chmod(0o600)
    return pki


def _pkcs8(key_pem: bytes, password: str | None = None) -> bytes:
    """Kafka's PEM key store and netty read PKCS#8 keys only; trustme writes the traditional OpenSSL form."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
