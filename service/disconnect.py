"""Stop work nobody will read: cancel a request's pending work when its client disconnects.

After the body is read, the ASGI `receive` channel only ever delivers `http.disconnect` (the client
went away, or the response is complete), so one waiting task tells us when to give up. Work that
is still queued is abandoned; work already on a worker finishes there (see InferencePool.run).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from service.errors import ClientClosedRequest

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientClosedRequest (499)."""
    # The work's task is created first, so it takes its first step (and from then on owns its
    # clean-up) before the watcher can have seen anything.
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # let it give its place in line back
    raise ClientClosedRequest("the client disconnected before its result was ready")
