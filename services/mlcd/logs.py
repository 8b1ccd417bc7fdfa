"""structlog JSON logs: event id, type and model bound on every line, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"token|secret|password|authorization|api[_-]?key|signature", re.IGNORECASE)
REDACTED = "***"
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")


def without_url_credentials(text: str) -> str:
    """`scheme://user:password@host` → `scheme://***@host`, for any URL inside `text`."""
    return _URL_CREDENTIALS.sub(f"{REDACTED}@", text)


class SecretRedactor:
    """Masks values under secret-looking keys and every configured secret wherever it appears."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._masked(key, value)
        return event_dict

    def _masked(self, key: object, value: Any) -> Any:
        if isinstance(key, str) and _SECRET_KEYS.search(key) and value is not None:
            return REDACTED
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, dict):
            return {k: self._masked(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self._masked(None, v) for v in value]
        return value

    def _scrub(self, text: str) -> str:
        text = without_url_credentials(text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Set up JSON logging for the process; call once at the entry point.

    Lines from libraries that use the standard `logging` module (uvicorn, aiokafka) go through the same
    redaction and come out as JSON too.
    """
    stream = stream or sys.stderr
    redactor = SecretRedactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before the redactor: a traceback may quote a secret
        redactor,
    ]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "alembic", "urllib3", "mlflow", "great_expectations", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


@contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Bind context (event_id, event_type, model) to every log line inside the block."""
    tokens = structlog.contextvars.bind_contextvars(**context)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def get(name: str) -> Any:
    return structlog.get_logger(name)
