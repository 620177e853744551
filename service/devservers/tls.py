"""A throwaway certificate authority for the secured test broker, made fresh in each test run.

Nothing here is ever committed or reused: every KafkaServer(security=...) gets its own CA, a
server certificate for its loopback address, an *expired* one (for the "certificate has expired"
error) and a second, unrelated CA (for "the client trusts another CA"). Kafka 3.9 reads PEM key
stores directly (``ssl.keystore.type=PEM``), so no keytool or JKS is involved.

Needs ``trustme`` (the ``test`` extra): imported lazily, so the serving install never needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path


@dataclass(frozen=True)
class TestPki:
    """Files of one test PKI (all PEM)."""

    ca_file: Path  # the CA that signed server_pem and expired_pem: what a client must trust
    other_ca_file: Path  # an unrelated CA: a client trusting only this one must refuse the broker
    server_pem: Path  # private key (PKCS#8) + certificate chain, valid now
    expired_pem: Path  # same shape, expired yesterday


def make_pki(directory: Path, host: str) -> TestPki:
    """Write a fresh CA, a server certificate for ``host`` and an expired one into ``directory``."""
    try:
        import trustme
    except ImportError as exc:  # the secured broker is a test tool; the serving install lacks trustme
        raise RuntimeError("the secured test broker needs trustme: pip install 'moldwatch[test]'") from exc
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    ca, other = trustme.CA(organization_name="moldwatch test CA"), trustme.CA(organization_name="some other CA")
    good = ca.issue_cert(host, not_before=now - timedelta(hours=1), not_after=now + timedelta(days=2))
    expired = ca.issue_cert(host, not_before=now - timedelta(days=3), not_after=now - timedelta(days=1))
    pki = TestPki(directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem", directory / "expired.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    other.cert_pem.write_to_path(str(pki.other_ca_file))
    for leaf, path in ((good, pki.server_pem), (expired, pki.expired_pem)):
        path.write_bytes(_pkcs8(leaf.private_key_pem.bytes()) + b"".join(p.bytes() for p in leaf.cert_chain_pems))
        path.chmod(0o600)
    return pki


def _pkcs8(key_pem: bytes) -> bytes:
    """Kafka's PEM key store reads PKCS#8 keys only; trustme writes the traditional OpenSSL form."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
