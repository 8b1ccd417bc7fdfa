"""`/api/v1/gates`: list, show, approve and reject promotion gates with a bearer token.

A decision applies in the request's own transaction and emits its event there; a refused attempt
(wrong group, the change's author, already decided) is audited and answered 403 or 409.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events, http, logs, ports
from mlcd.bus.runtime import RelayWaker, unit_of_work
from mlcd.errors import MlcdError, NotFound
from mlcd.gatekeeper import gate_decisions
from mlcd.policy import decisions, rules
from mlcd.policy.book import PolicyBook
from mlcd.policy.decisions import Decision
from mlcd.store import gates, outbox, validations

log = logs.get(__name__)

SOURCE = "mlcd/gatekeeper-api"
_STATUS = {"accepted": 200, "repeated": 200, "forbidden": 403, "conflict": 409, "not_found": 404}


class DecisionBody(BaseModel):
    reason: str = Field("", max_length=2000, description="Why; shown in the audit log and the event.")


class RejectionBody(BaseModel):
    reason: str = Field(
        ...,
        min_length=1,
        max_length=2000,
        description="Why (required); shown in the audit log and the event.",
    )

    @field_validator("reason")
    @classmethod
    def _said(cls, reason: str) -> str:
        if not reason.strip():
            raise ValueError("a rejection needs a reason")
        return reason.strip()


def router(
    engine: AsyncEngine,
    waker: RelayWaker | None,
    policies: PolicyBook,
    identify: http.Identify,
    code_host: ports.CodeHost | None = None,
    registry: ports.Registry | None = None,
) -> APIRouter:
    """The gate routes; `identify` maps a bearer token to its identity (None: not a valid token).

    With `code_host`, a final decision is also noted on the commit that triggered the training. With
    `registry`, an approval is refused (409) when the champion changed since the gate opened and the
    candidate fails the rules against the new one.
    """
    caller = http.caller(identify)
    api = APIRouter(prefix="/api/v1/gates", tags=["gates"])

    @api.get("", summary="Gates, newest first", dependencies=[Depends(caller)])
    async def list_gates(
        state: Annotated[
            Literal["open", "approved", "rejected", "expired", "superseded"] | None, Query()
        ] = None,
        model: Annotated[str | None, Query()] = None,
    ) -> Any:
        async with engine.connect() as conn:
            found = await gates.listing(conn, state=state, model=model)
        return [gate.summary() for gate in found]

    @api.get(
        "/{gate_id}", summary="One gate with its rule table and audit log", dependencies=[Depends(caller)]
    )
    async def show_gate(gate_id: str) -> Any:
        async with engine.connect() as conn:
            gate = await gates.get(conn, gate_id)
            entries = await gates.audit_log(conn, gate_id) if gate else []
        if gate is None:
            raise NotFound(f"no gate {gate_id!r}")
        return {**gate.summary(), "rules": gate.rules, "audit": [entry.as_dict() for entry in entries]}

    async def stale_champion(gate_id: str, who: http.Caller) -> str | None:
        """Why the rules no longer hold for the gate's candidate, judged against today's champion.

        Asked only for a caller who may decide the gate: anyone else is refused (403) without the
        registry being asked, so an MLflow outage cannot turn a refusal into a 503."""
        if registry is None:
            return None
        async with engine.connect() as conn:
            gate = await gates.get(conn, gate_id)
        if gate is None or gate.state != "open":
            return None
        policy = policies.get(gate.model)
        if not who.identity.in_any(list(policy.approval.groups) if policy else gate.approver_groups):
            return None
        champion = await registry.version_by_alias(gate.model, "champion")
        now = champion.version if champion else None
        if now == gate.champion_version:
            return None
        candidate = await registry.get_version(gate.model, gate.model_version)
        async with engine.connect() as conn:  # the same training and data the gate was opened with
            training, validation = await _what_the_gate_judged(conn, gate)
        data_uri = str(training.get("data_uri", ""))
        context = rules.Context(
            candidate=rules.version_view(candidate),
            champion=rules.version_view(champion) if champion else None,
            data=rules.data_view(data_uri, validation),
            training=training,
        )
        compiled = policies.compiled(gate.model)
        outcomes = rules.evaluate(compiled.rules_for(champion is not None), context)
        if all(o.passed or o.error for o in outcomes):  # a rule that cannot be re-read is not held against it
            return None
        failing = [o for o in outcomes if not o.passed and not o.error]
        return (
            f"the champion changed from version {gate.champion_version or 'none'} to {now or 'none'} since "
            f"the gate opened, and the candidate fails against it now: {decisions.rejection_reason(failing)}"
        )

    async def decide(gate_id: str, decision: Decision, reason: str, who: http.Caller) -> JSONResponse:
        stale = await stale_champion(gate_id, who) if decision == "approve" else None

        async def authorise(gate: gates.Gate) -> str | None:
            policy = policies.get(gate.model)
            groups = list(policy.approval.groups) if policy else gate.approver_groups
            if decision == "approve" and who.identity.is_author(gate.author):
                # gate.author is the change's GitLab author; the token's gitlab_username says who that is
                return f"{who.identity.actor} is the author of the change and may not approve it"
            if not who.identity.in_any(groups):
                return f"{who.name} is in none of the approver groups {groups} of {gate.model}"
            return stale

        async with unit_of_work(engine, SOURCE, waker) as uow:
            result = await gate_decisions.decide(
                uow,
                gate_id,
                actor=who.identity.actor,
                via=who.via,
                decision=decision,
                reason=reason,
                authorise=authorise,
            )
        if code_host is not None and result.status == "accepted" and result.gate is not None:
            await _note_decision(code_host, result.gate, who.via)
        if stale is not None and result.status == "forbidden" and result.message == stale:
            return _answer(gate_decisions.DecisionResult("conflict", result.gate, stale))
        return _answer(result)

    @api.post("/{gate_id}/approve", summary="Approve a gate (approver groups of the model's policy)")
    async def approve(
        gate_id: str,
        who: Annotated[http.Caller, Depends(caller)],
        body: Annotated[DecisionBody | None, Body()] = None,
    ) -> JSONResponse:
        return await decide(gate_id, "approve", (body.reason if body else "").strip(), who)

    @api.post(
        "/{gate_id}/reject",
        summary="Reject a gate with a reason (approver groups of the model's policy)",
        responses={422: {"description": "No reason given: a rejection needs one"}},
    )
    async def reject(
        gate_id: str,
        who: Annotated[http.Caller, Depends(caller)],
        body: Annotated[RejectionBody | None, Body()] = None,
    ) -> JSONResponse:
        if body is None:
            raise HTTPException(422, 'a rejection needs a reason: send {"reason": "..."}')
        return await decide(gate_id, "reject", body.reason, who)

    return api


def _answer(result: gate_decisions.DecisionResult) -> JSONResponse:
    status = _STATUS[result.status]
    if status == 200:
        assert result.gate is not None
        body = {"status": result.status, "message": result.message, "gate": result.gate.summary()}
    else:
        body = {"error": result.message}
        if result.gate is not None:
            body["state"] = result.gate.state
    return JSONResponse(body, status_code=status)


async def _note_decision(code_host: ports.CodeHost, gate: gates.Gate, via: str) -> None:
    if gate.state == "open" or not (gate.project and gate.commit):
        return
    note = f"mlcd: promotion gate `{gate.id}` ({gate.model} version {gate.model_version}) {gate.state}"
    note += f" by {gate.decided_by} via {via}" + (f": {gate.reason}" if gate.reason else ".")
    try:
        await code_host.post_commit_note(gate.project, gate.commit, f"mlcd gate {gate.id} {gate.state}", note)
    except MlcdError as e:
        log.warning("could not note the decision on the commit", gate_id=gate.id, error=str(e))


async def _what_the_gate_judged(
    conn: AsyncConnection, gate: gates.Gate
) -> tuple[dict[str, Any], events.DataValidated | events.DataRejected | None]:
    """The training result that opened the gate (its cause, from the journal) and its batch's verdict."""
    journal = await outbox.journal(
        conn, model=gate.model, event_type=events.TrainingSucceeded.type, limit=1000
    )
    cause = next((e["data"] for _, e in journal if e["id"] == gate.cause_event_id), None)
    if cause is None:  # past the journal's retention: the rules see what the gate row keeps
        return {"model_version": gate.model_version}, None
    trained = events.TrainingSucceeded.model_validate(cause)
    verdict = (
        await validations.batch_verdict(conn, gate.model, trained.data_uri) if trained.data_uri else None
    )
    return rules.training_view(trained), verdict
