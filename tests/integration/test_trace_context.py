"""Calls mlcd makes while it follows a chain carry W3C `traceparent`, through each HTTP stack an adapter
uses: MLflow's own client (to a real MLflow server), python-gitlab, the KFP client, the Kubernetes client
built from a kubeconfig as in production, and httpx (a notifier webhook). A recording proxy in front of
each system sees exactly what the library sent; OpenTelemetry's propagator reads the header back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mlcd import tracing
from mlcd.adapters import kube
from mlcd.adapters.gitlab import GitLabCodeHost
from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.adapters.kserve import INFERENCE_SERVICE
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.notify import WebhookNotifier
from mlcd.errors import NotFound
from tests.fakes import kfp_api, kube_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.support.chat_receiver import ChatReceiver
from tests.support.trap_proxy import TrapProxy

CHAIN = "5f0c6c52-4bd4-4c55-9b1b-4f2f8d9a0e11"
EVENT = "0b7e3f4a-2a61-5d0e-8d8a-0f6b1c9e2d33"
EXPECTED = tracing.traceparent(CHAIN, EVENT)


@pytest.fixture
def proxies() -> Iterator[list[TrapProxy]]:
    started: list[TrapProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def _in_front_of(url: str, proxies: list[TrapProxy]) -> TrapProxy:
    proxy = TrapProxy(url).start()
    proxies.append(proxy)
    return proxy


def _sent(proxy: TrapProxy) -> list[str | None]:
    return [headers.get("traceparent") for headers in proxy.headers]


def _trace_id(traceparent: str) -> str:
    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    span = trace.get_current_span(context).get_span_context()
    assert span.is_valid, traceparent
    return f"{span.trace_id:032x}"


async def test_mlflow_calls_carry_the_chains_traceparent(mlflow_uri: str, proxies: list[TrapProxy]) -> None:
    proxy = _in_front_of(mlflow_uri, proxies)
    registry = MlflowRegistry(proxy.url, timeout_s=30)

    with tracing.following(CHAIN, EVENT):
        assert await registry.version_by_alias("no-such-model-anywhere", "champion") is None
    traced = len(proxy.headers)
    await registry.ping()

    assert traced >= 1 and _sent(proxy)[:traced] == [EXPECTED] * traced
    assert _trace_id(EXPECTED) == CHAIN.replace("-", "")
    assert all(value is None for value in _sent(proxy)[traced:]), "outside a chain, no trace is invented"


async def test_gitlab_calls_carry_the_chains_traceparent(proxies: list[TrapProxy]) -> None:
    with FakeGitLab() as fake:
        fake.add_project("ml/wine", files={"README.md": "# wine"})
        proxy = _in_front_of(fake.url, proxies)
        host = GitLabCodeHost(proxy.url, fake.token, timeout_s=5)
        with tracing.following(CHAIN, EVENT):
            await host.set_commit_status("ml/wine", "a" * 40, "pending", name="mlcd/build", description="x")

    assert _sent(proxy) and set(_sent(proxy)) == {EXPECTED}


async def test_kfp_calls_carry_the_chains_traceparent(proxies: list[TrapProxy]) -> None:
    with kfp_api.serve() as fake:
        proxy = _in_front_of(fake.url, proxies)
        orchestrator = KfpClientOrchestrator(proxy.url, timeout_s=5)
        with tracing.following(CHAIN, EVENT):
            assert await orchestrator.latest("wine_quality") is None

    assert _sent(proxy) and set(_sent(proxy)) == {EXPECTED}


async def test_kubernetes_calls_carry_the_chains_traceparent(
    proxies: list[TrapProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with kube_api.running() as cluster:
        proxy = _in_front_of(cluster.url, proxies)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
            f"clusters: [{{name: test, cluster: {{server: '{proxy.url}'}}}}]\n"
            "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
            "users: [{name: test, user: {token: test}}]\n"
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        objects = kube.CustomObjects(kube.api_client, "models", timeout_s=5)
        with tracing.following(CHAIN, EVENT), pytest.raises(NotFound):
            await objects.read(INFERENCE_SERVICE, "absent")

    assert _sent(proxy) and set(_sent(proxy)) == {EXPECTED}


async def test_httpx_calls_carry_the_chains_traceparent() -> None:
    with ChatReceiver() as receiver:
        notifier = WebhookNotifier(receiver.url("oncall"), timeout_s=5)
        with tracing.following(CHAIN, EVENT):
            await notifier.notify("wine_quality", "gate opened", "approve it")
        await notifier.notify("wine_quality", "gate opened", "outside any chain")

    assert [headers.get("traceparent") for headers in receiver.headers] == [EXPECTED, None]
