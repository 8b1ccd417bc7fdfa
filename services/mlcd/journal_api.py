"""The event journal and the dead letters over HTTP: list and follow events, list and replay dead letters.

Reading needs any valid API token; replaying dead letters needs the admin group. The CLI's `mlcd events`
and `mlcd dlq` commands call these routes; nothing but `mlcd db` opens the database from the CLI.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import http, logs
from mlcd.bus.runtime import RelayWaker
from mlcd.errors import InvalidRequest
from mlcd.store import dead_letters, notices, outbox
from mlcd.store.tables import outbox as outbox_table

log = logs.get(__name__)

MAX_LIMIT = 1000
MAX_DEAD_LETTERS = 100_000
ADMIN = ["admin"]
POLL_S = 0.5
KEEPALIVE_S = 15.0


class ReplayBody(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        default_factory=list, max_length=10_000, description="Dead letter ids; empty: every one waiting."
    )


class ReplayResult(BaseModel):
    replayed: int
    requested: int | None = Field(description="How many ids were asked for; null: every one waiting.")


def router(
    engine_provider: Callable[[], AsyncEngine],
    identify: http.Identify,
    waker: RelayWaker | None = None,
) -> APIRouter:
    """The journal and dead-letter routes; `identify` maps a bearer token to its identity."""
    caller = http.caller(identify)
    api = APIRouter(prefix="/api/v1")

    @api.get(
        "/events",
        tags=["events"],
        summary="Journaled events, newest first, as structured CloudEvents",
        dependencies=[Depends(caller)],
    )
    async def list_events(
        model: Annotated[str | None, Query(description="Only events about this model")] = None,
        event_type: Annotated[str | None, Query(alias="type", description="Only this event type")] = None,
        limit: Annotated[int, Query(description=f"How many, 1 to {MAX_LIMIT}")] = 100,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        async with engine_provider().connect() as conn:
            rows = await outbox.journal(conn, model=model, event_type=event_type, limit=limit)
        return [event for _, event in rows]

    @api.get(
        "/events/stream",
        tags=["events"],
        summary="Events as they are journaled, as Server-Sent Events (one CloudEvent JSON per `data:`)",
        dependencies=[Depends(caller)],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_events(
        request: Request,
        model: Annotated[str | None, Query(description="Only events about this model")] = None,
        event_type: Annotated[str | None, Query(alias="type", description="Only this event type")] = None,
    ) -> StreamingResponse:
        follower = JournalFollower(model, event_type)
        async with engine_provider().connect() as conn:  # a store that is down answers 503 here
            await follower.start(conn)

        async def feed() -> AsyncIterator[str]:
            yield f": following the journal after event #{follower.cursor}\n\n"
            quiet_s = 0.0
            while not await request.is_disconnected():
                try:
                    async with engine_provider().connect() as conn:
                        fresh = await follower.next(conn)
                except (SQLAlchemyError, OSError) as e:
                    log.warning("journal stream lost the store", error=str(e).splitlines()[0])
                    yield f"event: error\ndata: {json.dumps({'error': http.STORE_DOWN})}\n\n"
                    return
                for event in fresh:
                    yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
                quiet_s = 0.0 if fresh else quiet_s + POLL_S
                if quiet_s >= KEEPALIVE_S:  # proxies close idle streams; a comment keeps it open
                    quiet_s = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_S)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(feed(), media_type="text/event-stream", headers=headers)

    @api.get(
        "/notices",
        tags=["notices"],
        summary="What the notifier told (or is telling) each channel, newest first",
        dependencies=[Depends(caller)],
    )
    async def list_notices(
        model: Annotated[str | None, Query(description="Only notices about this model")] = None,
        limit: Annotated[int, Query(description=f"How many, 1 to {MAX_LIMIT}")] = 100,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        async with engine_provider().connect() as conn:
            found = await notices.listing(conn, model=model, limit=limit)
        return [
            {
                "id": n.id,
                "event_id": n.event_id,
                "model": n.model,
                "kind": n.kind,
                "channel": n.channel,
                "state": n.state,
                "error": n.error,
                "message": n.message,
                "created_at": n.created_at.isoformat(),
                "sent_at": n.sent_at.isoformat() if n.sent_at else None,
            }
            for n in found
        ]

    @api.get(
        "/dead-letters",
        tags=["dead letters"],
        summary="Records a consumer could not handle, newest first",
        dependencies=[Depends(caller)],
    )
    async def list_dead_letters(
        include_replayed: Annotated[
            bool, Query(alias="all", description="Include dead letters already replayed")
        ] = False,
        limit: Annotated[int, Query(description=f"How many, 1 to {MAX_DEAD_LETTERS}")] = 100,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_DEAD_LETTERS:
            raise InvalidRequest(f"limit must be between 1 and {MAX_DEAD_LETTERS}, not {limit}")
        async with engine_provider().connect() as conn:
            letters = await dead_letters.listing(conn, include_replayed=include_replayed, limit=limit)
        return [letter.as_dict() for letter in letters]

    @api.post(
        "/dead-letters/replay",
        tags=["dead letters"],
        summary="Queue dead letters back onto their original topics (admin only)",
    )
    async def replay_dead_letters(
        body: ReplayBody, who: Annotated[http.Caller, Depends(caller)]
    ) -> ReplayResult:
        who.require(ADMIN, "replaying dead letters")
        async with engine_provider().begin() as conn:
            count = await dead_letters.replay(conn, list(body.ids))
        if count and waker is not None:
            waker.wake()
        log.info("dead letters replayed", by=who.name, via=who.via, count=count, ids=body.ids or "all")
        return ReplayResult(replayed=count, requested=len(body.ids) if body.ids else None)

    return api


class JournalFollower:
    """Which journaled events a follower has not seen yet, in seq order, none twice and none skipped.

    Every row up to `cursor` is settled. A row with a lower seq can be sent after a higher one (the
    ingest journals directly what the broker acknowledged), so the cursor stops below the oldest row
    still waiting for the relay, and `printed` remembers what above it was already shown.
    """

    def __init__(self, model: str | None, event_type: str | None) -> None:
        self.model = model
        self.event_type = event_type
        self.cursor = 0
        self.printed: set[int] = set()

    async def start(self, conn: AsyncConnection) -> None:
        """Follow from now: what is journaled already is not shown, what the relay still holds will be."""
        self.cursor = await _oldest_unsettled_seq(conn) - 1
        await self.next(conn)

    async def next(self, conn: AsyncConnection) -> list[dict[str, Any]]:
        highest = max(self.printed, default=self.cursor)
        rows = await self._after(conn, highest)
        if highest > self.cursor:
            earlier = await self._after(conn, self.cursor)
            rows = [row for row in earlier if row[0] <= highest and row[0] not in self.printed] + rows
        self.printed.update(seq for seq, _ in rows)
        oldest_unsent = await conn.scalar(
            select(func.min(outbox_table.c.seq)).where(outbox_table.c.sent_at.is_(None))
        )
        settled = max(self.printed, default=self.cursor)
        if oldest_unsent is not None:
            settled = min(settled, int(oldest_unsent) - 1)
        self.cursor = max(self.cursor, settled)
        self.printed.difference_update({seq for seq in self.printed if seq <= self.cursor})
        return [event for _, event in rows]

    async def _after(self, conn: AsyncConnection, seq: int) -> list[tuple[int, dict[str, Any]]]:
        return await outbox.journal(
            conn,
            model=self.model,
            event_type=self.event_type,
            after_seq=seq,
            ascending=True,
            limit=MAX_LIMIT,
        )


async def _oldest_unsettled_seq(conn: AsyncConnection) -> int:
    """The seq of the oldest row still waiting for the relay, else the one after the newest row."""
    unsent = await conn.scalar(select(func.min(outbox_table.c.seq)).where(outbox_table.c.sent_at.is_(None)))
    if unsent is not None:
        return int(unsent)
    return int(await conn.scalar(select(func.max(outbox_table.c.seq))) or 0) + 1
