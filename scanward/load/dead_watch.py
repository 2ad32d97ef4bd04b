"""Scans that went dead when their kind says they should not have.

A scan whose scanner keeps dying waits for an operator's ``retry`` or ``abandon``: its
workflow stays open, so waiting for its result waits for ever. The load tool steers the
scans it *meant* to go dead (kind ``dead``); any other scan that goes dead (a crashing
scanner, a scanner the workers do not have ...) must end the wait as a failure.

:class:`DeadWatch` finds them with ONE visibility query per interval for the whole run
(``TaskQueue = <queue> AND ScanStatus = "dead" AND ExecutionStatus = "Running"``),
not with a progress query per scan: a query is a workflow task on the very worker the
load measures. Each scan being waited on registers with :meth:`DeadWatch.watch` and
gets a future that resolves when the scan shows up dead.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from temporalio.client import Client
from temporalio.service import RPCError

from scanward.client import status_query
from scanward.contract import ScanStatus

log = logging.getLogger("scanward.load")


def dead_query(task_queue: str) -> str:
    """Running scans of ``task_queue`` that wait for an operator (a dead scanner): the
    CLI's ``list --status dead`` query, on one task queue."""
    return f'{status_query(ScanStatus.DEAD)} AND TaskQueue = "{task_queue}"'


class DeadWatch:
    """``async with DeadWatch(client, queue) as watch``: while scans are registered
    (:meth:`watch`), list the queue's dead scans every ``interval`` seconds and resolve
    the future of each registered one found."""

    def __init__(self, client: Client, task_queue: str, interval: float = 2.0) -> None:
        self.client = client
        self.query = dead_query(task_queue)
        self.interval = interval
        self.polls = 0  # visibility queries made (the tests check it is one per round)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, scan_id: str) -> asyncio.Future[None]:
        """A future that resolves when ``scan_id`` is seen dead; :meth:`forget` it when
        the wait is over."""
        future = self._waiting.get(scan_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiting[scan_id] = future
        return future

    def forget(self, scan_id: str) -> None:
        future = self._waiting.pop(scan_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def poll(self) -> set[str]:
        """One visibility query; resolves the futures of the registered scans it lists
        and returns their ids."""
        self.polls += 1
        found: set[str] = set()
        async for wf in self.client.list_workflows(self.query):
            future = self._waiting.get(wf.id)
            if future is not None and not future.done():
                future.set_result(None)
                found.add(wf.id)
        return found

    async def _run(self) -> None:
        while True:
            if any(not f.done() for f in self._waiting.values()):
                try:
                    await self.poll()
                except RPCError as e:  # visibility hiccup: the next round tries again
                    log.debug("dead-scan query failed: %s", e)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> DeadWatch:
        self._task = asyncio.create_task(self._run(), name="scanward-load-dead-watch")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # its CancelledError stays in it; ours propagates
        for scan_id in list(self._waiting):
            self.forget(scan_id)
