"""The Helm chart, linted and rendered by the real Helm engine, every manifest checked against the
Kubernetes schemas (custom resources against their CRD schemas), and what an operator relies on."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlcd import bootstrap

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "mlcd"
CRD_SCHEMAS = Path(__file__).parents[1] / "fixtures" / "crds"
KUBERNETES_VERSION = "1.35"
RELEASE, NAMESPACE = "prod", "mlcd"
SERVICES = ("ingest", "builder", "validator", "trainer", "gatekeeper", "deployer", "notifier")
CONSUMERS = SERVICES[1:]
LINEAGE = "lineage-export"  # off by default; on in EVERYTHING, with somewhere to write
TOKEN_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

EVERYTHING = {
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "tls": [{"secretName": "mlcd-tls", "hosts": ["mlcd.example.com"]}],
    },
    "hpa": {"enabled": True},
    "keda": {"enabled": True, "authenticationRef": "kafka-credentials"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "pdb": {"enabled": True},
    "config": {
        "kafka": {"namespace": "prod."},
        "kserveNamespace": "serving",
        "kfpNamespace": "team-ml",
        "kfpExperiment": "mlcd",
        "kfpServiceAccountToken": True,
        "prometheusUrl": "http://prometheus.monitoring:9090",
        "seldonNamespace": "seldon-models",
        "seldonInferenceUrl": "http://seldon-mesh.seldon-models",
        "katibNamespace": "team-ml",
        "trainingNamespace": "team-ml",
        "gitlabUrl": "https://gitlab.example.com",
        "minioKafkaTopic": "minio-events",
        "lineage": {
            "openlineageUrl": "http://marquez.lineage:5000",
            "mlmdStore": "grpc://metadata-grpc-service.kubeflow:8080",
        },
    },
    "services": {LINEAGE: {"enabled": True}},
    "secrets": {"gitlabToken": "glpat-x", "gitlabWebhookSecret": "s3cret", "alertmanagerToken": "am"},
    "apiTokens": {"tokens": [{"name": "alice", "groups": ["oncall"], "token_sha256": TOKEN_SHA256}]},
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "extraEnv": [
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg-app", "key": "password"}}}
    ],
}
EXISTING = {
    "secrets": {"existingSecret": "mlcd-env"},
    "apiTokens": {"existingSecret": "mlcd-api-tokens"},
    "policies": {"existingConfigMap": "mlcd-policies"},
}
MUTUAL_TLS_SASL = {
    "protocol": "SASL_SSL",
    "saslMechanism": "SCRAM-SHA-512",
    "tls": {"secretName": "kafka-cluster-ca", "caKey": "ca.crt", "certKey": "user.crt", "keyKey": "user.key"},
}
VALUE_SETS: dict[str, dict[str, Any]] = {"defaults": {}, "everything": EVERYTHING, "existing": EXISTING}

Manifest = dict[str, Any]


def _render(values: dict[str, Any]) -> list[Manifest]:
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def rendered(value_set: str) -> tuple[Manifest, ...]:
    return tuple(_render(VALUE_SETS[value_set]))


def of_kind(manifests: tuple[Manifest, ...], kind: str) -> dict[str, Manifest]:
    """Objects of one kind by their component label (or name when they have none)."""
    return {
        m["metadata"]["labels"].get("app.kubernetes.io/component", m["metadata"]["name"]): m
        for m in manifests
        if m["kind"] == kind
    }


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    validators = {}
    for path in CRD_SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        key = (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])
        validators[key] = jsonschema.Draft202012Validator(schema)
    return validators


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_lints_without_findings(value_set: str) -> None:
    report = helm_python.lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_manifest_passes_its_schema(value_set: str) -> None:
    for manifest in rendered(value_set):
        custom = crd_validators().get((manifest["apiVersion"], manifest["kind"]))
        if custom is not None:
            custom.validate(manifest)
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_custom_resources_are_checked_against_their_crd_schema() -> None:
    scaled = of_kind(rendered("everything"), "ScaledObject")["trainer"]
    numeric_lag = json.loads(json.dumps(scaled))
    numeric_lag["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 20

    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        crd_validators()[("keda.sh/v1alpha1", "ScaledObject")].validate(numeric_lag)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_one_deployment_per_service_runs_mlcd_serve(value_set: str) -> None:
    deployments = of_kind(rendered(value_set), "Deployment")

    assert sorted(deployments) == sorted(SERVICES + ((LINEAGE,) if value_set == "everything" else ()))
    for service, deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"prod-mlcd-{service}"
        assert container(deployment)["args"] == ["serve", service]


def test_services_listen_where_their_probes_and_services_point() -> None:
    manifests = rendered("defaults")
    deployments, services = of_kind(manifests, "Deployment"), of_kind(manifests, "Service")

    for name, deployment in deployments.items():
        c = container(deployment)
        port = 8080 if name == "ingest" else 8081
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert {"name": "MLCD_HTTP_PORT", "value": str(port)} in c["env"]
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert services[name]["spec"]["ports"][0]["targetPort"] == "http"
        assert services[name]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]
    assert settings["MLCD_HTTP_HOST"] == "0.0.0.0"


def test_role_allows_only_reading_and_patching_inferenceservices() -> None:
    manifests = rendered("everything")
    role = of_kind(manifests, "Role")["prod-mlcd-inferenceservices"]
    binding = of_kind(manifests, "RoleBinding")["prod-mlcd-inferenceservices"]

    assert role["metadata"]["namespace"] == "serving"
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ]
    assert binding["metadata"]["namespace"] == "serving"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prod-mlcd", "namespace": NAMESPACE}]
    for deployment in of_kind(manifests, "Deployment").values():
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "prod-mlcd"


def test_migration_job_upgrades_the_database_before_install_and_upgrade() -> None:
    manifests = rendered("defaults")
    job = of_kind(manifests, "Job")["migrate"]
    hook_secret = of_kind(manifests, "Secret")["migrate"]
    pod = job["spec"]["template"]["spec"]

    assert container(job)["args"] == ["db", "upgrade"]
    for hook in (job, hook_secret):
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # Hooks run before the release's own objects exist: the Job's Secret is a lighter hook, and the Job
    # does not ask for the chart's ServiceAccount.
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert container(job)["envFrom"] == [{"secretRef": {"name": "prod-mlcd-migrate"}}]
    assert "MLCD_DATABASE_URL" in hook_secret["stringData"]
    assert "serviceAccountName" not in pod
    assert pod["restartPolicy"] == "Never"


def test_existing_secrets_and_policies_are_referenced_not_created() -> None:
    manifests = rendered("existing")
    deployments = of_kind(manifests, "Deployment")

    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"] == []
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "ConfigMap"] == ["prod-mlcd-config"]
    for deployment in deployments.values():
        assert {"secretRef": {"name": "mlcd-env"}} in container(deployment)["envFrom"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["policies"]["configMap"]["name"] == "mlcd-policies"
    ingest_volumes = {v["name"]: v for v in deployments["ingest"]["spec"]["template"]["spec"]["volumes"]}
    assert ingest_volumes["api-tokens"]["secret"]["secretName"] == "mlcd-api-tokens"
    assert container(of_kind(manifests, "Job")["migrate"])["envFrom"] == [{"secretRef": {"name": "mlcd-env"}}]


def test_only_set_secrets_reach_the_pods() -> None:
    secret = of_kind(rendered("everything"), "Secret")["prod-mlcd"]

    assert sorted(secret["stringData"]) == [
        "MLCD_ALERTMANAGER_TOKEN",
        "MLCD_DATABASE_URL",
        "MLCD_GITLAB_TOKEN",
        "MLCD_GITLAB_WEBHOOK_SECRET",
    ]


def test_api_tokens_file_is_mounted_into_ingest_only() -> None:
    manifests = rendered("everything")
    deployments = of_kind(manifests, "Deployment")
    tokens = of_kind(manifests, "Secret")["prod-mlcd-api-tokens"]

    assert yaml.safe_load(tokens["stringData"]["api-tokens.yaml"]) == [
        {"name": "alice", "groups": ["oncall"], "token_sha256": TOKEN_SHA256}
    ]
    ingest = container(deployments["ingest"])
    assert {"name": "MLCD_API_TOKENS_FILE", "value": "/etc/mlcd/api-tokens/api-tokens.yaml"} in ingest["env"]
    assert {"name": "api-tokens", "mountPath": "/etc/mlcd/api-tokens", "readOnly": True} in ingest[
        "volumeMounts"
    ]
    for service in CONSUMERS:
        assert all(m["name"] != "api-tokens" for m in container(deployments[service])["volumeMounts"])


def test_keda_scales_each_consumer_on_its_own_group_lag() -> None:
    scaled = of_kind(rendered("everything"), "ScaledObject")

    assert sorted(scaled) == sorted(CONSUMERS)
    trainer = scaled["trainer"]["spec"]
    assert trainer["scaleTargetRef"]["name"] == "prod-mlcd-trainer"
    assert [
        (t["type"], t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in trainer["triggers"]
    ] == [
        ("kafka", "prod.mlcd-trainer", "prod.mlcd.data"),
        ("kafka", "prod.mlcd-trainer", "prod.mlcd.training"),
        ("kafka", "prod.mlcd-trainer", "prod.mlcd.features"),
    ]
    assert trainer["triggers"][0]["authenticationRef"] == {"name": "kafka-credentials"}


@pytest.mark.parametrize("service", (*CONSUMERS, LINEAGE))
def test_keda_watches_exactly_the_topics_the_service_consumes(service: str) -> None:
    consumed = {payload.topic() for payload in bootstrap.service(service).handlers}
    with helm_python.Chart.load(CHART) as chart:
        watched = chart.values["services"][service]["topics"]

    assert sorted(watched) == sorted(consumed)


def test_autoscaled_deployments_leave_the_replica_count_to_the_autoscaler() -> None:
    manifests = rendered("everything")
    deployments = of_kind(manifests, "Deployment")

    assert of_kind(manifests, "HorizontalPodAutoscaler")["ingest"]["spec"]["scaleTargetRef"]["name"] == (
        "prod-mlcd-ingest"
    )
    assert all("replicas" not in d["spec"] for name, d in deployments.items() if name != LINEAGE)
    assert deployments[LINEAGE]["spec"]["replicas"] == 1  # in neither autoscaler's list
    assert all("replicas" in d["spec"] for d in of_kind(rendered("defaults"), "Deployment").values())


def test_a_deployment_scaled_by_both_autoscalers_is_refused() -> None:
    values = {"hpa": {"enabled": True, "services": ["ingest", "trainer"]}, "keda": {"enabled": True}}

    with pytest.raises(
        helm_python.HelmError, match=re.escape("trainer is in both hpa.services and keda.services")
    ):
        _render(values)


def test_keda_on_a_service_without_topics_is_refused() -> None:
    with pytest.raises(helm_python.HelmError, match="consumes no topic"):
        _render({"keda": {"enabled": True, "services": ["ingest"]}})


def test_every_service_is_scraped_and_no_pod_disruption_takes_a_whole_service() -> None:
    manifests = rendered("everything")
    monitor = of_kind(manifests, "ServiceMonitor")["prod-mlcd"]
    selector = monitor["spec"]["selector"]["matchLabels"]

    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    services = of_kind(manifests, "Service")
    assert sorted(services) == sorted((*SERVICES, LINEAGE))
    for service in services.values():
        assert selector.items() <= service["metadata"]["labels"].items()
        assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    budgets = of_kind(manifests, "PodDisruptionBudget")
    assert sorted(budgets) == sorted((*SERVICES, LINEAGE))
    assert all(b["spec"]["maxUnavailable"] == 1 for b in budgets.values())


def test_ingress_routes_webhooks_api_and_ui_but_not_metrics() -> None:
    ingress = of_kind(rendered("everything"), "Ingress")["ingest"]
    (rule,) = ingress["spec"]["rules"]

    paths = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert paths == {"/hooks": "prod-mlcd-ingest", "/api": "prod-mlcd-ingest", "/ui": "prod-mlcd-ingest"}
    assert ingress["spec"]["tls"] == [{"secretName": "mlcd-tls", "hosts": ["mlcd.example.com"]}]


def test_pods_run_as_non_root_on_a_read_only_root_filesystem() -> None:
    manifests = rendered("defaults")
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]

    for workload in [*of_kind(manifests, "Deployment").values(), of_kind(manifests, "Job")["migrate"]]:
        pod = workload["spec"]["template"]["spec"]
        c = container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[settings["MLCD_HOME"]]]
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_changed_settings_or_secrets_roll_the_pods() -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        deployment = of_kind(tuple(_render(values)), "Deployment")["trainer"]
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    base = annotations({})
    louder = annotations({"config": {"logLevel": "DEBUG"}})
    rotated = annotations({"secrets": {"gitlabToken": "glpat-new"}})

    assert louder["checksum/config"] != base["checksum/config"]
    assert louder["checksum/secret"] == base["checksum/secret"]
    assert rotated["checksum/secret"] != base["checksum/secret"]


def test_policies_are_mounted_where_mlcd_reads_them_and_default_to_the_repository_defaults() -> None:
    manifests = rendered("defaults")
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]
    policies = of_kind(manifests, "ConfigMap")["prod-mlcd-policies"]["data"]

    assert yaml.safe_load(policies["defaults.yaml"]) == yaml.safe_load(
        (ROOT / "policies/defaults.yaml").read_text()
    )
    for deployment in of_kind(manifests, "Deployment").values():
        mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert mounts["policies"] == settings["MLCD_POLICIES_DIR"]


def test_the_chart_passes_every_setting_a_service_reads_and_no_other() -> None:
    from mlcd.config import Settings

    cli_only = {"MLCD_API_URL", "MLCD_API_TOKEN"}
    known = {f"MLCD_{name.upper()}" for name in Settings.model_fields} - cli_only
    with helm_python.Chart.load(CHART) as chart:
        every_secret = {key: "set" for key in chart.values["secrets"] if key != "existingSecret"}
    every_secret |= {
        "databaseUrl": "postgresql+asyncpg://mlcd@postgresql:5432/mlcd",
        "slackWebhookUrl": "https://hooks.example.com/T1",
    }
    config = {**EVERYTHING["config"], "kafka": {**EVERYTHING["config"]["kafka"], "security": MUTUAL_TLS_SASL}}
    manifests = tuple(_render({**EVERYTHING, "config": config, "secrets": every_secret}))
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]
    secrets = of_kind(manifests, "Secret")["prod-mlcd"]["stringData"]
    env = {e["name"] for d in of_kind(manifests, "Deployment").values() for e in container(d)["env"]}

    assert set(settings) | set(secrets) | {name for name in env if name.startswith("MLCD_")} == known


def test_install_notes_give_the_webhook_urls_and_warn_when_the_api_is_closed() -> None:
    def notes(values: dict[str, Any]) -> str:
        with helm_python.Chart.load(CHART) as chart:
            files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return next(text for path, text in files.items() if path.endswith("NOTES.txt"))

    closed = notes({"ingress": EVERYTHING["ingress"]})
    opened = notes(EVERYTHING)

    assert "https://mlcd.example.com/hooks/gitlab" in closed
    assert "https://mlcd.example.com/hooks/alertmanager" in closed
    assert "no API tokens are configured" in closed
    assert "no API tokens are configured" not in opened


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"config": {"prometheusUrl": ""}}, "/config/prometheusUrl"),
        ({"config": {"s3": {"endpoint": "http://minio:9000/landing"}}}, "/config/s3/endpoint"),
        ({"config": {"mlflowTrackingUri": "mlflow:5000"}}, "/config/mlflowTrackingUri"),
        ({"config": {"kfpHost": "ml-pipeline.kubeflow:8888"}}, "/config/kfpHost"),
        ({"config": {"kafka": {"bootstrap": "PLAINTEXT://kafka:9092"}}}, "/config/kafka/bootstrap"),
        ({"config": {"kserveNamespace": "Serving"}}, "/config/kserveNamespace"),
        ({"config": {"pipelinesDir": "/app/flows"}}, "/config/pipelinesDir"),
        ({"secrets": {"databaseUrl": "mlcd@postgresql/mlcd"}}, "/secrets/databaseUrl"),
        (
            {"config": {"kafka": {"sessionTimeoutSeconds": 3, "heartbeatIntervalSeconds": 3}}},
            "must be below config.kafka.sessionTimeoutSeconds",
        ),
        (
            {"config": {"webhook": {"maxBodyBytes": 1048576}}},
            "must be at least 65536 below config.kafka.maxRequestSize",
        ),
        (
            {"config": {"s3": {"endpoint": "http://minio:9000", "secure": True}}},
            "use https:// (the scheme sets TLS)",
        ),
        (
            {"config": {"kafka": {"security": {"protocol": "SASL_SSL"}}}},
            "needs config.kafka.security.saslMechanism",
        ),
        (
            {"config": {"kafka": {"security": {"protocol": "SASL_SSL", "saslMechanism": "PLAIN"}}}},
            "needs secrets.kafkaSaslUsername and secrets.kafkaSaslPassword",
        ),
        (
            {"config": {"kafka": {"security": {"tls": {"secretName": "kafka-ca"}}}}},
            "use SSL or SASL_SSL",
        ),
        (
            {
                "config": {
                    "kafka": {"security": {"protocol": "SSL", "tls": {"secretName": "c", "certKey": "a"}}}
                }
            },
            "go together",
        ),
        (
            {"config": {"kafka": {"security": {"saslMechanism": "GSSAPI"}}}},
            "/config/kafka/security/saslMechanism",
        ),
        (
            {"services": {LINEAGE: {"enabled": True}}},
            "has nowhere to write: set config.lineage.openlineageUrl",
        ),
        ({"config": {"lineage": {"mlmdStore": "mysql://mlmd:pw@mysql/mlmd"}}}, "/config/lineage/mlmdStore"),
    ],
)
def test_values_that_cannot_work_are_refused_at_render_time_with_the_reason(
    values: dict[str, Any], says: str
) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(says)):
        _render(values)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_rendered_settings_load_without_a_configuration_error(value_set: str) -> None:
    from mlcd.config import Settings

    manifests = rendered(value_set)
    env = dict(of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"])
    secret = of_kind(manifests, "Secret").get("prod-mlcd")
    env |= secret["stringData"] if secret else {}
    settings = Settings(**{name.removeprefix("MLCD_").lower(): value for name, value in env.items()})

    assert settings.kserve_namespace and settings.prometheus_url
    assert settings.source_root == Path("/app")


def test_an_https_s3_endpoint_sets_tls_without_a_contradicting_secure_flag() -> None:
    settings = of_kind(
        tuple(_render({"config": {"s3": {"endpoint": "https://s3.example.com"}}})), "ConfigMap"
    )["prod-mlcd-config"]["data"]

    assert settings["MLCD_S3_ENDPOINT"] == "https://s3.example.com"
    assert "MLCD_S3_SECURE" not in settings


def test_kafka_credentials_are_secrets_and_tls_material_is_mounted_into_every_service() -> None:
    values = {
        "config": {"kafka": {"security": MUTUAL_TLS_SASL}},
        "secrets": {"kafkaSaslUsername": "mlcd", "kafkaSaslPassword": "scram-secret"},
    }
    manifests = tuple(_render(values))
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]
    secret = of_kind(manifests, "Secret")["prod-mlcd"]["stringData"]

    assert settings["MLCD_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["MLCD_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert settings["MLCD_KAFKA_SSL_CA_FILE"] == "/etc/mlcd/kafka-tls/ca.crt"
    assert (settings["MLCD_KAFKA_SSL_CERT_FILE"], settings["MLCD_KAFKA_SSL_KEY_FILE"]) == (
        "/etc/mlcd/kafka-tls/user.crt",
        "/etc/mlcd/kafka-tls/user.key",
    )
    assert "scram-secret" not in json.dumps(settings)
    assert (secret["MLCD_KAFKA_SASL_USERNAME"], secret["MLCD_KAFKA_SASL_PASSWORD"]) == (
        "mlcd",
        "scram-secret",
    )
    for deployment in of_kind(manifests, "Deployment").values():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-cluster-ca"
        assert {"name": "kafka-tls", "mountPath": "/etc/mlcd/kafka-tls", "readOnly": True} in container(
            deployment
        )["volumeMounts"]


def test_multi_user_kubeflow_gets_a_projected_token_for_the_pipelines_audience() -> None:
    manifests = rendered("everything")
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]

    assert (settings["MLCD_KFP_NAMESPACE"], settings["MLCD_KFP_EXPERIMENT"]) == ("team-ml", "mlcd")
    token_dir = str(Path(settings["MLCD_KFP_TOKEN_PATH"]).parent)
    for deployment in of_kind(manifests, "Deployment").values():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (source,) = volumes["kfp-token"]["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
        assert source["serviceAccountToken"]["path"] == Path(settings["MLCD_KFP_TOKEN_PATH"]).name
        mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert mounts["kfp-token"] == token_dir
    with pytest.raises(helm_python.HelmError, match="need an experiment there"):
        _render({"config": {"kfpNamespace": "team-ml"}})


def test_the_lineage_exporter_runs_only_when_enabled_and_gets_its_stores() -> None:
    assert LINEAGE not in of_kind(rendered("defaults"), "Deployment")
    settings = of_kind(rendered("defaults"), "ConfigMap")["prod-mlcd-config"]["data"]
    assert not any(k.startswith(("MLCD_OPENLINEAGE", "MLCD_MLMD")) for k in settings)

    values = {**EVERYTHING, "secrets": {"openlineageApiKey": "ol-key", "mlmdPassword": "pw"}}
    manifests = tuple(_render(values))
    exporter = of_kind(manifests, "Deployment")[LINEAGE]
    settings = of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]
    secrets = of_kind(manifests, "Secret")["prod-mlcd"]["stringData"]
    assert container(exporter)["args"] == ["serve", LINEAGE]
    assert settings["MLCD_OPENLINEAGE_URL"] == "http://marquez.lineage:5000"
    assert settings["MLCD_MLMD_STORE"] == "grpc://metadata-grpc-service.kubeflow:8080"
    assert settings["MLCD_MLMD_PYTHON"] == "/opt/mlmd/bin/python"
    assert secrets["MLCD_OPENLINEAGE_API_KEY"] == "ol-key" and secrets["MLCD_MLMD_PASSWORD"] == "pw"
