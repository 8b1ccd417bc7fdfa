"""The deployer's HTTP API: a model's serving status, and the on-call's manual rollback and retrain.

A request that cannot be carried out is refused here, with the reason, instead of dying on the DLQ:
an unknown model (404), a version the registry does not hold (404) or cannot serve (422), nothing
earlier to roll back to (409), a retrain without data to train on (409).
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, http, logs, tracing
from mlcd.bus import runtime
from mlcd.errors import Conflict, MlcdError, NotFound
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Policy
from mlcd.ports import Registry, Serving, ServingState
from mlcd.store import outbox, rollouts, training
from mlcd.store.unit_of_work import Transaction

log = logs.get(__name__)

SOURCE = "mlcd/deployer-api"
ONCALL = ["oncall"]
CHAMPION = "champion"
EVENTS_SHOWN = 20


class RollbackBody(BaseModel):
    # Bounded like a gate decision's reason; a bounded str is also checked to be text (a lone surrogate
    # escape such as \ud800 is refused with 422 instead of failing to encode the event: a 500).
    to_version: str | None = Field(
        None, max_length=200, description="Version to serve; default: the one before the current."
    )
    reason: str | None = Field(None, max_length=2000, description="Why, for the journal.")


class RetrainBody(BaseModel):
    reason: str = Field(..., min_length=1, max_length=2000, description="Why (required), for the journal.")
    data_uri: str | None = Field(
        None, max_length=2000, description="Batch to train on (s3://bucket/key); default: the last validated."
    )

    @field_validator("reason")
    @classmethod
    def _said(cls, reason: str) -> str:
        if not reason.strip():
            raise ValueError("a retrain needs a reason")
        return reason.strip()

    @field_validator("data_uri")
    @classmethod
    def _a_uri(cls, uri: str | None) -> str | None:
        if uri is not None and "://" not in uri:
            raise ValueError("a data URI names its store, e.g. s3://landing/wine_quality/batch.csv")
        return uri


def router(
    engine: AsyncEngine | Callable[[], AsyncEngine],
    waker: runtime.RelayWaker | None,
    registry: Registry,
    identify: http.Identify,
    policies: PolicyBook,
    serving: Serving | None = None,
) -> APIRouter:
    """GET /api/v1/models[/{model}] for any valid token; POST …/rollback, …/retrain and
    …/rollout/{promote|abort|pause|resume|retry} for on-call only.

    With `serving`, a model's status also shows what the platform reports serving (the observed split).
    """
    caller = http.caller(identify)

    def store() -> AsyncEngine:
        return engine if isinstance(engine, AsyncEngine) else engine()

    def policy_of(model: str, action: str) -> Policy:
        policy = policies.get(model)
        if policy is None:
            raise HTTPException(404, f"mlcd has no policy for a model named {model!r}; nothing to {action}")
        return policy

    def on_call(who: http.Caller) -> None:
        if not who.identity.in_any(ONCALL):
            raise HTTPException(403, f"{who.name} is not on call: this needs the oncall group")

    api = APIRouter(prefix="/api/v1/models", tags=["serving"])

    @api.get("", summary="Models with rollouts, each with its latest rollout")
    async def list_models(_: Annotated[http.Caller, Depends(caller)]) -> list[dict[str, Any]]:
        async with store().connect() as conn:
            latest = [await rollouts.latest(conn, model) for model in await rollouts.models(conn)]
        return [r.as_dict() for r in latest if r is not None]

    @api.get("/{model}", summary="Champion, candidate, the rollout and its step, the model's last events")
    async def status(model: str, _: Annotated[http.Caller, Depends(caller)]) -> dict[str, Any]:
        async with store().connect() as conn:
            current = await rollouts.running(conn, model)
            history = await rollouts.history(conn, model)
            waiting = await rollouts.waiting(conn, model)
            journal = await outbox.journal(conn, model=model, limit=EVENTS_SHOWN)
        try:
            champion = await registry.version_by_alias(model, CHAMPION)
            champion_version: str | None = champion.version if champion else None
            registry_problem = None
        except MlcdError as e:
            champion_version, registry_problem = None, str(e)
        observed, serving_problem = None, None
        if serving is not None:
            try:
                observed = _observed(await serving.state(model))
            except MlcdError as e:
                serving_problem = str(e)
        return {
            "serving": observed,
            "serving_problem": serving_problem,
            "model": model,
            "champion": champion_version,
            "candidate": current.version if current else (waiting.version if waiting else None),
            "rollout": current.as_dict() if current else None,
            "waiting": {"version": waiting.version, "since": waiting.received_at.isoformat()}
            if waiting
            else None,
            "last_rollout": history[0].as_dict() if history else None,
            "events": [event for _, event in journal],
            "registry_problem": registry_problem,
        }

    @api.post(
        "/{model}/rollback",
        status_code=202,
        summary="Send all traffic back (on-call only)",
        responses={
            404: {"description": "No such model, or the registry holds no such version"},
            409: {"description": "No earlier version is known to roll back to"},
            422: {"description": "The version cannot be served (no model artifact)"},
        },
    )
    async def rollback(
        model: str, body: RollbackBody, who: Annotated[http.Caller, Depends(caller)]
    ) -> dict[str, Any]:
        on_call(who)
        policy_of(model, "roll back")
        if body.to_version is not None:
            await _servable(registry, model, body.to_version)
        else:
            async with store().connect() as conn:
                await _something_to_roll_back_to(conn, model)
        request = events.RollbackRequested(
            model=model,
            reason=body.reason or f"manual rollback by {who.name}",
            requested_by=who.name,
            to_version=body.to_version,
        )
        async with runtime.unit_of_work(store(), SOURCE, waker) as uow:
            event_id = uow.emit(request)
        log.info("rollback requested", model=model, by=who.name, via=who.via, to_version=body.to_version)
        return {"event_id": event_id, "model": model, "to_version": body.to_version, "reason": request.reason}

    @api.post(
        "/{model}/retrain",
        status_code=202,
        summary="Train the model again, on the last validated batch or on the one named (on-call only)",
        responses={
            404: {"description": "No such model"},
            409: {"description": "No batch was validated yet and none was named"},
            422: {"description": "No reason given, or the model has no training section"},
        },
    )
    async def retrain(
        model: str, body: RetrainBody, who: Annotated[http.Caller, Depends(caller)]
    ) -> dict[str, Any]:
        on_call(who)
        policy = policy_of(model, "retrain")
        if policy.training is None:
            raise HTTPException(422, f"the policy of {model} has no training section: nothing to retrain")
        async with store().connect() as conn:
            data_uri = body.data_uri or await training.last_data_uri(conn, model)
        if data_uri is None:
            raise Conflict(
                f"no data batch of {model} was validated yet: name one with --data s3://bucket/key"
            )
        reason = f"{body.reason} (requested by {who.name})"
        async with runtime.unit_of_work(store(), SOURCE, waker) as uow:
            event_id = uow.emit(
                events.RetrainRequested(
                    model=model, reason=reason, data_uri=data_uri, requested_by=who.identity.actor
                )
            )
        log.info("retrain requested", model=model, by=who.name, via=who.via, data_uri=data_uri)
        return {"event_id": event_id, "model": model, "data_uri": data_uri, "reason": reason}

    @api.post(
        "/{model}/rollout/{action}",
        status_code=202,
        summary="On-call control of the model's rollout, like kubectl argo rollouts (on-call only)",
        responses={
            404: {"description": "No such model"},
            409: {"description": "The rollout is not in a state that allows this"},
        },
    )
    async def control(
        model: str, action: Action, who: Annotated[http.Caller, Depends(caller)]
    ) -> dict[str, Any]:
        on_call(who)
        policy_of(model, action)
        async with runtime.unit_of_work(store(), SOURCE, waker) as tx:
            current = await rollouts.running(tx.connection, model)
            last = await rollouts.latest(tx.connection, model)
            target = (
                _retryable(model, current, last)
                if action == "retry"
                else _controllable(model, action, current)
            )
            with tracing.following(target.correlation_id):  # told in the rollout's chain, a retry too
                event_id = await _control(tx, target, action, who.name)
        log.info("rollout control", model=model, action=action, by=who.name, version=target.version)
        return {"model": model, "action": action, "version": target.version, "event_id": event_id}

    return api


Action = Literal["promote", "abort", "pause", "resume", "retry"]


async def _control(tx: Transaction, target: rollouts.Rollout, action: str, who: str) -> str | None:
    """Retry approves the version again; pause and resume take effect here and are told at once; promote
    and abort are the next tick's work, told by the events it emits (steps completed, rolled back)."""
    if action == "retry":
        return tx.emit(
            events.PromotionApproved(model=target.model, model_version=target.version, approved_by=[who])
        )
    if action == "pause":
        reason = f"paused by {who}"
        await rollouts.pause(tx.connection, target, reason)
        return tx.emit(
            events.RolloutPaused(
                model=target.model,
                model_version=target.version,
                traffic_percent=target.traffic_percent,
                reason=reason,
            )
        )
    await rollouts.request(tx.connection, target, action, datetime.now(UTC))
    if action != "resume":
        return None
    return tx.emit(
        events.RolloutResumed(
            model=target.model,
            model_version=target.version,
            traffic_percent=target.traffic_percent,
            resumed_by=who,
        )
    )


