"""`mlcd explain`: what mlcd will do with one webhook delivery or CloudEvent under today's policies.

Nothing is written, published or called that changes anything: deliveries are parsed as ingest parses
them (without their credentials), decisions are the services' own pure functions, and the only reads
are the registry's champion, the version's flavors, open gates, the debounce window and the validator's
verdict on a batch. Given the serving port, the gatekeeper's `servable` check is run as it runs it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, ports
from mlcd.builder import triggers
from mlcd.errors import InvalidRequest, MlcdError
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.ingest import intake
from mlcd.ingest.delivery import Source, Unparseable
from mlcd.policy import decisions, rules
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Policy
from mlcd.store import gates, validations

SOURCES: tuple[Source, ...] = ("gitlab", "minio", "alertmanager", "mlflow")
CHAMPION = "champion"


@dataclass
class Explanation:
    """The events mlcd would publish in order (`emits`), what each service will do (`steps`), the
    outcomes that depend on work explain does not do (a validation, a compile, a training run), and for
    each candidate the gatekeeper would judge, its judgement as data (`candidates`: model, model_version,
    champion_version, rules as the events carry them, verdict `approve|reject|gate`, and for a gate the
    approval asked: count, groups, timeout, author)."""

    emits: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    possible: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"emits": self.emits, "steps": self.steps, "possible": self.possible,
                "candidates": self.candidates}  # fmt: skip

    def mismatch(self, types: list[str]) -> str | None:
        """Why `types` (the event types a caller expects) is not what mlcd would emit, or None."""
        missing = [t for t in types if t not in self.emits]
        extra = [t for t in self.emits if t not in types]
        if not missing and not extra:
            return None
        parts = ([f"expected but not emitted: {', '.join(missing)}"] if missing else []) + (
            [f"emitted but not expected: {', '.join(extra)}"] if extra else []
        )
        return "; ".join(parts)


@dataclass(frozen=True)
class Delivery:
    source: Source
    headers: dict[str, str]
    body: bytes


def read_input(text: bytes) -> Delivery | events.Envelope[Any]:
    """A structured CloudEvent, a webhook delivery as `{"source"|"path", "headers", "body"}`, or a raw HTTP
    request (`POST /hooks/gitlab`, headers, blank line, body); InvalidRequest when it is none of them."""
    stripped = text.lstrip()
    if stripped[:5].upper() == b"POST ":
        return _raw_http(stripped)
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"not JSON nor an HTTP request: {e}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("expected a JSON object: a CloudEvent or {source, headers, body}")
    if "specversion" in document:
        return _cloudevent(document)
    if "body" in document:
        given = document.get("headers") or {}
        if not isinstance(given, dict):
            raise InvalidRequest("headers must be an object of header names and values")
        headers = {str(k).lower(): str(v) for k, v in given.items()}
        body = document["body"]
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        where = str(document.get("source") or document.get("path") or "")
        return Delivery(_source(where.rsplit("/", 1)[-1], headers, raw), headers, raw)
    raise InvalidRequest("a JSON object with neither specversion (a CloudEvent) nor body (a delivery)")


async def explain(
    given: Delivery | events.Envelope[Any],
    policies: PolicyBook,
    registry: ports.Registry | None,
    engine: AsyncEngine | None,
    serving: ports.Serving | None = None,
) -> Explanation:
    """What mlcd will do with `given`; reads only (registry, gates, debounce), never writes. Without
    `serving` the gatekeeper's `servable` check is not run, and the explanation says so."""
    found = Explanation()
    if isinstance(given, Delivery):
        try:
            envelopes = intake.parse(given.source, given.headers, given.body, policies)
        except Unparseable as e:
            found.steps.append(f"ingest: parks the delivery on the DLQ ({e}); nothing else happens")
            return found
        found.steps.append(f"ingest: {given.source} delivery → {len(envelopes)} event(s)")
    else:
        envelopes = [given]
    for envelope in envelopes:
        found.emits.append(envelope.type)
        await _follow(envelope.data, found, policies, registry, engine, serving)
    return found


