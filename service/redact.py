"""Secrets out of every text the worker emits: logs, error messages, probe answers, metrics.

Two tools, because passwords reach text two ways:

- :func:`redact_uri` masks the credentials of a connection URI *by its shape*, without trusting a
  URI parser: a password may hold an unescaped ``#``, ``/``, ``@``, ``:`` or ``?`` that makes
  ``urlsplit`` (or the driver) cut the URI somewhere else and print the rest. Everything between
  ``://`` and the *last* ``@`` is userinfo; options that carry secrets (``password=``,
  ``authMechanismProperties=``, key passwords, tokens) are masked too.
- :class:`Scrubber` replaces every known secret value (each password the settings hold, in plain
  and percent-encoded form, and those found inside the MongoDB URI) wherever it appears, and masks
  any URI in the text: the last line of defence for driver error messages and tracebacks.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "**********"
# URI options whose values are credentials (compared lower-cased; plus any name holding these words).
SECRET_OPTIONS = frozenset({"password", "authmechanismproperties", "tlscertificatekeyfilepassword",
                            "sslclientcertificatekeypassword", "sslpemkeypassword"})
_SECRET_WORDS = ("password", "secret", "token", "passwd", "credential")
_MIN_SECRET = 3  # shorter "secrets" would mask ordinary words; such passwords are not worth the name
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")


def _secret_option(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_OPTIONS or any(word in lowered for word in _SECRET_WORDS)


def _mask_options(query: str) -> str:
    parts = []
    for pair in re.split(r"([&;])", query):
        if pair in ("&", ";") or "=" not in pair:
            parts.append(pair)
            continue
        name, _, _value = pair.partition("=")
        parts.append(f"{name}={MASK}" if _secret_option(name) else pair)
    return "".join(parts)


def redact_uri(uri: str) -> str:
    """``mongodb://user:p#w/d@host/db?password=x`` -> ``mongodb://***@host/db?password=**********``."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    at = rest.rfind("@")
    if at >= 0:
        rest = "***@" + rest[at + 1:]
    head, qmark, query = rest.partition("?")
    return f"{scheme}://{head}{qmark}{_mask_options(query)}" if qmark else f"{scheme}://{head}"


def uri_secrets(uri: str) -> list[str]:
    """Secret values held in a URI: its userinfo (as written and decoded) and secret options."""
    found: list[str] = []
    _, sep, rest = uri.partition("://")
    if not sep:
        return found
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        _user, colon, password = userinfo.partition(":")
        if colon:
            found += [password, unquote(password), unquote_plus(password), userinfo]
        else:
            found.append(userinfo)
    _, qmark, query = rest.partition("?")
    for pair in re.split(r"[&;]", query) if qmark else ():
        name, eq, value = pair.partition("=")
        if eq and _secret_option(name):
            found += [value, unquote(value), unquote_plus(value)]
            # authMechanismProperties=AWS_SESSION_TOKEN:abc,SERVICE_NAME:x -> each value too
            for prop in unquote(value).split(","):
                found.append(prop.partition(":")[2])
    return [s for s in found if s]


def secret_forms(secret: str) -> list[str]:
    """A secret as it may appear in text: plain, and percent-encoded as drivers and URIs write it."""
    return [s for s in {secret, quote(secret, safe=""), quote_plus(secret, safe=""), repr(secret)[1:-1]} if s]


class Scrubber:
    """Replaces registered secrets and masks URI credentials in any text. Thread-safe."""

    def __init__(self) -> None:
        self._secrets: list[str] = []
        self._lock = threading.Lock()

    def register(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            known = set(self._secrets)
            for secret in secrets:
                if not secret or len(secret) < _MIN_SECRET:
                    continue
                for form in secret_forms(secret):
                    if form not in known and len(form) >= _MIN_SECRET:
                        known.add(form)
            # Longest first: a secret that contains another is masked whole.
            self._secrets = sorted(known, key=len, reverse=True)

    def clear(self) -> None:
        with self._lock:
            self._secrets = []

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            return text
        if "://" in text:
            text = _URI.sub(lambda m: redact_uri(m.group(0)), text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def value(self, value: Any) -> Any:
        """Scrub a log value: strings, and strings inside lists, tuples and dicts."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        if isinstance(value, BaseException):
            return self(f"{type(value).__name__}: {value}")
        return value


SCRUB = Scrubber()
"""The process's scrubber: the worker registers its secrets at start; logs, probes and errors use it."""


def scrub(text: str) -> str:
    return SCRUB(text)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, secrets scrubbed: how errors reach logs and probes."""
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return scrub(f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__)


__all__ = ["MASK", "Scrubber", "SCRUB", "scrub", "one_line", "redact_uri", "uri_secrets", "secret_forms"]
