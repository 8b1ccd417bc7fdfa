"""The KServe adapter against the Kubernetes API emulator, with the official kubernetes client unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest
from kubernetes import client

from mlcd.adapters import kserve
from mlcd.errors import Conflict, NotFound, PermanentError
from mlcd.policy.book import PolicyBook
from tests.fakes import kube_api

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

    traffic_back, restore = cluster.patches[sent_before:]
    if mode == "serverless":
        assert traffic_back["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
    else:
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
