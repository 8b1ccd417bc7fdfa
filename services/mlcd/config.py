"""Settings from `MLCD_*` environment variables, read once at the entry point and passed down.

Every setting is optional: unset means the embedded default of `mlcd up`. Every value is checked when the
settings load (URLs, host:port lists, names, ranges, and settings that only work together), so a bad one
ends the process at start in one line naming it, before any consumer or adapter starts.

Relative paths in policies (`pipelines/<name>/expectations.json`) and the pipeline folders the builder
reads (`pipelines/<name>`) are repository paths: they resolve against `source_root`, the folder that holds
MLCD_PIPELINES_DIR (the repository root in a checkout, `/app` in the image).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlcd.errors import ConfigError

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Tracking URIs that name no tracking server: MLflow reads the store itself.
_MLFLOW_STORE_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def host_port(value: str, example: str, *, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets); the port may be left out when there is a default."""
    if not value or any(c.isspace() or c in "/@?#" for c in value):
        raise ValueError(f"{value!r} is not host:port, e.g. {example}")
    host, colon, port = value.rpartition(":")
    if (
        not colon
        or (host.startswith("[") != host.endswith("]"))
        or (":" in host and not host.startswith("["))
    ):
        host, port = value, ""  # no port (a bare IPv6 address is not accepted: put it in brackets)
    if not _valid_host(host):
        raise ValueError(f"{value!r} is not host:port (bad host), e.g. {example}")
    if not port:
        if default_port is None:
            raise ValueError(f"{value!r} names no port, e.g. {example}")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has a bad port {port!r}, e.g. {example}")
    return host, int(port)


def http_url(value: str, example: str, *, path_allowed: bool = True) -> SplitResult:
    """An http(s) URL with a valid host and port; ValueError says what is wrong."""
    if any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a URL (it holds whitespace), e.g. {example}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http:// or https:// URL, e.g. {example}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(f"{value!r} has a bad port, e.g. {example}") from None
    if not parts.hostname or not _valid_host(parts.hostname):
        raise ValueError(f"{value!r} has no valid host, e.g. {example}")
    if not path_allowed and parts.path not in ("", "/"):
        raise ValueError(f"{value!r} has a path ({parts.path}), which is not allowed here, e.g. {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} has a query or fragment, which is not allowed here, e.g. {example}")
    return parts


def s3_endpoint_parts(value: str) -> tuple[str, bool | None]:
    """(`host:port`, TLS or None when the endpoint has no scheme) of `host[:port]` or `http(s)://host[:port]`."""
    example = "minio.minio:9000 or https://s3.example.com"
    if "://" in value:
        parts = http_url(value, example, path_allowed=False)
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the endpoint: use MLCD_S3_ACCESS_KEY/SECRET_KEY")
        return parts.netloc, parts.scheme == "https"
    host_port(value, example, default_port=0)
    return value, None


def mlmd_connection(store: str, home: Path, password: str = "") -> dict[str, Any]:
    """The MLMD writer's `connect` request for MLCD_MLMD_STORE: `sqlite` (MLCD_HOME/mlmd.sqlite),
    `sqlite:///PATH`, `mysql://USER@HOST[:PORT]/DATABASE` or `grpc://HOST:PORT`."""
    if store == "sqlite":
        return {"sqlite": {"path": str((home / "mlmd.sqlite").resolve())}}
    parts = urlsplit(store)
    if parts.password:
        raise ValueError("the password does not belong in MLCD_MLMD_STORE: use MLCD_MLMD_PASSWORD")
    if parts.scheme == "sqlite" and parts.path:
        return {"sqlite": {"path": parts.path}}
    if parts.scheme == "mysql" and parts.hostname and parts.username and parts.path.strip("/"):
        database = parts.path.strip("/")
        mysql = {"host": parts.hostname, "port": parts.port or 3306, "database": database}
        return {"mysql": {**mysql, "user": parts.username, "password": password}}
    if parts.scheme == "grpc" and parts.hostname and parts.port:
        return {"grpc": {"host": parts.hostname, "port": parts.port}}
    raise ValueError(
        f"{store!r} is not an MLMD store: use sqlite, sqlite:///PATH, mysql://USER@HOST[:PORT]/DATABASE "
        "or grpc://HOST:PORT"
    )


