"""The error tree: the runtime tells retryable failures from permanent ones by class alone.

Adapters translate library exceptions at the boundary (`raise AdapterUnavailable(...) from e`).
"""

from __future__ import annotations


class MlcdError(Exception):
    """Base of every error mlcd raises on purpose; the message is meant for a person."""


class ConfigError(MlcdError):
    """Settings or a policy file are wrong; fix the configuration."""


class PermanentError(MlcdError):
    """Retrying cannot help (bad input, a rule says no): the runtime dead-letters at once."""


class TemporaryError(MlcdError):
    """An outside system is down or slow: the runtime retries with backoff, then dead-letters.

    `retry_after_s` is the least wait the outside system asked for (an HTTP 429's `Retry-After`).
    """

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AdapterUnavailable(TemporaryError):
    """An outside system (broker, database, MLflow, KFP, GitLab, Kubernetes) did not answer in time."""


class Conflict(TemporaryError):
    """A concurrent writer won (resourceVersion, row lock): re-read and try again."""


class RecordsRefused(PermanentError):
    """The broker refused some records for good (too large, invalid); the others were acknowledged.

    `refused` maps each refused record's position in the published batch to the broker's reason.
    """

    def __init__(self, refused: dict[int, str]) -> None:
        first = next(iter(refused.values()), "")
        super().__init__(f"the broker refused {len(refused)} record(s) for good: {first}")
        self.refused = refused


class ArtifactUnreadable(PermanentError):
    """The serving platform cannot download a model version's files from where they are stored."""


class NotFound(PermanentError):
    """The thing named does not exist."""


class ObjectChanged(PermanentError):
    """A stored object is no longer the bytes that were pinned: overwritten since, or its version deleted;
    the message says what was pinned and what is there now ("etag X, now etag Y")."""


class Unauthorized(MlcdError):
    """Missing or wrong credentials."""


class Forbidden(MlcdError):
    """Known identity, not allowed to do this."""


class InvalidRequest(MlcdError):
    """A user's request cannot be carried out as asked (a 4xx on HTTP, exit 2 on the CLI)."""
