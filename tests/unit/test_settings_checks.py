"""Every MLCD_* value is checked when the settings load: one line naming the setting, before any start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlcd.config import Settings
from mlcd.errors import ConfigError

MLCD = str(Path(sys.executable).parent / "mlcd")


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in [n for n in os.environ if n.startswith("MLCD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"MLCD_{name}", value)
    return Settings.load()


@pytest.mark.parametrize(
    ("endpoint", "host", "secure"),
    [
        ("minio.minio:9000", "minio.minio:9000", False),
        ("minio", "minio", False),
        ("http://minio.minio:9000", "minio.minio:9000", False),
        ("https://s3.example.com", "s3.example.com", True),
        ("https://s3.example.com:8443/", "s3.example.com:8443", True),
        ("http://[::1]:9000", "[::1]:9000", False),
        ("10.0.0.7:9000", "10.0.0.7:9000", False),
    ],
)
def test_the_s3_endpoint_takes_host_port_or_a_url_whose_scheme_sets_tls(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, host: str, secure: bool
) -> None:
    settings = load(monkeypatch, S3_ENDPOINT=endpoint)

    assert (settings.s3_host, settings.s3_secure) == (host, secure)
    assert settings.s3_url == f"{'https' if secure else 'http'}://{host}"


def test_tls_of_a_host_port_endpoint_comes_from_s3_secure(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, S3_ENDPOINT="s3.example.com:443", S3_SECURE="true")

    assert (settings.s3_host, settings.s3_secure, settings.s3_url) == (
        "s3.example.com:443",
        True,
        "https://s3.example.com:443",
    )


@pytest.mark.parametrize(
    ("variable", "value", "named", "says"),
    [
        ("S3_ENDPOINT", "http://minio:9000/bucket", "s3_endpoint", "has a path"),
        ("S3_ENDPOINT", "ftp://minio:9000", "s3_endpoint", "not an http:// or https:// URL"),
        ("S3_ENDPOINT", "minio:ninety", "s3_endpoint", "bad port"),
        ("S3_ENDPOINT", "http://ak:sk@minio:9000", "s3_endpoint", "credentials do not belong"),
        ("S3_ENDPOINT", "minio:9000 ", "s3_endpoint", "not host:port"),
        ("MLFLOW_TRACKING_URI", "mlflow.mlflow:5000", "mlflow_tracking_uri", "http:// or https://"),
        ("MLFLOW_TRACKING_URI", "http://mlflow:50x0", "mlflow_tracking_uri", "bad port"),
        ("KFP_HOST", "ml-pipeline.kubeflow:8888", "kfp_host", "http:// or https://"),
        ("PROMETHEUS_URL", "prometheus:9090", "prometheus_url", "http:// or https://"),
        ("GITLAB_URL", "https://", "gitlab_url", "not an http:// or https:// URL"),
        ("API_URL", "http://mlcd?x=1", "api_url", "query or fragment"),
        ("KAFKA_BOOTSTRAP", "kafka:9092,kafka-2", "kafka_bootstrap", "names no port"),
        ("KAFKA_BOOTSTRAP", "PLAINTEXT://kafka:9092", "kafka_bootstrap", "not host:port"),
        ("KAFKA_NAMESPACE", "prod/", "kafka_namespace", "cannot prefix a Kafka topic"),
        ("MINIO_KAFKA_TOPIC", "minio events", "minio_kafka_topic", "not a Kafka topic name"),
        ("KSERVE_NAMESPACE", "Serving_NS", "kserve_namespace", "not a Kubernetes namespace"),
        ("LOG_LEVEL", "LOUD", "log_level", "not a log level"),
        ("HTTP_PORT", "70000", "http_port", "less than or equal to 65535"),
        ("HTTP_HOST", "0.0.0.0:8080", "http_host", "not an address to listen on"),
        ("KAFKA_PARTITIONS", "0", "kafka_partitions", "greater than or equal to 1"),
        ("KFP_TIMEOUT_S", "-1", "kfp_timeout_s", "greater than 0"),
        ("HANDLER_MAX_ATTEMPTS", "0", "handler_max_attempts", "greater than or equal to 1"),
        ("PIPELINES_DIR", "/srv/flows", "pipelines_dir", "must be a folder named pipelines"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(monkeypatch, **{variable: value})

    message = str(refused.value)
    assert message.startswith(f"invalid MLCD_* settings: {named}: "), message
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"KSERVE_NAMESPACE": "serving"}, "kserve_namespace", "needs MLCD_PROMETHEUS_URL"),
        ({"S3_ENDPOINT": "https://s3.example.com", "S3_SECURE": "false"}, "s3_secure", "contradicts"),
        ({"S3_ENDPOINT": "http://minio:9000", "S3_SECURE": "true"}, "s3_secure", "contradicts"),
        (
            {"KAFKA_SESSION_TIMEOUT_S": "6", "KAFKA_HEARTBEAT_INTERVAL_S": "6"},
            "kafka_heartbeat_interval_s",
            "must be below",
        ),
        (
            {"HANDLER_BACKOFF_INITIAL_S": "20", "HANDLER_BACKOFF_MAX_S": "10"},
            "handler_backoff_initial_s",
            "is above",
        ),
    ],
)
def test_settings_that_only_work_together_are_refused_apart(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=f"^invalid MLCD_\\* settings: {named}: .*{says}"):
        load(monkeypatch, **env)


def test_kserve_with_prometheus_and_everything_else_set_well_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        KAFKA_BOOTSTRAP="kafka-0.kafka:9092, kafka-1.kafka:9092",
        KSERVE_NAMESPACE="serving",
        PROMETHEUS_URL="http://prometheus-operated.monitoring:9090",
        MLFLOW_TRACKING_URI="http://mlflow.mlflow:5000",
        KFP_HOST="https://kubeflow.example.com/pipeline",
        GITLAB_URL="https://gitlab.example.com",
        LOG_LEVEL="debug",
        PIPELINES_DIR="/app/pipelines",
    )

    assert settings.log_level == "DEBUG"
    assert settings.source_root == Path("/app")


def test_a_secret_url_that_is_bad_is_refused_without_repeating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as refused:
        load(monkeypatch, SLACK_WEBHOOK_URL="hooks.slack.com/services/T0/B0/s3cr3t-part")

    assert "slack_webhook_url" in str(refused.value)
    assert "s3cr3t-part" not in str(refused.value)


def test_a_bad_endpoint_stops_a_consumer_at_start_in_one_line(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLCD_")},
        "MLCD_HOME": str(tmp_path),
        "MLCD_S3_ENDPOINT": "http://minio:9000/landing",
    }
    result = subprocess.run(
        [MLCD, "serve", "validator"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: invalid MLCD_* settings: s3_endpoint: ")
    assert "Traceback" not in result.stderr