async def _follow(
    data: events.Payload,
    found: Explanation,
    policies: PolicyBook,
    registry: ports.Registry | None,
    engine: AsyncEngine | None,
    serving: ports.Serving | None,
) -> None:
    model = getattr(data, "model", None)
    policy = policies.get(model) if model else None
    say = found.steps.append
    if isinstance(data, events.DeliveryIgnored):
        say(f"{data.type}: nothing to do ({data.reason})")
    elif isinstance(data, events.CodePushed):
        chosen = triggers.models_to_publish(data, policies.all())
        if not chosen:
            say(f"builder: the push to {data.ref} changes no model's watched paths; nothing is built")
        for p in chosen:
            say(f"builder: compiles {triggers.pipeline_folder(p)} at {data.after[:12]} and publishes it "
                f"for {p.model}; then the trainer trains {p.model} on its last validated batch")  # fmt: skip
            found.possible += [events.PipelinePublished.type, events.PipelineBuildFailed.type]
    elif isinstance(data, events.MergeRequestChanged):
        chosen = triggers.models_to_check(data, policies.all())
        names = ", ".join(p.model for p in chosen) or "no model"
        at = data.commit[:12]
        if data.changed_paths or data.paths_complete:
            say(f"builder: compiles (without publishing) {names} at {at}; commit status and MR note")
        else:  # a merge-request hook lists no paths: the builder reads the MR's diff from GitLab first
            say(
                f"builder: asks GitLab for merge request !{data.iid}'s diff, then compiles (without "
                f"publishing) those of {names} whose watched paths it changes, at {at}; commit status and "
                "MR note for each"
            )
    elif isinstance(data, events.DataArrived):
        if policy is None or policy.data is None:
            say(f"validator: {data.uri} belongs to no model's landing prefix; nothing happens")
            return
        say(f"validator: checks {data.uri} ({data.size} bytes, limit {policy.data.max_bytes}) against "
            f"{policy.data.suite}; if it passes, the trainer runs {_pipeline(policy)}")  # fmt: skip
        found.possible += [events.DataValidated.type, events.DataRejected.type, events.TrainingStarted.type]
        say(_approval_line(policy))
    elif isinstance(data, events.AlertFired):
        await _alert(data, policy, found, engine)
    elif isinstance(data, events.TrainingSucceeded | events.CandidateRegistered):
        await _judge(data, policy, policies, found, registry, engine, serving)
    elif isinstance(data, events.GateDecisionRequested):
        await _decision(data, found, engine)
    elif isinstance(data, events.PromotionApproved):
        if policy is not None:
            say(f"deployer: {_rollout_plan(policy, data.model_version)}")
            found.possible += [events.RolloutSucceeded.type, events.RolledBack.type]
    elif isinstance(data, events.RetrainRequested):
        say(f"trainer: runs {_pipeline(policy)} on {data.data_uri or 'the last validated batch'}")
        found.possible.append(events.TrainingStarted.type)
    elif isinstance(data, events.RollbackRequested):
        say(f"deployer: sends all traffic of {data.model} to {data.to_version or 'the previous version'}")
        found.emits.append(events.RolledBack.type)
    else:
        say(f"{data.type}: no service acts on it directly")


async def _alert(
    alert: events.AlertFired, policy: Policy | None, found: Explanation, engine: AsyncEngine | None
) -> None:
    if policy is None:
        found.steps.append(f"gatekeeper: {alert.model} has no policy; the alert is logged, nothing done")
        return
    action = policy.monitoring.action_for(alert.severity)
    last = await _last_action(engine, alert.model, action)
    window = policy.monitoring.debounce
    if last is not None and datetime.now(UTC) - last < window:
        found.steps.append(
            f"gatekeeper: {alert.severity} → {action}, but debounced: the last {action} of {alert.model} was "
            f"at {last.isoformat()}, inside the {window} window; nothing happens"
        )
        return
    emitted: dict[str, str] = {
        "retrain": events.RetrainRequested.type,
        "rollback": events.RollbackRequested.type,
        "notify": events.NoticeRaised.type,
    }
    found.steps.append(
        f"gatekeeper: severity {alert.severity} → {action} (debounce {window}, no {action} in it yet)"
    )
    found.emits.append(emitted[action])
    if action == "notify":
        found.steps.append("notifier: tells the model's channels")


