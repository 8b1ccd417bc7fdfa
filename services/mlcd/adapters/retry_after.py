"""An HTTP `Retry-After` header read as the seconds an outside system asks mlcd to wait (RFC 9110 §10.2.3)."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime


def seconds(header: str | None) -> float | None:
    """Seconds to wait: the header's delay-seconds, or the time until its HTTP-date; None when absent or
    unreadable (the caller's own backoff decides then)."""
    if not header:
        return None
    if header.strip().isdigit():
        return float(header.strip())
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
