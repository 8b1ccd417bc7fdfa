"""OpenLineage: the chain's steps as run events, POSTed to a Marquez-compatible endpoint
(`POST {MLCD_OPENLINEAGE_URL}/api/v1/lineage`).

Each step is one RunEvent built with the `openlineage-python` client's own models: job `MODEL.STEP` in
MLCD_OPENLINEAGE_NAMESPACE, run id a UUIDv5 of the event that began the run (so a redelivered event is
the same run event at the receiver), the data batch (`s3://bucket` + key, pinned to its version or etag)
and the model version (`mlflow`, `models:/MODEL/VERSION`) as input and output datasets, the validation's
expectations as the batch's `dataQualityAssertions`, a failure's reason as `errorMessage`, and what mlcd
knows of the step (rules, decisions, traffic, figures) in a run facet named `mlcd`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import attr
import httpx
from openlineage.client import event_v2, facet_v2
from openlineage.client.serde import Serde

from mlcd import logs, ports
from mlcd.adapters import trace_headers
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, PermanentError, TemporaryError

log = logs.get(__name__)

PRODUCER = "urn:mlcd:lineage-export"
LINEAGE_PATH = "/api/v1/lineage"
_RUN_IDS = uuid.UUID("2f7c5a0e-4c1b-5c0e-9b1e-6d1c0a8f3e11")


@attr.define
class MlcdRunFacet(facet_v2.RunFacet):
    """What mlcd recorded about the step: the journaled event and the step's own facts."""

    eventId: str
    eventType: str
    facts: dict[str, Any] = attr.field(factory=dict)


def run_id(run_key: str) -> str:
    """The OpenLineage run id of the run that `run_key` (the id of the event that began it) began."""
    return str(uuid.uuid5(_RUN_IDS, run_key))


def run_event(step: ports.LineageStep, namespace: str) -> event_v2.RunEvent:
    """The step as an OpenLineage RunEvent."""
    facets: dict[str, facet_v2.RunFacet] = {
        "mlcd": MlcdRunFacet(
            eventId=step.event_id, eventType=step.event_type, facts=step.facts, producer=PRODUCER
        )
    }
    if step.error:
        facets["errorMessage"] = facet_v2.error_message_run.ErrorMessageRunFacet(
            message=step.error, programmingLanguage="python", producer=PRODUCER
        )
    job = event_v2.Job(
        namespace=namespace,
        name=f"{step.model}.{step.job}",
        facets={
            "jobType": facet_v2.job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="MLCD", jobType=step.job.upper(), producer=PRODUCER
            )
        },
    )
    return event_v2.RunEvent(
        eventType=event_v2.RunState(step.state),
        eventTime=step.time.isoformat(),
        run=event_v2.Run(runId=run_id(step.run_key), facets=facets),
        job=job,
        inputs=[_input(d, step) for d in step.inputs],
        outputs=[_output(d) for d in step.outputs],
        producer=PRODUCER,
    )


def to_json(event: event_v2.RunEvent) -> str:
    return Serde.to_json(event)


def _dataset_facets(dataset: ports.LineageDataset) -> dict[str, facet_v2.DatasetFacet]:
    if not dataset.version:
        return {}
    return {
        "version": facet_v2.dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=dataset.version, producer=PRODUCER
        )
    }


def _input(dataset: ports.LineageDataset, step: ports.LineageStep) -> event_v2.InputDataset:
    input_facets: dict[str, facet_v2.InputDatasetFacet] = {}
    expectations = step.facts.get("expectations")
    if step.job == "validation" and dataset.kind == "data batch" and expectations:
        assertions = facet_v2.data_quality_assertions_dataset
        input_facets["dataQualityAssertions"] = assertions.DataQualityAssertionsDatasetFacet(
            assertions=[
                assertions.Assertion(
                    assertion=str(x["expectation"]), success=bool(x["success"]), column=x.get("column")
                )
                for x in expectations
            ],
            producer=PRODUCER,
        )
    return event_v2.InputDataset(
        namespace=dataset.namespace,
        name=dataset.name,
        facets=_dataset_facets(dataset),
        inputFacets=input_facets,
    )


def _output(dataset: ports.LineageDataset) -> event_v2.OutputDataset:
    return event_v2.OutputDataset(
        namespace=dataset.namespace, name=dataset.name, facets=_dataset_facets(dataset)
    )


class OpenLineageExport:
    """Posts each step's RunEvent; an outage, a 5xx or a 429 is retried, another refusal is permanent."""

    name = "openlineage"

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + LINEAGE_PATH
        self.namespace = namespace
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # One client, kept: a new one per export builds a TLS context each time (tens of ms).
        if self._client is None:
            self._client = httpx.AsyncClient(
                event_hooks=trace_headers.HTTPX_HOOKS, timeout=self._timeout_s, transport=self._transport
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def export(self, steps: list[ports.LineageStep]) -> None:
        if not steps:
            return
        bodies = [to_json(run_event(step, self.namespace)) for step in steps]
        try:
            for body in bodies:
                _check(await self._http().post(self.endpoint, content=body, headers=self._headers))
        except httpx.HTTPError as e:
            raise AdapterUnavailable(
                f"OpenLineage endpoint {self.endpoint} did not answer: {type(e).__name__}"
            ) from e


def _check(response: httpx.Response) -> None:
    who = f"OpenLineage endpoint {response.request.url}"
    if response.status_code == 429 or response.status_code >= 500:
        raise TemporaryError(f"{who} answered {response.status_code}")
    if response.status_code >= 400:
        raise PermanentError(f"{who} refused a run event: {response.status_code} {_excerpt(response.text)}")


def _excerpt(text: str) -> str:
    try:
        text = json.dumps(json.loads(text))
    except ValueError:
        pass
    return text[:200]


def build(settings: Settings) -> OpenLineageExport | None:
    """The exporter when MLCD_OPENLINEAGE_URL is set, else None."""
    if not settings.openlineage_url:
        return None
    key = settings.openlineage_api_key.get_secret_value() if settings.openlineage_api_key else None
    return OpenLineageExport(
        settings.openlineage_url,
        settings.openlineage_namespace,
        api_key=key,
        timeout_s=settings.openlineage_timeout_s,
    )