async def _judge(
    data: events.TrainingSucceeded | events.CandidateRegistered,
    policy: Policy | None,
    policies: PolicyBook,
    found: Explanation,
    registry: ports.Registry | None,
    engine: AsyncEngine | None,
    serving: ports.Serving | None,
) -> None:
    """The gatekeeper's judgement (gatekeeper.handlers._judge), read-only: the same context, rules, the
    same `servable` check when the serving port is given, and the gates a newly opened one supersedes."""
    if policy is None:
        found.steps.append(f"gatekeeper: {data.model} has no policy; the candidate is dead-lettered")
        return
    if registry is None:
        found.steps.append("gatekeeper: judges the candidate (no registry to read: rules not evaluated)")
        return
    try:
        version = await registry.get_version(data.model, data.model_version)
        champion = await registry.version_by_alias(data.model, CHAMPION)
        flavors = await registry.flavors(version) if serving is not None else {}
    except MlcdError as e:
        found.steps.append(f"gatekeeper: cannot read the registry ({e}); the event would be retried")
        return
    try:
        compiled = policies.compiled(policy.model)
    except MlcdError as e:
        found.steps.append(f"gatekeeper: the policy of {policy.model} does not compile ({e})")
        return
    if isinstance(data, events.TrainingSucceeded):
        training, author = rules.training_view(data), data.author
    else:  # a version registered outside mlcd: no training run of mlcd's, no author
        training, author = {"run_id": data.run_id or "", "model_version": data.model_version}, ""
    data_uri = str(training.get("data_uri") or "")
    validation = None
    if engine is not None and data_uri:
        async with engine.connect() as conn:
            validation = await validations.batch_verdict(conn, data.model, data_uri)
    context = rules.Context(
        candidate=rules.version_view(version),
        champion=rules.version_view(champion) if champion else None,
        data=rules.data_view(data_uri, validation),
        training=training,
    )
    outcomes = rules.evaluate(compiled.rules_for(champion is not None), context)
    if serving is not None:
        outcomes += gatekeeper.servable(serving, version, flavors)
    if data_uri:
        batch = _batch_line(validation, engine is not None)
        found.steps.append(f"gatekeeper: trained on {data_uri}: {batch}")
    against = f"champion version {champion.version}" if champion else "no champion"
    found.steps.append(f"gatekeeper: version {data.model_version} against {against}:")
    for outcome in outcomes:
        seen = ", ".join(f"{k}={v}" for k, v in outcome.values.items())
        found.steps.append(f"  {'pass' if outcome.passed else 'FAIL'}  {outcome.name}: {outcome.expression}"
                           f"  [{seen}]{'  ' + outcome.error if outcome.error else ''}")  # fmt: skip
    needs = policy.approval.required and (
        compiled.approval_when is None or rules.holds(compiled.approval_when, context) is not False
    )
    verdict = decisions.verdict(outcomes, needs)
    judged: dict[str, Any] = {
        "model": data.model,
        "model_version": data.model_version,
        "champion_version": champion.version if champion else None,
        "rules": [o.model_dump(mode="json") for o in outcomes],
        "verdict": "gate" if verdict == "open_gate" else verdict,
        "approval": None,
    }
    found.candidates.append(judged)
    if serving is None and verdict != "reject":
        found.steps.append(
            "gatekeeper: also rejects the version (rule `servable`) if the model's serving platform cannot "
            "download or load it; this explanation was made without the serving platform, so that is not "
            "checked here (the API's explain checks it)"
        )
    if verdict == "reject":
        found.steps.append(f"gatekeeper: rejects it: {decisions.rejection_reason(outcomes)}")
        found.emits.append(events.PromotionRejected.type)
    elif verdict == "approve":
        found.steps.append("gatekeeper: approves it (no approval needed)")
        found.emits.append(events.PromotionApproved.type)
        found.steps.append(f"deployer: {_rollout_plan(policy, data.model_version)}")
    else:
        approval = policy.approval
        judged["approval"] = {"count": approval.count, "groups": list(approval.groups),
                              "timeout_s": approval.timeout.total_seconds(), "author": author}  # fmt: skip
        found.steps.append(f"gatekeeper: opens a gate: {_approval_line(policy, author)}")
        found.emits.append(events.GateOpened.type)
        if engine is not None:
            async with engine.connect() as conn:
                older = await gates.listing(conn, state="open", model=data.model)
            for gate in older:
                found.steps.append(
                    f"  and closes the older open gate {gate.id} (version {gate.model_version}) as superseded"
                )
                found.emits.append(events.PromotionRejected.type)
        found.steps.append(f"deployer, once approved: {_rollout_plan(policy, data.model_version)}")