RECORD_HEADROOM_BYTES = 65_536
"""Room a parked webhook's record needs beyond its body: CloudEvents and DLQ headers."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLCD_", extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    @classmethod
    def load(cls) -> Settings:
        """The settings from the environment; a bad MLCD_* value is a ConfigError of one line naming it."""
        try:
            return cls()
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"invalid MLCD_* settings: {where + ': ' if where else ''}{message}") from None

    home: Path = Field(Path(".mlcd"), description="State folder: SQLite store, objects, MLflow, tokens.")
    http_host: str = Field("127.0.0.1", description="Address the HTTP API and webhooks listen on.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP API and webhooks.")
    policies_dir: Path = Field(Path("policies"), description="Folder of policy YAML files, one per model.")

    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers, host:port[,host:port…]; unset: in-process bus."
    )
    kafka_enable_idempotence: bool = Field(
        False, description="Idempotent producer; turn on for real Kafka (Tansu does not support it)."
    )
    kafka_namespace: str = Field("", description="Prefix of every topic and consumer group mlcd uses.")
    kafka_partitions: int = Field(4, ge=1, description="Partitions of each topic mlcd creates at start-up.")
    kafka_replication_factor: int = Field(1, ge=1, description="Replication factor of topics mlcd creates.")
    kafka_request_timeout_s: float = Field(
        10.0, gt=0, description="Seconds before a produce counts as failed."
    )
    kafka_session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Consumer group session: a silent member loses its partitions after this long.",
    )
    kafka_heartbeat_interval_s: float = Field(
        3.0, gt=0, description="Consumer heartbeat; a third of the session."
    )
    kafka_fetch_max_wait_ms: int = Field(
        10,
        ge=1,
        le=30_000,
        description=(
            "How long the broker may hold a consumer's fetch when nothing new has arrived (ms): the "
            "per-hop latency bound. Lower is faster and costs idle fetches (aiokafka's default is 500)."
        ),
    )
    kafka_max_request_size: int = Field(
        1_048_576,
        ge=65_536,
        description=(
            "Largest record the producer sends (bytes); keep it at or below the broker's message.max.bytes. "
            "MLCD_WEBHOOK_MAX_BODY_BYTES must leave 64 KiB of it for the headers of a parked delivery."
        ),
    )

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism with a SASL_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name (with a SASL_* protocol).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_ca_file: Path | None = Field(
        None, description="PEM CA bundle the broker's certificate is checked against; unset: the system's."
    )
    kafka_ssl_cert_file: Path | None = Field(
        None, description="PEM client certificate for mutual TLS (with MLCD_KAFKA_SSL_KEY_FILE)."
    )
    kafka_ssl_key_file: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted MLCD_KAFKA_SSL_KEY_FILE (secret)."
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to."
    )

    database_url: str | None = Field(
        None, description="SQLAlchemy async URL (postgresql+asyncpg://…); unset: SQLite in MLCD_HOME."
    )
    event_retention_days: int = Field(30, ge=1, description="Days sent events stay in the journal.")

    handler_max_attempts: int = Field(5, ge=1, description="Attempts of a failing handler before the DLQ.")
    handler_backoff_initial_s: float = Field(
        0.2, gt=0, description="First retry delay; doubles each attempt."
    )
    handler_backoff_max_s: float = Field(10.0, gt=0, description="Longest retry delay.")

    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server, http(s)://host[:port][/path]; unset: embedded."
    )
    mlflow_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of every MLflow call (each HTTP request, and the call as a whole)."
    )
    kfp_host: str | None = Field(
        None, description="Kubeflow Pipelines API, http(s)://host[:port][/path]; unset: kfp local runner."
    )
    kfp_timeout_s: float = Field(30.0, gt=0, description="Timeout of every KFP API call.")
    kfp_namespace: str | None = Field(
        None, description="Multi-user Kubeflow: the profile namespace runs and experiments live in."
    )
    kfp_experiment: str | None = Field(
        None, description="KFP experiment (display name) runs are filed under, created when missing."
    )
    kfp_token_path: Path | None = Field(
        None,
        validation_alias=AliasChoices("MLCD_KFP_TOKEN_PATH", "KF_PIPELINES_SA_TOKEN_PATH"),
        description="Service-account token file sent to KFP as a bearer token, reread on every call (also "
        "read from KF_PIPELINES_SA_TOKEN_PATH); multi-user Kubeflow mounts it at "
        "/var/run/secrets/kubeflow/pipelines/token.",
    )
    katib_namespace: str | None = Field(
        None,
        description="Namespace of Katib Experiments for policies with training.tuning; unset: Optuna trials "
        "on the orchestrator, the studies in MLCD_HOME/tuning.",
    )
    training_namespace: str | None = Field(
        None,
        description="Namespace of Training Operator jobs for policies with training.backend: job; unset: "
        "such policies' runs fail, saying so.",
    )
    trial_image: str = Field(
        "registry.example.com/ml/mlcd:latest",
        description="Image of Katib trial pods (mlcd's own: each trial runs `python -m mlcd.trainer.trial`, "
        "a run of the model's pipeline on MLCD_KFP_HOST).",
    )
    kube_timeout_s: float = Field(
        10.0, gt=0, description="Timeout of every Kubernetes API call on Katib and Training Operator objects."
    )
    pipelines_dir: Path = Field(
        Path("pipelines"),
        description="The repository's pipelines/ folder; its parent is the root that relative policy paths "
        "(pipelines/<name>/…) resolve against (/app/pipelines in the image).",
    )
    build_timeout_s: float = Field(
        120.0, gt=0, description="Longest a pipeline compile may take before it fails."
    )
    feast_bin: Path = Field(
        Path(".venv-feast/bin/feast"),
        description="The `feast` command the builder plans and applies feature repositories with: Feast "
        "0.67 needs pandas<3, so it has a virtualenv of its own (`make feast-venv`).",
    )
    feast_timeout_s: float = Field(
        300.0, gt=0, description="Longest a `feast plan` or `feast apply` may take before it fails."
    )
    validation_timeout_s: float = Field(
        300.0, gt=0, description="Longest a data batch validation may take (then retried as an outage)."
    )

    s3_endpoint: str | None = Field(
        None,
        description="MinIO/S3 endpoint, host[:port] or http(s)://host[:port] (the scheme sets TLS); "
        "unset: MLCD_HOME/objects.",
    )
    s3_access_key: SecretStr | None = Field(None, description="Access key of MLCD_S3_ENDPOINT (secret).")
    s3_secret_key: SecretStr | None = Field(None, description="Secret key of MLCD_S3_ENDPOINT (secret).")
    s3_secure: bool = Field(
        False, description="Use TLS towards a host:port MLCD_S3_ENDPOINT (an http(s):// one says it itself)."
    )
    s3_timeout_s: float = Field(30.0, gt=0, description="Timeout of every object store call.")

    kserve_namespace: str | None = Field(
        None, description="Namespace of InferenceServices; needs MLCD_PROMETHEUS_URL; unset: local serving."
    )
    prometheus_url: str | None = Field(
        None, description="Prometheus for rollout analysis queries, http(s)://host[:port][/path]."
    )
    seldon_namespace: str | None = Field(
        None,
        description="Namespace of Seldon Core 2 Models and Experiments, for policies with rollout.platform: "
        "seldon; needs MLCD_PROMETHEUS_URL.",
    )
    seldon_inference_url: str | None = Field(
        None,
        description="Seldon's inference endpoint (the seldon-mesh Service, http(s)://host[:port]), where "
        "the prediction-agreement check sends its probe to both models; unset: that check is inconclusive.",
    )

    gitlab_url: str | None = Field(None, description="GitLab base URL; unset: notices go to the log.")
    gitlab_token: SecretStr | None = Field(None, description="GitLab API token (api scope).")
    gitlab_timeout_s: float = Field(15.0, gt=0, description="Timeout of every GitLab API call.")
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

    openlineage_url: str | None = Field(
        None,
        description="OpenLineage endpoint (Marquez), http(s)://host[:port][/path]; run events go to POST "
        "…/api/v1/lineage; unset: no OpenLineage export.",
    )
    openlineage_api_key: SecretStr | None = Field(
        None, description="Bearer token sent to MLCD_OPENLINEAGE_URL (secret)."
    )
    openlineage_namespace: str = Field(
        "mlcd", min_length=1, description="OpenLineage namespace of mlcd's jobs (MODEL.validation, …)."
    )
    openlineage_timeout_s: float = Field(10.0, gt=0, description="Timeout of every OpenLineage call.")
    mlmd_store: str | None = Field(
        None,
        description="ML Metadata store: sqlite (MLCD_HOME/mlmd.sqlite), sqlite:///PATH, "
        "mysql://USER@HOST[:PORT]/DATABASE or grpc://HOST:PORT (an MLMD gRPC server); unset: no MLMD export.",
    )
    mlmd_password: SecretStr | None = Field(None, description="Password of a mysql:// MLCD_MLMD_STORE.")
    mlmd_python: Path = Field(
        Path(".venv-mlmd/bin/python"),
        description="Python of the virtualenv holding ml-metadata 1.17.1 (it needs protobuf<5), where the "
        "MLMD writer runs as a child process; `make mlmd-venv` creates it.",
    )
    mlmd_timeout_s: float = Field(30.0, gt=0, description="Timeout of every MLMD write.")

    api_url: str | None = Field(None, description="mlcd API the CLI talks to; default: http://HOST:PORT.")
    api_token: SecretStr | None = Field(None, description="CLI's API token; default: MLCD_HOME/admin-token.")

    webhook_max_body_bytes: int = Field(
        983_040, ge=1, description="Largest webhook body accepted (413 above); 64 KiB under the record limit."
    )
    webhook_max_age_s: int = Field(300, ge=1, description="Oldest signed-webhook timestamp accepted.")
    adapter_check_interval_s: float = Field(
        30.0,
        gt=0,
        description="Seconds between health checks of MLflow, S3, GitLab, KFP and serving (/status).",
    )
    ingest_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Seconds a webhook waits on the broker (then spools to the outbox) or on the store.",
    )
    log_level: str = Field("INFO", description="Log level of the JSON logs: DEBUG, INFO, WARNING, ERROR.")

    # --- checks of single values -------------------------------------------------------------------

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

    @field_validator("http_host")
    @classmethod
    def _a_listen_address(cls, host: str) -> str:
        if not _valid_host(host):
            raise ValueError(f"{host!r} is not an address to listen on, e.g. 0.0.0.0 or 127.0.0.1")
        return host

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_servers(cls, value: str | None) -> str | None:
        if value is not None:
            servers = value.split(",")
            for server in servers:
                host_port(server.strip(), "kafka-bootstrap.kafka:9092,kafka-1.kafka:9092")
        return value

    @field_validator("kafka_namespace")
    @classmethod
    def _topic_prefix(cls, prefix: str) -> str:
        if prefix and not _TOPIC.match(prefix):
            raise ValueError(f"{prefix!r} cannot prefix a Kafka topic: use letters, digits, '.', '_', '-'")
        return prefix

    @field_validator("minio_kafka_topic")
    @classmethod
    def _a_topic(cls, topic: str | None) -> str | None:
        if topic is not None and not _TOPIC.match(topic):
            raise ValueError(f"{topic!r} is not a Kafka topic name: use letters, digits, '.', '_', '-'")
        return topic

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _a_tracking_uri(cls, uri: str | None) -> str | None:
        if uri is not None and urlsplit(uri).scheme not in _MLFLOW_STORE_SCHEMES:
            http_url(uri, "http://mlflow.mlflow:5000")
        return uri

    @field_validator("kfp_host")
    @classmethod
    def _a_kfp_url(cls, url: str | None) -> str | None:
        if url is not None:
            http_url(url, "http://ml-pipeline.kubeflow:8888")
        return url

    @field_validator("prometheus_url")
    @classmethod
    def _a_prometheus_url(cls, url: str | None) -> str | None:
        if url is not None:
            http_url(url, "http://prometheus-operated.monitoring:9090")
        return url

    @field_validator("seldon_inference_url")
    @classmethod
    def _a_seldon_inference_url(cls, url: str | None) -> str | None:
        if url is not None:
            http_url(url, "http://seldon-mesh.seldon-models")
        return url

    @field_validator("gitlab_url")
    @classmethod
    def _a_gitlab_url(cls, url: str | None) -> str | None:
        if url is not None:
            http_url(url, "https://gitlab.example.com")
        return url

    @field_validator("api_url")
    @classmethod
    def _an_api_url(cls, url: str | None) -> str | None:
        if url is not None:
            http_url(url, "https://mlcd.example.com")
        return url

    @field_validator("slack_webhook_url")
    @classmethod
    def _a_slack_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            try:
                http_url(url.get_secret_value(), "https://hooks.slack.com/services/…")
            except ValueError:
                # The URL is a secret: say what is wrong without repeating it.
                raise ValueError("not an http:// or https:// URL") from None
        return url

    @field_validator("openlineage_url")
    @classmethod
    def _an_openlineage_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = http_url(url, "http://marquez.lineage:5000")
            if parts.username or parts.password:
                raise ValueError("credentials do not belong in the URL: use MLCD_OPENLINEAGE_API_KEY")
        return url

    @field_validator("mlmd_store")
    @classmethod
    def _an_mlmd_store(cls, store: str | None) -> str | None:
        if store is not None:
            mlmd_connection(store, Path("."))
        return store

    @field_validator("s3_endpoint")
    @classmethod
    def _an_s3_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None:
            s3_endpoint_parts(endpoint)
        return endpoint

    @field_validator(
        "kserve_namespace", "kfp_namespace", "seldon_namespace", "katib_namespace", "training_namespace"
    )
    @classmethod
    def _a_namespace(cls, namespace: str | None) -> str | None:
        if namespace is not None and not _DNS_LABEL.match(namespace):
            raise ValueError(f"{namespace!r} is not a Kubernetes namespace name (lower-case DNS label)")
        return namespace

    @field_validator("log_level")
    @classmethod
    def _a_log_level(cls, level: str) -> str:
        if level.upper() not in _LOG_LEVELS:
            raise ValueError(f"{level!r} is not a log level; choose one of {', '.join(_LOG_LEVELS)}")
        return level.upper()

    @field_validator("pipelines_dir")
    @classmethod
    def _a_pipelines_folder(cls, folder: Path) -> Path:
        if folder.name != "pipelines":
            raise ValueError(
                f"{str(folder)!r} must be a folder named pipelines: policies name repository paths such "
                "as pipelines/<name>/expectations.json, resolved against its parent"
            )
        return folder

    @field_validator("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
    @classmethod
    def _a_readable_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file (is the Secret mounted there?)")
        return path

    # --- checks of settings that only work together ------------------------------------------------

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.s3_endpoint is not None:
            _, tls = s3_endpoint_parts(self.s3_endpoint)
            if tls is not None:
                if "s3_secure" in self.model_fields_set and self.s3_secure != tls:
                    raise ValueError(
                        f"s3_secure: MLCD_S3_SECURE={str(self.s3_secure).lower()} contradicts "
                        f"MLCD_S3_ENDPOINT's {'https' if tls else 'http'}:// scheme; drop one of them"
                    )
                self.s3_secure = tls
        self._kafka_security_consistent()
        if self.kserve_namespace and not self.prometheus_url:
            raise ValueError(
                "kserve_namespace: MLCD_KSERVE_NAMESPACE needs MLCD_PROMETHEUS_URL (rollouts on KServe are "
                "analysed from Prometheus); set it, or unset MLCD_KSERVE_NAMESPACE for local serving"
            )
        if self.seldon_namespace and not self.prometheus_url:
            raise ValueError(
                "seldon_namespace: MLCD_SELDON_NAMESPACE needs MLCD_PROMETHEUS_URL (rollouts on Seldon are "
                "analysed from Prometheus); set it, or unset MLCD_SELDON_NAMESPACE"
            )
        if self.kafka_heartbeat_interval_s >= self.kafka_session_timeout_s:
            raise ValueError(
                "kafka_heartbeat_interval_s: MLCD_KAFKA_HEARTBEAT_INTERVAL_S must be below "
                f"MLCD_KAFKA_SESSION_TIMEOUT_S ({self.kafka_session_timeout_s:g} s), about a third of it"
            )
        if self.webhook_max_body_bytes + RECORD_HEADROOM_BYTES > self.kafka_max_request_size:
            raise ValueError(
                "webhook_max_body_bytes: MLCD_WEBHOOK_MAX_BODY_BYTES must be at least 64 KiB below "
                f"MLCD_KAFKA_MAX_REQUEST_SIZE ({self.kafka_max_request_size} bytes): a delivery parked on "
                "the DLQ carries its body plus headers, and a record the broker refuses cannot be published"
            )
        if self.handler_backoff_initial_s > self.handler_backoff_max_s:
            raise ValueError(
                "handler_backoff_initial_s: MLCD_HANDLER_BACKOFF_INITIAL_S is above "
                f"MLCD_HANDLER_BACKOFF_MAX_S ({self.handler_backoff_max_s:g} s)"
            )
        return self

    def _kafka_security_consistent(self) -> None:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        tls = self.kafka_security_protocol in ("SSL", "SASL_SSL")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"kafka_sasl_mechanism: MLCD_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "MLCD_KAFKA_SASL_MECHANISM, MLCD_KAFKA_SASL_USERNAME and MLCD_KAFKA_SASL_PASSWORD"
            )
        if not sasl and (self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password):
            raise ValueError(
                "kafka_security_protocol: SASL settings are set but MLCD_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}; use SASL_SSL (or SASL_PLAINTEXT)"
            )
        files = (self.kafka_ssl_ca_file, self.kafka_ssl_cert_file, self.kafka_ssl_key_file)
        if not tls and any(f is not None for f in files):
            raise ValueError(
                "kafka_security_protocol: TLS files are set but MLCD_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}; use SSL (or SASL_SSL)"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError(
                "kafka_ssl_cert_file: MLCD_KAFKA_SSL_CERT_FILE and MLCD_KAFKA_SSL_KEY_FILE go together"
            )

    # --- derived values ----------------------------------------------------------------------------

    @property
    def s3_host(self) -> str:
        """MLCD_S3_ENDPOINT as the `minio` SDK takes it: host[:port], no scheme (TLS is `s3_secure`)."""
        if self.s3_endpoint is None:
            raise ConfigError("MLCD_S3_ENDPOINT is not set")
        return s3_endpoint_parts(self.s3_endpoint)[0]

    @property
    def s3_url(self) -> str:
        """MLCD_S3_ENDPOINT as boto, MLflow and KFP components take it: http(s)://host[:port]."""
        return f"{'https' if self.s3_secure else 'http'}://{self.s3_host}"

    @property
    def source_root(self) -> Path:
        """The repository root: relative policy paths and pipeline folders (`pipelines/<name>`) start here."""
        return self.pipelines_dir.resolve().parent

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
            self.kafka_sasl_password,
            self.kafka_ssl_key_password,
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
            self.openlineage_api_key,
            self.mlmd_password,
        ]
        values = [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]
        password = urlsplit(self.database_url).password if self.database_url else None
        return values + ([password, unquote(password)] if password else [])
