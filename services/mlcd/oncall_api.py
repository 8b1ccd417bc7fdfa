"""What the on-call page reads besides the gates, models and journal: a model's rollouts with every analysis
measurement, their canary chart as SVG, the chain that led to a model version, and the audit log.

Reading needs any valid API token. Links out are built only from URLs mlcd is configured with (MLflow,
Kubeflow Pipelines, GitLab), never with their credentials.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import canary_chart, events, http, lineage
from mlcd.errors import InvalidRequest, NotFound
from mlcd.policy.book import PolicyBook
from mlcd.store import gates, outbox, rollouts
from mlcd.store.gates import gate_audit
from mlcd.store.gates import gates as gates_table

MAX_ROLLOUTS = 50
MAX_AUDIT = 1000
_CHAIN_SCAN = 200  # journaled events of each kind read to stitch a chain together


@dataclass(frozen=True)
class Links:
    """Base URLs of the systems a chain node links out to; None where mlcd does not know one. `objects` is
    the object store's S3 endpoint (MLCD_S3_ENDPOINT): a batch links to its path-style object URL there."""

    mlflow: str | None = None
    kfp: str | None = None
    gitlab: str | None = None
    objects: str | None = None

    @classmethod
    def of(
        cls, mlflow: str | None, kfp: str | None, gitlab: str | None, objects: str | None = None
    ) -> "Links":
        return cls(_web(mlflow), _web(kfp), _web(gitlab), _web(objects))

    def model_version(self, model: str, version: str) -> str | None:
        return f"{self.mlflow}/#/models/{quote(model)}/versions/{quote(version)}" if self.mlflow else None

    def run(self, run_id: str) -> str | None:
        # the run page kfp.Client itself prints: {host}/#/runs/details/{run_id}
        return f"{self.kfp}/#/runs/details/{quote(run_id)}" if self.kfp and run_id else None

    def object(self, uri: str | None) -> str | None:
        """`s3://bucket/key` as the object's URL on the S3 endpoint (MinIO answers path-style addresses)."""
        if not (self.objects and uri and uri.startswith("s3://")):
            return None
        bucket, _, key = uri.removeprefix("s3://").partition("/")  # a key may hold '?' or '#': no urlsplit
        return f"{self.objects}/{quote(bucket, safe='')}/{quote(key)}" if bucket and key else None

    def commit(self, project: str | None, sha: str) -> str | None:
        if not (self.gitlab and project and sha):
            return None
        return f"{self.gitlab}/{quote(project)}/-/commit/{quote(sha)}"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).isoformat()


