"""The validator: every arrived batch ends validated or rejected, with its result stored beside it.

It validates the bytes that arrived, pinned by the ETag (and version) of the arrival's notification, and
hands the pin on with its verdict, so training reads those bytes too; a batch overwritten before it was
read is rejected. Bad data is a normal outcome (`DataRejected` with the reason and the observed values),
never an error of the service; only an outage of the object store or a validation that overruns raises,
and is retried. A missing or broken suite file is the operator's to fix: it is dead-lettered for a replay.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from mlcd import events, logs
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound, ObjectChanged, PermanentError
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import DataSource
from mlcd.ports import ObjectStore
from mlcd.store.unit_of_work import UnitOfWork
from mlcd.validator import batches, suite

log = logs.get(__name__)


@dataclass(frozen=True)
class _Outcome:
    """What the validation of one batch found; `reason` is set when the batch is rejected."""

    suite: str
    reason: str | None = None
    rows: int = 0
    expectations: list[events.ExpectationResult] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


async def on_data_arrived(
    event: events.Envelope[events.DataArrived],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    objects: ObjectStore,
) -> None:
    arrived = event.data
    policy = policies.get(arrived.model)
    if policy is None or policy.data is None:
        reason = "the model has no data policy"
        uow.emit(events.DataRejected(model=arrived.model, uri=arrived.uri, reason=reason, **_pin(arrived)))
        return
    outcome = await _validate(arrived, policy.data, settings, objects)
    result_uri = await _store_result(arrived, policy.data, outcome, objects)
    if outcome.reason is None:
        uow.emit(
            events.DataValidated(
                model=arrived.model,
                uri=arrived.uri,
                rows=outcome.rows,
                suite=outcome.suite,
                result_uri=result_uri,
                expectations=outcome.expectations,
                author=arrived.author,
                **_pin(arrived),
            )
        )
    else:
        uow.emit(
            events.DataRejected(
                model=arrived.model,
                uri=arrived.uri,
                reason=outcome.reason,
                suite=outcome.suite,
                result_uri=result_uri,
                failed=suite.failures(outcome.expectations),
                **_pin(arrived),
            )
        )
    log.info("batch checked", uri=arrived.uri, rows=outcome.rows, rejected=outcome.reason)


async def _validate(
    arrived: events.DataArrived, data: DataSource, settings: Settings, objects: ObjectStore
) -> _Outcome:
    path = suite.suite_path(settings, data.suite)
    expectations = await asyncio.to_thread(suite.load, path)
    fmt = batches.format_of(arrived.key)
    if fmt is None:
        return _Outcome(expectations.name, f"not a CSV or Parquet file: {arrived.key}")
    if arrived.size > data.max_bytes:
        return _Outcome(expectations.name, _too_large(arrived.size, data.max_bytes))
    try:
        raw = await objects.get(arrived.bucket, arrived.key, data.max_bytes, **_pin(arrived))
    except ObjectChanged as e:
        return _Outcome(
            expectations.name, f"the object changed since it arrived: {e} — upload it again as a new key"
        )
    except NotFound as e:
        return _Outcome(expectations.name, f"the object is gone: {e}")
    except PermanentError as e:
        return _Outcome(expectations.name, f"the object cannot be read: {e}")
    try:
        batch = await asyncio.to_thread(batches.parse, raw, fmt)
    except batches.Unreadable as e:
        return _Outcome(expectations.name, str(e))
    try:
        result = await asyncio.wait_for(
            asyncio.to_thread(suite.run, expectations, batch.frame), settings.validation_timeout_s
        )
    except TimeoutError as e:
        raise AdapterUnavailable(
            f"validating {arrived.uri} took longer than {settings.validation_timeout_s:g}s"
        ) from e
    summary = suite.summarise(result)
    rejected = None if result.get("success") else suite.reason(summary)
    return _Outcome(expectations.name, rejected, len(batch.frame), summary, result)


def _pin(arrived: events.DataArrived) -> dict[str, str]:
    return {"etag": arrived.etag, "version_id": arrived.version_id}


def _too_large(size: int, limit: int) -> str:
    return f"the file is {size} bytes, over the limit of {limit} bytes (policy data.max_bytes)"


async def _store_result(
    arrived: events.DataArrived, data: DataSource, outcome: _Outcome, objects: ObjectStore
) -> str:
    document = dict(outcome.result) or {"success": False, "results": [], "meta": {}}
    document["meta"] = {
        **(document.get("meta") or {}),
        "mlcd": {
            "model": arrived.model,
            "batch": arrived.uri,
            "suite": outcome.suite,
            "rows": outcome.rows,
            "reason": outcome.reason,
        },
    }
    body = json.dumps(suite.plain(document), indent=2, default=str).encode()
    return await objects.put(arrived.bucket, batches.results_key(data, arrived.key), body, "application/json")


SERVICE = ServiceSpec("validator", {events.DataArrived: [on_data_arrived]})
