"""structlog JSON logs: event id, type and model bound on every line, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
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
        _merge_bound,
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


_BOUND: ContextVar[Mapping[str, Any] | None] = ContextVar("mlcd_log_context", default=None)


class bound:  # used as a function: `with logs.bound(model=...):`
    """Bind context (event_id, event_type, model) to every log line inside the block.

    One context variable holds the whole mapping (the consumer binds four keys per event, so one set and
    one reset instead of a variable per key); lines merge it in, inner bindings win.
    """

    __slots__ = ("_context", "_token")

    def __init__(self, **context: Any) -> None:
        self._context = context

    def __enter__(self) -> None:
        outer = _BOUND.get()
        self._token = _BOUND.set({**outer, **self._context} if outer else self._context)

    def __exit__(self, *_: object) -> None:
        _BOUND.reset(self._token)


def _merge_bound(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    context = _BOUND.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


def enabled(level: int) -> bool:
    """Whether lines at `level` (logging.DEBUG, ...) are written: skip building per-event lines when not."""
    return logging.getLogger().isEnabledFor(level)


def get(name: str) -> Any:
    return structlog.get_logger(name)
