"""Look for secrets in captured output: each value and the forms it would take if it leaked encoded.

A secret that reaches a log line, an HTTP answer, an event or a dead letter may appear as itself, URL-encoded
(it came from a URL or a query), base64-encoded (an Authorization: Basic header, a serialised byte field),
or hex-encoded (a repr of bytes); `leaks` reports every one found.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus


def encodings(secret: str) -> dict[str, str]:
    """The forms of `secret` to look for, by name."""
    raw = secret.encode()
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    forms = {
        "plain": secret,
        "url-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "base64": standard,
        "base64 unpadded": standard.rstrip("="),
        "base64url": urlsafe.rstrip("="),
        "hex": raw.hex(),
    }
    return {name: form for name, form in forms.items() if form}


@dataclass(frozen=True)
class Leak:
    secret: str  # the secret's name, never its value
    encoding: str
    place: str
    context: str  # the text around the hit, the secret itself masked

    def __str__(self) -> str:
        return f"{self.secret} ({self.encoding}) in {self.place}: ...{self.context}..."


def leaks(secrets: Mapping[str, str], places: Mapping[str, str]) -> list[Leak]:
    """Every secret (name → value), in any of its encodings, found in any captured text (place → text)."""
    found = []
    for name, value in secrets.items():
        for encoding, form in encodings(value).items():
            for place, text in places.items():
                start = text.find(form)
                if start >= 0:
                    context = text[max(0, start - 60) : start + len(form) + 60].replace(form, f"<{name}>")
                    found.append(Leak(name, encoding, place, context))
    return found


def joined(parts: Iterable[object]) -> str:
    return "\n".join(str(part) for part in parts)