def _web(url: str | None) -> str | None:
    """An http(s) URL without its credentials and trailing slash; anything else (sqlite:, a path) is None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def router(
    engine_provider: Callable[[], AsyncEngine], identify: http.Identify, policies: PolicyBook, links: Links
) -> APIRouter:
    caller = http.caller(identify)
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(caller)])

    def known(model: str) -> None:
        if policies.get(model) is None:
            raise NotFound(f"mlcd has no policy for a model named {model!r}")

    @api.get(
        "/models/{model}/rollouts",
        tags=["serving"],
        summary="The model's rollouts, newest first, each with every analysis measurement it recorded",
        responses={404: {"description": "No such model"}, 400: {"description": "limit out of range"}},
    )
    async def list_rollouts(
        model: str,
        limit: Annotated[int, Query(description=f"How many rollouts, 1 to {MAX_ROLLOUTS}")] = 10,
        with_measurements: Annotated[
            bool,
            Query(
                alias="measurements",
                description="Include every measurement; false: only how many and when the last was taken",
            ),
        ] = True,
    ) -> list[dict[str, Any]]:
        known(model)
        if not 1 <= limit <= MAX_ROLLOUTS:
            raise InvalidRequest(f"limit must be between 1 and {MAX_ROLLOUTS}, not {limit}")
        async with engine_provider().connect() as conn:
            found = await rollouts.history(conn, model, limit)
            ids = [r.id for r in found]
            counts = await rollouts.measured_so_far(conn, ids)
            measured = await rollouts.measurements(conn, ids) if with_measurements else []
        answer = []
        for r in found:
            count, last = counts.get(r.id, (0, None))
            shown = {**r.as_dict(), "measured": {"count": count, "last_at": _iso(last)}}
            if with_measurements:
                shown["measurements"] = [m.as_dict() for m in measured if m.rollout_id == r.id]
            answer.append(shown)
        return answer

    @api.get(
        "/models/{model}/rollouts/{rollout_id}/chart",
        tags=["serving"],
        summary="The rollout's canary chart (SVG): each check's values against its bounds, traffic per step",
        response_class=Response,
        responses={
            200: {"content": {"image/svg+xml": {}}},
            404: {"description": "No such model, or no such rollout of it"},
        },
    )
    async def chart(model: str, rollout_id: int) -> Response:
        known(model)
        async with engine_provider().connect() as conn:
            found = [r for r in await rollouts.history(conn, model, MAX_ROLLOUTS) if r.id == rollout_id]
            if not found:
                raise NotFound(f"{model} has no rollout {rollout_id} among its last {MAX_ROLLOUTS}")
            measured = await rollouts.measurements(conn, [rollout_id])
        headers = {"Cache-Control": "no-store"}
        return Response(canary_chart.svg(found[0], measured), media_type="image/svg+xml", headers=headers)

    @api.get(
        "/models/{model}/chain",
        tags=["serving"],
        summary="What led to a model version: data batch, validation, pipeline, training run, version, gate, "
        "rollout steps, each with its state, time and link",
        responses={404: {"description": "No such model"}},
    )
    async def chain(
        model: str,
        version: Annotated[
            str | None,
            Query(max_length=100, description="Model version; default: the newest one mlcd handled"),
        ] = None,
    ) -> dict[str, Any]:
        known(model)
        policy = policies.get(model)
        project = policy.code.project if policy and policy.code else None
        async with engine_provider().connect() as conn:
            return await _chain(conn, model, version, project, links)

    @api.get(
        "/audit",
        tags=["gates"],
        summary="Who decided or tried to decide which gate, when, through what and why; newest first",
        responses={400: {"description": "limit out of range"}},
    )
    async def audit(
        model: Annotated[str | None, Query(max_length=200, description="Only this model's gates")] = None,
        limit: Annotated[int, Query(description=f"How many, 1 to {MAX_AUDIT}")] = 100,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_AUDIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_AUDIT}, not {limit}")
        query = (
            select(gate_audit, gates_table.c.model, gates_table.c.model_version)
            .join(gates_table, gates_table.c.id == gate_audit.c.gate_id)
            .order_by(gate_audit.c.seq.desc())
            .limit(limit)
        )
        if model:
            query = query.where(gates_table.c.model == model)
        async with engine_provider().connect() as conn:
            rows = list(await conn.execute(query))
        return [
            {
                "gate_id": r.gate_id,
                "model": r.model,
                "model_version": r.model_version,
                "at": _iso(r.at),
                "actor": r.actor,
                "via": r.via,
                "action": r.action,
                "outcome": r.outcome,
                "reason": r.reason,
            }
            for r in rows
        ]

    return api


async def _events(conn: AsyncConnection, model: str, kind: type[events.Payload]) -> list[dict[str, Any]]:
    return [e for _, e in await outbox.journal(conn, model=model, event_type=kind.type, limit=_CHAIN_SCAN)]


_ORIGIN_KINDS = (events.DataArrived, events.DataValidated, events.PipelinePublished, events.TrainingStarted)


async def _journal(conn: AsyncConnection, model: str, *kinds: type[events.Payload]) -> list[dict[str, Any]]:
    """The newest journaled events of each kind, oldest first, as `lineage` reads a journal."""
    rows = [
        row
        for kind in kinds
        for row in await outbox.journal(conn, model=model, event_type=kind.type, limit=_CHAIN_SCAN)
    ]
    return [event for _, event in sorted(rows, key=lambda row: row[0])]


def _first(found: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The newest journaled event whose data has every `match` value."""
    for event in found:
        if all(event["data"].get(k) == v for k, v in match.items() if v not in (None, "")):
            return event
    return None


def _at_or_after(event: dict[str, Any], moment: datetime) -> bool:
    if not event["time"]:
        return False
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return datetime.fromisoformat(event["time"]) >= aware


def _node(
    kind: str, label: str, state: str, time: str | None, detail: str = "", link: str | None = None
) -> dict[str, Any]:
    return {"kind": kind, "label": label, "state": state, "time": time, "detail": detail, "link": link}


async def _chain(
    conn: AsyncConnection, model: str, version: str | None, project: str | None, links: Links
) -> dict[str, Any]:
    trained = await _events(conn, model, events.TrainingSucceeded)
    history = await rollouts.history(conn, model, MAX_ROLLOUTS)
    model_gates = await gates.listing(conn, model=model)
    if version is None:
        newest = [(e["time"] or "", e["data"]["model_version"]) for e in trained[:1]]
        newest += [(r.created_at.isoformat(), r.version) for r in history[:1]]
        newest += [(g.created_at.isoformat(), g.model_version) for g in model_gates[:1]]
        if not newest:
            return {"model": model, "version": None, "nodes": []}
        version = max(newest)[1]
    run = _first(trained, model_version=version)
    data_uri = run["data"]["data_uri"] if run else None
    nodes = [*await _upstream(conn, model, run, data_uri, project, links)]
    nodes.append(
        _node(
            "model_version",
            f"model version {version}",
            "registered",
            run["time"] if run else None,
            ", ".join(f"{k} {v:.4g}" for k, v in sorted((run["data"]["metrics"] if run else {}).items())),
            links.model_version(model, version),
        )
    )
    gate = next((g for g in model_gates if g.model_version == version), None)
    approved = _first(await _events(conn, model, events.PromotionApproved), model_version=version)
    rejected = _first(await _events(conn, model, events.PromotionRejected), model_version=version)
    if gate is not None:
        by = f" by {gate.decided_by}" if gate.decided_by else ""
        nodes.append(
            _node(
                "gate",
                f"gate {gate.id}",
                gate.state,
                _iso(gate.decided_at or gate.created_at),
                f"{gate.state}{by}" + (f": {gate.reason}" if gate.reason else ""),
                _web(gate.merge_request_url)
                and gate.merge_request_url,  # the merge request it was announced in
            )
        )
    elif rejected is not None:
        nodes.append(_node("gate", "gate", "rejected", rejected["time"], rejected["data"]["reason"]))
    elif approved is not None:
        who = ", ".join(approved["data"].get("approved_by") or []) or "policy (no approval needed)"
        nodes.append(_node("gate", "gate", "approved", approved["time"], f"approved by {who}"))
    else:
        nodes.append(_node("gate", "gate", "not reached", None))
    rollout = next((r for r in history if r.version == version), None)
    nodes.extend(await _steps(conn, model, rollout))
    return {"model": model, "version": version, "nodes": nodes}


