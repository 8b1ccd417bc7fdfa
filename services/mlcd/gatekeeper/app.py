"""`/api/v1/gates`: list, show, approve and reject promotion gates with a bearer token.

A decision applies in the request's own transaction and emits its event there; a refused attempt
(wrong group, the change's author, already decided) is audited and answered 403 or 409.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import auth, logs, ports
from mlcd.bus.runtime import RelayWaker, unit_of_work
from mlcd.errors import MlcdError
from mlcd.gatekeeper import gate_decisions
from mlcd.policy.book import PolicyBook
from mlcd.policy.decisions import Decision
from mlcd.store import gates

log = logs.get(__name__)

SOURCE = "mlcd/gatekeeper-api"
Identify = Callable[[str | None], auth.Identity | None]
_STATUS = {"accepted": 200, "repeated": 200, "forbidden": 403, "conflict": 409, "not_found": 404}


class DecisionBody(BaseModel):
    reason: str = Field("", max_length=2000, description="Why; shown in the audit log and the event.")


def router(
    engine: AsyncEngine,
    waker: RelayWaker | None,
    policies: PolicyBook,
    identify: Identify,
    code_host: ports.CodeHost | None = None,
) -> APIRouter:
    """The gate routes; `identify` maps a bearer token to its identity (None: not a valid token).

    With `code_host`, a final decision is also noted on the commit that triggered the training.
    """
    api = APIRouter(prefix="/api/v1/gates", tags=["gates"])

    @api.get("", summary="Gates, newest first")
    async def list_gates(
        authorization: Annotated[str | None, Header()] = None,
        state: Annotated[Literal["open", "approved", "rejected", "expired"] | None, Query()] = None,
        model: Annotated[str | None, Query()] = None,
    ) -> Any:
        if identify(auth.bearer(authorization)) is None:
            return _unauthorized(authorization)
        try:
            async with engine.connect() as conn:
                found = await gates.listing(conn, state=state, model=model)
        except SQLAlchemyError as e:
            return _store_down(e)
        return [gate.summary() for gate in found]

    @api.get("/{gate_id}", summary="One gate with its rule table and audit log")
    async def show_gate(gate_id: str, authorization: Annotated[str | None, Header()] = None) -> Any:
        if identify(auth.bearer(authorization)) is None:
            return _unauthorized(authorization)
        try:
            async with engine.connect() as conn:
                gate = await gates.get(conn, gate_id)
                entries = await gates.audit_log(conn, gate_id) if gate else []
        except SQLAlchemyError as e:
            return _store_down(e)
        if gate is None:
            return JSONResponse({"error": f"no gate {gate_id!r}"}, status_code=404)
        return {**gate.summary(), "rules": gate.rules, "audit": [entry.as_dict() for entry in entries]}

    async def decide(
        gate_id: str,
        decision: Decision,
        body: DecisionBody | None,
        authorization: str | None,
        via: str | None,
    ) -> Any:
        identity = identify(auth.bearer(authorization))
        if identity is None:
            return _unauthorized(authorization)
        channel = via if via in {"cli", "api", "ui"} else "api"

        async def authorise(gate: gates.Gate) -> str | None:
            policy = policies.get(gate.model)
            groups = list(policy.approval.groups) if policy else gate.approver_groups
            if identity.in_any(groups):
                return None
            return f"{identity.name} is in none of the approver groups {groups} of {gate.model}"

        try:
            async with unit_of_work(engine, SOURCE, waker) as uow:
                result = await gate_decisions.decide(
                    uow,
                    gate_id,
                    actor=identity.name,
                    via=channel,
                    decision=decision,
                    reason=(body.reason if body else "").strip(),
                    authorise=authorise,
                )
        except SQLAlchemyError as e:
            return _store_down(e)
        if code_host is not None and result.status == "accepted" and result.gate is not None:
            await _note_decision(code_host, result.gate, channel)
        return _answer(result)

    @api.post("/{gate_id}/approve", summary="Approve a gate (approver groups of the model's policy)")
    async def approve(
        gate_id: str,
        body: Annotated[DecisionBody | None, Body()] = None,
        authorization: Annotated[str | None, Header()] = None,
        x_mlcd_via: Annotated[str | None, Header()] = None,
    ) -> Any:
        return await decide(gate_id, "approve", body, authorization, x_mlcd_via)

    @api.post("/{gate_id}/reject", summary="Reject a gate (approver groups of the model's policy)")
    async def reject(
        gate_id: str,
        body: Annotated[DecisionBody | None, Body()] = None,
        authorization: Annotated[str | None, Header()] = None,
        x_mlcd_via: Annotated[str | None, Header()] = None,
    ) -> Any:
        return await decide(gate_id, "reject", body, authorization, x_mlcd_via)

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


def _unauthorized(authorization: str | None) -> JSONResponse:
    problem = (
        "unknown API token"
        if auth.bearer(authorization)
        else "missing API token: send Authorization: Bearer <token>"
    )
    return JSONResponse({"error": problem}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _store_down(error: SQLAlchemyError) -> JSONResponse:
    log.warning("gate store query failed", error=str(error))
    return JSONResponse(
        {"error": "the state store is unavailable"}, status_code=503, headers={"Retry-After": "5"}
    )