def _controllable(model: str, action: str, current: rollouts.Rollout | None) -> rollouts.Rollout:
    if current is None:
        raise Conflict(f"{model} has no rollout in progress to {action}")
    if action == "resume" and current.state != rollouts.PAUSED:
        raise Conflict(f"the rollout of {model} version {current.version} is not paused")
    if action == "pause" and current.state == rollouts.PAUSED:
        raise Conflict(f"the rollout of {model} version {current.version} is paused already")
    return current


def _retryable(
    model: str, current: rollouts.Rollout | None, last: rollouts.Rollout | None
) -> rollouts.Rollout:
    if current is not None:
        raise Conflict(f"{model} has a rollout in progress (version {current.version}); abort it first")
    if last is None or last.state not in (rollouts.ROLLED_BACK, rollouts.FAILED, rollouts.SUPERSEDED):
        shown = f"its last rollout {last.state}" if last else "it has no rollout"
        raise Conflict(f"nothing of {model} to retry: {shown}")
    return last


def _observed(state: ServingState) -> dict[str, Any]:
    """What the serving platform reports, beside what mlcd asked for."""
    return {
        "stable_version": state.stable_version,
        "canary_version": state.canary_version,
        "canary_percent_wanted": state.canary_percent,
        "canary_percent_observed": state.serving_percent,
        "traffic": state.traffic,
        "ready": state.ready,
        "message": state.message,
    }


async def _servable(registry: Registry, model: str, version: str) -> None:
    """NotFound when the registry does not hold the version, 422 when it holds no artifact to serve."""
    try:
        found = await registry.get_version(model, version)
    except NotFound:
        raise NotFound(f"the registry holds no version {version!r} of {model}") from None
    if not found.serving_uri:
        raise HTTPException(422, f"version {version} of {model} has no model artifact to serve")


async def _something_to_roll_back_to(conn: Any, model: str) -> None:
    if await rollouts.running(conn, model) is not None:
        return
    last = await rollouts.last_succeeded(conn, model)
    if last is None or not last.previous_version:
        shown = f"version {last.version}" if last else "what serves now"
        raise Conflict(f"no version of {model} earlier than {shown} is known: name one with --to-version")