async def _upstream(
    conn: AsyncConnection,
    model: str,
    run: dict[str, Any] | None,
    data_uri: str | None,
    project: str | None,
    links: Links,
) -> list[dict[str, Any]]:
    """Data batch, validation, pipeline version and training run of a trained version."""
    if run is None:
        return [
            _node("training_run", "training run", "not recorded", None, "the version was not trained by mlcd")
        ]
    data = run["data"]
    # the links `mlcd lineage` finds: the upload the run was pinned to, the pipeline its start names
    came_from = lineage.origin(await _journal(conn, model, *_ORIGIN_KINDS), run)
    arrived, validated, published = came_from.arrived, came_from.validated, came_from.published
    started = came_from.started
    commit = data.get("commit") or (published["data"]["commit"] if published else "")
    return [
        _node(
            "data_batch",
            data_uri or "data batch",
            "arrived" if arrived else "not recorded",
            arrived["time"] if arrived else None,
            f"{arrived['data']['size']} bytes" if arrived else "",
            links.object(data_uri),
        ),
        _node(
            "validation",
            f"validation {validated['data']['suite']}" if validated else "validation",
            "passed" if validated else "not recorded",
            validated["time"] if validated else None,
            f"{validated['data']['rows']} rows" if validated else "",
        ),
        _node(
            "pipeline_version",
            f"pipeline {published['data']['pipeline']} {published['data']['version']}"
            if published
            else f"pipeline version {data.get('pipeline_version') or '—'}",
            "published" if published else "not recorded",
            published["time"] if published else None,
            f"commit {commit[:12]}" if commit else "",
            links.commit(project, commit),
        ),
        _node(
            "training_run",
            f"training run {data['run_id']}",
            "succeeded",
            run["time"],
            f"started {started['time']}" if started else "",
            links.run(data["run_id"]),
        ),
    ]


async def _steps(conn: AsyncConnection, model: str, rollout: rollouts.Rollout | None) -> list[dict[str, Any]]:
    if rollout is None:
        return [_node("rollout_step", "rollout", "not started", None)]
    completed = [
        e
        for e in await _events(conn, model, events.RolloutStepCompleted)
        if e["data"]["model_version"] == rollout.version and _at_or_after(e, rollout.created_at)
    ]
    nodes = []
    for index, percent in enumerate(rollout.steps):
        done = _first(completed, traffic_percent=percent)
        current = index == rollout.step_index
        if done is not None:
            state = "done"
        elif rollout.state == rollouts.SUCCEEDED:
            state = "promoted past"  # on-call promoted before this step's analysis
        elif current and rollout.state in (*rollouts.ACTIVE, rollouts.ROLLED_BACK, rollouts.FAILED):
            state = rollout.state
        else:
            state = "pending" if rollout.state in rollouts.ACTIVE else "not reached"
        detail = rollout.reason if state in (rollouts.ROLLED_BACK, rollouts.FAILED, rollouts.PAUSED) else ""
        time = done["time"] if done else (_iso(rollout.updated_at) if current else None)
        nodes.append(_node("rollout_step", f"{percent}% to version {rollout.version}", state, time, detail))
    if rollout.state == rollouts.SUCCEEDED:
        # A version rolled back after its rollout succeeded (on-call, a drift alert): the rollout row keeps
        # "succeeded"; the journal says it was taken off.
        later = [
            e
            for e in await _events(conn, model, events.RolledBack)
            if e["data"].get("from_version") == rollout.version and _at_or_after(e, rollout.updated_at)
        ]
        if later:
            back = later[0]["data"]
            nodes.append(
                _node(
                    "rollback",
                    f"rolled back to version {back.get('to_version') or '—'}",
                    "rolled_back",
                    later[0]["time"],
                    back.get("reason", ""),
                )
            )
    return nodes
