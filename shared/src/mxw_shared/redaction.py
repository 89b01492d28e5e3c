"""What counts as a secret in text the system writes out (log lines, span attributes), and
how it is blanked: values under secret-looking names, bearer credentials, JWTs, and
`name=value` credentials (a URL's `?access_token=…`) anywhere in a string."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"
_SECRET_WORDS = ("authorization", "token", "password", "secret", "api_key", "cookie")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# A query parameter (or key=value) whose name has a secret word: its value up to the next
# separator.
_NAMED_CREDENTIAL = re.compile(
    r"(?i)([\w.%-]*(?:" + "|".join(_SECRET_WORDS) + r")[\w.%-]*=)[^&\s\"'#;,]+"
)


def is_secret_name(name: str) -> bool:
    """A log key or parameter whose value is a credential by its name (`access_token`,
    `token`, `api_key`, `password`, ...)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def scrub_secrets(value: Any) -> Any:
    """Bearer credentials, JWTs and secret-named `name=value` pairs inside a string
    blanked; other values as they are."""
    if isinstance(value, str):
        value = _NAMED_CREDENTIAL.sub(rf"\1{REDACTED}", value)
        return _JWT.sub(REDACTED, _BEARER.sub(rf"\1 {REDACTED}", value))
    return value
