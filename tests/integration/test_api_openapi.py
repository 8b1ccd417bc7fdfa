"""Schemathesis over the whole HTTP surface `mlcd up` serves: no input a caller sends earns a 5xx.

Every operation of the OpenAPI document gets valid (positive) and invalid (negative) data, each sent
without a token, with a token nobody issued, with a valid token of the wrong group and with an on-call
token; each webhook gets its source's missing, wrong and right credential. A 4xx answer says why (a JSON
`detail` or `error`), and an authenticated webhook delivery is never refused (2xx, or 413 when too large).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast, get_args

import httpx
import pytest
import requests
import schemathesis
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core import NotSet

from mlcd import bootstrap
from mlcd.config import Settings
from tests.support import ingest_app, mutations
from tests.support import webhook_credentials as credentials
from tests.support.inputs_tried import explore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mlcd_openapi_oncall_token"
WRONG_GROUP_TOKEN = "mlcd_openapi_viewer_token"
KEYS = credentials.WebhookSecrets.fresh()
MAX_BODY = 4096
API_AUTHORIZATIONS = {
    "no token": {},
    "unknown token": {"Authorization": "Bearer mlcd_nobody_issued_this"},
    "wrong group": {"Authorization": f"Bearer {WRONG_GROUP_TOKEN}"},
    "on call": {"Authorization": f"Bearer {TOKEN}"},
}
MODES = {
    schemathesis.GenerationMode.POSITIVE: 10,
    schemathesis.GenerationMode.NEGATIVE: 10,
}


@pytest.fixture
def api_url(tmp_path: Path, mlflow_uri: str) -> Iterator[str]:
    tokens = tmp_path / "tokens.yaml"
    entries = [("olivia", "oncall", TOKEN), ("vera", "viewer", WRONG_GROUP_TOKEN)]
    tokens.write_text(
        yaml.safe_dump(
            [
                {"name": name, "groups": [group], "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
                for name, group, token in entries
            ]
        )
    )
    configured = Settings(
        home=tmp_path / "home",
        policies_dir=REPO / "policies",
        pipelines_dir=REPO / "pipelines",
        mlflow_tracking_uri=mlflow_uri,
        api_tokens_file=tokens,
        webhook_max_body_bytes=MAX_BODY,
        **KEYS.settings(),
    )

    @asynccontextmanager
    async def app() -> AsyncIterator[FastAPI]:
        system = bootstrap.system(configured, [], http=True, ui=True)
        await system.host.start()
        try:
            assert system.app is not None
            yield system.app
        finally:
            await system.host.stop()
            await system.close()

    with ingest_app.serving_in_thread(app) as url:
        yield url


def _answers_plainly(what: str, status: int, body: bytes) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if 400 <= status < 500:
        try:
            answer = json.loads(body)
        except ValueError:
            raise AssertionError(f"{what}: {status} without a JSON reason: {body[:300]!r}") from None
        reason = answer.get("detail") or answer.get("error") if isinstance(answer, dict) else None
        assert reason, f"{what}: {status} without a reason: {answer!r}"


def _webhook_source(path: str) -> credentials.Source | None:
    source = path.removeprefix("/hooks/")
    return cast(credentials.Source, source) if source in get_args(credentials.Source) else None


def _check_api_call(case: Any) -> None:
    for who, headers in API_AUTHORIZATIONS.items():
        # An event stream does not end: schemathesis reads it up to the timeout, and its status is the answer.
        streamed = case.path.endswith("/stream")
        try:
            response = case.call(headers=headers, timeout=1 if streamed else 15)
        except requests.exceptions.ReadTimeout:
            if not streamed:
                raise
            # The timeout also bounds the wait for the status line: on a loaded machine that can pass 1 s.
            response = case.call(headers=headers, timeout=10)
        if response.stream_cut_short:
            assert response.status_code == 200, f"{case.method} {case.formatted_path} ({who})"
            continue
        _answers_plainly(
            f"{case.method} {case.formatted_path} ({who})", response.status_code, response.content
        )


def _check_webhook(api_url: str, source: credentials.Source, case: Any) -> None:
    body = b"" if isinstance(case.body, NotSet) else json.dumps(case.body).encode()
    _deliver(api_url, source, body, {k.lower(): str(v) for k, v in (case.headers or {}).items()})


def _deliver(api_url: str, source: credentials.Source, body: bytes, extra: dict[str, str]) -> None:
    """Post `body` with each credential variant of `source`; no 5xx, and the right one is taken."""
    for variant in credentials.VARIANTS[source]:
        sent = credentials.delivery(source, KEYS, variant, body=body, now=time.time())
        headers = extra | {k.lower(): v for k, v in sent.headers.items()}
        response = httpx.post(f"{api_url}{sent.path}", content=body, headers=headers, timeout=15)
        what = f"POST {sent.path} ({variant} credential, {len(body)} bytes)"
        _answers_plainly(what, response.status_code, response.content)
        if variant == "right":
            # An authenticated delivery is never refused: taken, parked, or (too large) 413.
            assert response.status_code in (200, 202, 413), f"{what}: {response.status_code} {response.text}"


def _explore(operation: Any, mode: schemathesis.GenerationMode, check_case: Any) -> int:
    """Run `check_case` on generated cases; how many ran (none if nothing in the operation can be broken)."""
    tried = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MODES[mode], deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        nonlocal tried
        tried += 1
        check_case(case)

    try:
        check()
    except Unsatisfiable:
        assert mode is schemathesis.GenerationMode.NEGATIVE, f"no valid data for {operation.path}"
    return tried


# Importing the adapters' SDKs (mlflow, kfp) raises the recursion limit, which Hypothesis warns about.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_no_request_to_any_endpoint_earns_a_server_error(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/v1/gates/{gate_id}/approve",
        "/api/v1/models/{model}/rollback",
        "/hooks/gitlab",
        "/hooks/minio",
        "/hooks/alertmanager",
        "/hooks/mlflow",
    }
    tried = dict.fromkeys(MODES, 0)
    for operation in operations:
        source = _webhook_source(operation.path)
        for mode in MODES:
            if source is None:
                tried[mode] += _explore(operation, mode, _check_api_call)
            else:
                tried[mode] += _explore(operation, mode, functools.partial(_check_webhook, api_url, source))
    counts = ", ".join(f"{n} {mode.value}" for mode, n in tried.items())
    print(f"bad input: HTTP API (schemathesis): {counts} cases over {len(operations)} operations")
    assert tried[schemathesis.GenerationMode.NEGATIVE] > 0


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_webhook_bodies_schemathesis_cannot_break_are_taken_or_refused_plainly(api_url: str) -> None:
    # A webhook's body schema is "any JSON", so negative generation has nothing to break: the near-valid
    # and broken bodies of the parser tests go through HTTP instead, with every content type.
    deliveries = st.tuples(
        st.sampled_from(credentials.SOURCES).flatmap(
            lambda source: st.tuples(st.just(source), mutations.bodies([_fixture(source)]))
        ),
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
    )

    def check(delivery: tuple[tuple[credentials.Source, bytes], str]) -> None:
        (source, body), content_type = delivery
        _deliver(api_url, source, body, {"content-type": content_type})

    assert explore("HTTP webhooks (near-valid and broken bodies)", deliveries, check, 40) >= 20


def test_inputs_that_once_earned_a_500_are_answered_plainly(api_url: str) -> None:
    # Found by the parser properties and by probing: a lone surrogate escape anywhere in the JSON (text
    # Hypothesis never generates), and JSON nested past the recursion limit.
    deep = b"[" * 5000 + b"]" * 5000
    for source in credentials.SOURCES:
        for body in (mutations.json_bytes(_every_string(_fixture(source), "\ud800")), deep):
            _deliver(api_url, source, body, {"content-type": "application/json"})
    on_call = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    for path in ("/api/v1/gates/g1/approve", "/api/v1/models/wine_quality/rollback"):
        for body in (b'{"reason": "\\ud800"}', b'{"to_version": "\\udcff"}', deep):
            response = httpx.post(f"{api_url}{path}", content=body, headers=on_call, timeout=15)
            _answers_plainly(f"POST {path} {body[:30]!r}", response.status_code, response.content)
            assert response.status_code >= 400, f"{path} took {body[:30]!r}"


def _every_string(value: Any, suffix: str) -> Any:
    if isinstance(value, str):
        return value + suffix
    if isinstance(value, dict):
        return {k: _every_string(v, suffix) for k, v in value.items()}
    if isinstance(value, list):
        return [_every_string(v, suffix) for v in value]
    return value


def _fixture(source: credentials.Source) -> Any:
    return json.loads((credentials.FIXTURES / credentials.BODIES[source]).read_text())