async def _decision(
    request: events.GateDecisionRequested, found: Explanation, engine: AsyncEngine | None
) -> None:
    state = "unknown"
    if engine is not None:
        async with engine.connect() as conn:
            gate = await gates.get(conn, request.gate_id)
        state = gate.state if gate else "not found"
    found.steps.append(
        f"gatekeeper: {request.decision} of gate {request.gate_id} by GitLab user {request.actor} "
        f"(gate is {state}); allowed for the policy's gitlab_users or the project's Maintainers"
    )
    found.possible += [events.PromotionApproved.type, events.PromotionRejected.type]


def _batch_line(validation: events.DataValidated | events.DataRejected | None, looked: bool) -> str:
    """What the rules' `data` holds besides the URI: the validator's verdict on the batch."""
    if isinstance(validation, events.DataValidated):
        failed = sum(1 for e in validation.expectations if not e.success)
        return (f"validated by suite {validation.suite} ({validation.rows} rows, "
                f"{len(validation.expectations)} expectations, {failed} failed)")  # fmt: skip
    if isinstance(validation, events.DataRejected):
        return f"rejected by the validator ({validation.reason})"
    if not looked:
        return "its validation result is not read without the state store"
    return "no validation result in the journal (rules reading more of data than data.uri fail)"


def _pipeline(policy: Policy | None) -> str:
    if policy is None or policy.training is None:
        return "no pipeline (the policy has no training section)"
    params = ", ".join(f"{k}={v}" for k, v in policy.training.parameters.items())
    return f"pipeline {policy.training.pipeline}" + (f" ({params})" if params else "")


def _approval_line(policy: Policy, author: str = "") -> str:
    approval = policy.approval
    if not approval.required:
        return "promotion needs no approval once the rules pass"
    when = f" when {approval.when}" if approval.when else ""
    who = f"{author} (the change's author)" if author else "the change's author"
    return (f"promotion needs {approval.count} approval(s){when} from {', '.join(approval.groups)} "
            f"within {approval.timeout}; {who} cannot approve")  # fmt: skip


def _rollout_plan(policy: Policy, version: str) -> str:
    steps = " → ".join(f"{s}%" for s in policy.rollout.steps)
    return (
        f"rolls version {version} out {steps}, {policy.rollout.interval} between steps, checks between each"
    )


async def _last_action(engine: AsyncEngine | None, model: str, action: str) -> datetime | None:
    if engine is None:
        return None
    table = gates.monitoring_debounce
    async with engine.connect() as conn:
        last = await conn.scalar(
            select(table.c.last_at).where(table.c.model == model, table.c.action == action)
        )
    if not isinstance(last, datetime):
        return None
    return last if last.tzinfo else last.replace(tzinfo=UTC)


def _cloudevent(document: dict[str, Any]) -> events.Envelope[Any]:
    kind = events.PAYLOAD_TYPES.get(str(document.get("type")))
    if kind is None:
        raise InvalidRequest(f"unknown event type {document.get('type')!r}")
    try:
        data = kind.model_validate(document.get("data") or {})
        return events.new_event(
            data,
            source=str(document.get("source") or "mlcd/explain"),
            id=str(document.get("id") or "explain"),
            subject=document.get("subject"),
        )
    except ValueError as e:
        raise InvalidRequest(f"the CloudEvent's data is not a {document.get('type')}: {e}") from None


def _raw_http(text: bytes) -> Delivery:
    head, _, body = text.replace(b"\r\n", b"\n").partition(b"\n\n")
    request_line, *header_lines = head.decode("utf-8", "replace").split("\n")
    path = request_line.split()[1] if len(request_line.split()) > 1 else ""
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Delivery(_source(path.rsplit("/", 1)[-1], headers, body), headers, body)


def _source(named: str, headers: Mapping[str, str], body: bytes) -> Source:
    for source in SOURCES:
        if named == source:
            return source
    if "x-gitlab-event" in headers:
        return "gitlab"
    if "x-mlflow-signature" in headers or "x-mlflow-delivery-id" in headers:
        return "mlflow"
    if b'"EventName"' in body or b'"Records"' in body:
        return "minio"
    if b'"alerts"' in body:
        return "alertmanager"
    raise InvalidRequest(
        "cannot tell the delivery's source: give source (gitlab, minio, alertmanager, mlflow)"
    )
