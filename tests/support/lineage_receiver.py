"""A loopback OpenLineage receiver answering `POST /api/v1/lineage` as Marquez does (201), recording each
run event; a parser that reads a recorded event back into the `openlineage-python` client's models; and a
check against OpenLineage's published JSON Schemas (tests/fixtures/openlineage, see SOURCE.md there).

`fail_first` answers the first n posts 503, as a Marquez that is restarting would.
"""

from __future__ import annotations

import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
from openlineage.client import event_v2, facet_v2
from openlineage.client.serde import Serde
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support import processes


class LineageReceiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self.headers: list[dict[str, str]] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()
        self.port = processes.free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/api/v1/lineage":
                    self._answer(404, b'{"error": "no such path"}')
                    return
                with receiver._lock:
                    if receiver.refused < receiver.fail_first:
                        receiver.refused += 1
                        status = 503
                    else:
                        receiver.events.append(json.loads(raw))
                        receiver.headers.append(dict(self.headers.items()))
                        status = 201
                self._answer(status, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def __enter__(self) -> LineageReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- reading a run event back into the client's models -----------------------------------------------


def _facets(raw: dict[str, Any] | None, known: dict[str, Any]) -> dict[str, Any]:
    """Facets the client models; others (mlcd's own) as the base facet of their kind, extra fields kept."""
    result: dict[str, Any] = {}
    for name, body in (raw or {}).items():
        fields = {k: v for k, v in body.items() if not k.startswith("_")}
        cls = known.get(name)
        if cls is None:
            raise AssertionError(f"a facet the test does not know: {name}")
        if name == "dataQualityAssertions":
            fields["assertions"] = [
                facet_v2.data_quality_assertions_dataset.Assertion(**a) for a in fields["assertions"]
            ]
        result[name] = cls(**fields, producer=body["_producer"])
    return result


def parse(body: dict[str, Any]) -> event_v2.RunEvent:
    """The run event as the client's models; their validators check the run id, time and event type."""
    from mlcd.adapters.openlineage import MlcdRunFacet

    run_facets = {"mlcd": MlcdRunFacet, "errorMessage": facet_v2.error_message_run.ErrorMessageRunFacet}
    dataset_facets = {"version": facet_v2.dataset_version_dataset.DatasetVersionDatasetFacet}
    input_facets = {
        "dataQualityAssertions": facet_v2.data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet
    }
    job_facets = {"jobType": facet_v2.job_type_job.JobTypeJobFacet}
    return event_v2.RunEvent(
        eventType=event_v2.RunState(body["eventType"]),
        eventTime=body["eventTime"],
        producer=body["producer"],
        run=event_v2.Run(runId=body["run"]["runId"], facets=_facets(body["run"].get("facets"), run_facets)),
        job=event_v2.Job(
            namespace=body["job"]["namespace"],
            name=body["job"]["name"],
            facets=_facets(body["job"].get("facets"), job_facets),
        ),
        inputs=[
            event_v2.InputDataset(
                namespace=d["namespace"],
                name=d["name"],
                facets=_facets(d.get("facets"), dataset_facets),
                inputFacets=_facets(d.get("inputFacets"), input_facets),
            )
            for d in body.get("inputs", [])
        ],
        outputs=[
            event_v2.OutputDataset(
                namespace=d["namespace"], name=d["name"], facets=_facets(d.get("facets"), dataset_facets)
            )
            for d in body.get("outputs", [])
        ],
    )


def round_trips(body: dict[str, Any]) -> bool:
    """The received JSON is exactly what the client's models make of it (nothing unknown, nothing lost)."""
    return Serde.to_dict(parse(body)) == body


# --- checking a run event against OpenLineage's published JSON Schemas ---------------------------------

SPEC = Path(__file__).resolve().parents[1] / "fixtures" / "openlineage"
RUN_EVENT = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"


@functools.cache
def _registry() -> Registry:
    schemas = [json.loads(path.read_text()) for path in sorted(SPEC.glob("*.json"))]
    return Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
        for schema in schemas
    )


def _problems(instance: Any, ref: str) -> list[str]:
    validator = jsonschema.Draft202012Validator({"$ref": ref}, registry=_registry())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def spec_problems(body: dict[str, Any]) -> list[str]:
    """What in the run event breaks OpenLineage's spec: the RunEvent schema, and each facet checked against
    the schema its `_schemaURL` names (which must be one the spec publishes)."""
    problems = _problems(body, RUN_EVENT)
    places = [body["run"].get("facets"), body["job"].get("facets")]
    for dataset in [*body.get("inputs", []), *body.get("outputs", [])]:
        places += [dataset.get("facets"), dataset.get("inputFacets")]
    known = {url for url, _ in _registry().items()}
    for facets in filter(None, places):
        for name, facet in facets.items():
            url = facet.get("_schemaURL", "")
            if url.split("#")[0] not in known:
                problems.append(f"facet {name}: {url!r} is not a schema of the OpenLineage spec")
            else:
                problems += [f"facet {name}: {p}" for p in _problems(facet, url)]
    return problems
