"""Settings from `MLCD_*` environment variables, read once at the entry point and passed down.

Every setting is optional: unset means the embedded default of `mlcd up`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlcd.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLCD_", extra="ignore")

    @classmethod
    def load(cls) -> Settings:
        """The settings from the environment; a bad MLCD_* value is a ConfigError of one line naming it."""
        try:
            return cls()
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"invalid MLCD_* settings: {where}: {first['msg']}") from None

    home: Path = Field(Path(".mlcd"), description="State folder: SQLite store, objects, MLflow, tokens.")
    http_host: str = Field("127.0.0.1", description="Address the HTTP API and webhooks listen on.")
    http_port: int = Field(8080, description="Port of the HTTP API and webhooks.")
    policies_dir: Path = Field(Path("policies"), description="Folder of policy YAML files, one per model.")

    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset: in-process bus.")
    kafka_enable_idempotence: bool = Field(
        False, description="Idempotent producer; turn on for real Kafka (Tansu does not support it)."
    )
    kafka_namespace: str = Field("", description="Prefix of every topic and consumer group mlcd uses.")
    kafka_partitions: int = Field(4, description="Partitions of each topic mlcd creates at start-up.")
    kafka_replication_factor: int = Field(1, description="Replication factor of topics mlcd creates.")
    kafka_request_timeout_s: float = Field(10.0, description="Seconds before a produce counts as failed.")
    kafka_session_timeout_s: float = Field(
        10.0, description="Consumer group session: a silent member loses its partitions after this long."
    )
    kafka_heartbeat_interval_s: float = Field(3.0, description="Consumer heartbeat; a third of the session.")

    database_url: str | None = Field(
        None, description="SQLAlchemy async URL (postgresql+asyncpg://…); unset: SQLite in MLCD_HOME."
    )
    event_retention_days: int = Field(30, description="Days sent events stay in the journal.")

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, url: str | None) -> str | None:
        """A URL SQLAlchemy can read, so a typo fails at start with this message, not deep in a command."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if url is not None:
            try:
                make_url(url)
            except ArgumentError:
                raise ValueError("not a database URL, e.g. postgresql+asyncpg://user@host/db") from None
        return url

    handler_max_attempts: int = Field(5, description="Attempts of a failing handler before the DLQ.")
    handler_backoff_initial_s: float = Field(0.2, description="First retry delay; doubles each attempt.")
    handler_backoff_max_s: float = Field(10.0, description="Longest retry delay.")

    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server; unset: embedded.")
    mlflow_timeout_s: float = Field(
        30.0, description="Timeout of every MLflow call (each HTTP request, and the call as a whole)."
    )
    kfp_host: str | None = Field(None, description="Kubeflow Pipelines API; unset: kfp local runner.")
    kfp_timeout_s: float = Field(30.0, description="Timeout of every KFP API call.")
    pipelines_dir: Path = Field(
        Path("pipelines"), description="Working tree of pipeline folders (embedded default compiles from it)."
    )
    build_timeout_s: float = Field(120.0, description="Longest a pipeline compile may take before it fails.")
    validation_timeout_s: float = Field(
        300.0, description="Longest a data batch validation may take (then retried as an outage)."
    )

    s3_endpoint: str | None = Field(
        None, description="MinIO/S3 endpoint host:port; unset: MLCD_HOME/objects."
    )
    s3_access_key: SecretStr | None = Field(None, description="Access key of MLCD_S3_ENDPOINT (secret).")
    s3_secret_key: SecretStr | None = Field(None, description="Secret key of MLCD_S3_ENDPOINT (secret).")
    s3_secure: bool = Field(False, description="Use TLS towards MLCD_S3_ENDPOINT.")
    s3_timeout_s: float = Field(30.0, description="Timeout of every object store call.")

    kserve_namespace: str | None = Field(None, description="Namespace of InferenceServices; unset: local.")
    prometheus_url: str | None = Field(None, description="Prometheus for rollout analysis queries.")

    gitlab_url: str | None = Field(None, description="GitLab base URL; unset: notices go to the log.")
    gitlab_token: SecretStr | None = Field(None, description="GitLab API token (api scope).")
    gitlab_timeout_s: float = Field(15.0, description="Timeout of every GitLab API call.")
    gitlab_webhook_secret: SecretStr | None = Field(None, description="X-Gitlab-Token shared secret.")
    gitlab_signing_token: SecretStr | None = Field(
        None, description="Standard Webhooks signing token (whsec_…); when set, signatures are verified."
    )
    minio_webhook_token: SecretStr | None = Field(None, description="Bearer token MinIO sends.")
    minio_kafka_topic: str | None = Field(None, description="Topic of MinIO's Kafka notification target.")
    alertmanager_token: SecretStr | None = Field(None, description="Bearer token Alertmanager sends.")
    mlflow_webhook_secret: SecretStr | None = Field(None, description="HMAC secret of MLflow webhooks.")
    api_tokens_file: Path | None = Field(None, description="YAML list of {name, groups, token_sha256}.")
    slack_webhook_url: SecretStr | None = Field(None, description="Slack-compatible webhook for notices.")

    api_url: str | None = Field(None, description="mlcd API the CLI talks to; default: http://HOST:PORT.")
    api_token: SecretStr | None = Field(None, description="CLI's API token; default: MLCD_HOME/admin-token.")

    webhook_max_body_bytes: int = Field(1_048_576, description="Largest webhook body accepted (413 above).")
    webhook_max_age_s: int = Field(300, description="Oldest signed-webhook timestamp accepted.")
    ingest_timeout_s: float = Field(
        2.0, description="Seconds a webhook waits on the broker (then spools to the outbox) or on the store."
    )
    log_level: str = Field("INFO", description="Log level of the JSON logs.")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.home / 'mlcd.db').resolve()}"

    @property
    def effective_api_url(self) -> str:
        return self.api_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def effective_tokens_file(self) -> Path:
        return self.api_tokens_file or self.home / "api-tokens.yaml"

    def secret_values(self) -> list[str]:
        """Every configured secret for the log redactor, the database password as written and decoded."""
        secrets = [
            self.s3_access_key,
            self.s3_secret_key,
            self.gitlab_token,
            self.gitlab_webhook_secret,
            self.gitlab_signing_token,
            self.minio_webhook_token,
            self.alertmanager_token,
            self.mlflow_webhook_secret,
            self.slack_webhook_url,
            self.api_token,
        ]
        values = [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]
        password = urlsplit(self.database_url).password if self.database_url else None
        return values + ([password, unquote(password)] if password else [])
