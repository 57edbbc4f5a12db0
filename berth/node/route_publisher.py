"""Route changes from concurrent activities, written to the route table in few writes.

Each write of the table is one reload for Traefik, and a reload costs it ~0.17-0.19 ms of CPU per
route (Traefik 3.7 with the gateway's default certificate, 100-1000 routes, round 10; round 7 saw
~0.5 ms on bare Traefik runs on a slower machine, perhaps without a default certificate, when each
reload also makes an RSA key). Writing each route change at once, a burst of deployments kept
Traefik at a full core and queued reloads for it to work through after the burst. So the worker
writes at most once per GAP_PER_ROUTE_S x (routes in the table): a change that comes when no write
was made within that gap is written at once (one deployment waits for nothing); changes that come
meanwhile wait for the next write and go together. With 10 routes the gap is 15 ms, with 1000 it is
1.5 s: Traefik's reloads take ~12% of a core whatever the rate of changes. A third of that gap (0.5
ms per route) was tried in round 10 on 1000 stand-ins: each deployment's route waited 347 instead of
523 ms (median), Traefik took 20% of a core instead of 9%, and the burst went no faster (10.6 vs
10.5 deployments/s: the 2 cores were the limit): not kept.

A change is awaited until written: an activity that says a route is live (or gone) has made it so
in the file, so a worker that dies afterwards loses nothing.
"""

import asyncio
import time
import weakref
from pathlib import Path

from berth.domain.metric_names import ROUTES
from berth.node import metrics
from berth.node.route_table import Route, RouteTable
from berth.settings import Settings

GAP_PER_ROUTE_S = 0.0015


class RoutePublisher:
    def __init__(self, table: RouteTable):
        self.table = table
        self._pending: dict[str, Route | None] = {}
        self._waiters: list[asyncio.Future] = []
        self._writer: asyncio.Task | None = None
        self._last_write = float("-inf")
        self._gap_s = 0.0

    async def put(self, deployment: str, route: Route) -> None:
        await self._change(deployment, route)

    async def remove(self, deployment: str) -> None:
        await self._change(deployment, None)

    async def _change(self, deployment: str, route: Route | None) -> None:
        self._pending[deployment] = route  # a later change of the same route replaces this one
        done = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        await done

    async def _write_pending(self) -> None:
        while self._pending:
            wait = self._last_write + self._gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            changes, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            try:
                routes = await asyncio.to_thread(self.table.apply, changes)
            except Exception as error:  # each waiter's activity fails with it (and is retried)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            finally:
                self._last_write = time.monotonic()
            self._gap_s = routes * GAP_PER_ROUTE_S
            metrics.record(ROUTES, routes, node=node_id())
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


# per event loop (its writer is a task of that loop), then per routes folder
_publishers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, RoutePublisher]]" = (
    weakref.WeakKeyDictionary()
)


def route_publisher(routes_dir: Path) -> RoutePublisher:
    """This process's publisher for a routes folder (one per folder, so its writes coalesce)."""
    publishers = _publishers.setdefault(asyncio.get_running_loop(), {})
    if routes_dir not in publishers:
        publishers[routes_dir] = RoutePublisher(RouteTable(routes_dir))
    return publishers[routes_dir]


def node_id() -> str:
    return Settings.from_env().node_id
