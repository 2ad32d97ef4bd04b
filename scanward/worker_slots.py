"""A worker's activity slots, one of which an activity can lend back while it waits.

Temporal's task-queue fairness orders the queue, not what a worker already holds: an
activity that sits in a worker slot waiting for something (its tenant's job cap) keeps
that slot from every other tenant. :class:`ActivitySlots` is a fixed number of slots
like the SDK's, except that :meth:`ActivitySlots.lent` gives the caller's slot back for
as long as it waits, so the worker polls (fairly ordered) work in its place, and takes
one back, ahead of new polls, before the caller goes on.

The SDK reserves slots from its event loop (:meth:`reserve_slot`) but releases them from
its own threads (:meth:`release_slot`), hence the lock and ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator

from temporalio.worker import (
    CustomSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
)


class _Waiter:
    """One ``reserve_slot`` (or a lender taking its slot back) waiting for a slot."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.granted = False  # under the lock: a slot is counted as taken for it

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class ActivitySlots(CustomSlotSupplier):
    """``size`` activity slots; an activity waiting in :meth:`lent` does not hold one."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"activity slots must be at least 1, not {size}")
        self.size = size
        self._lock = threading.Lock()
        self._taken = 0  # slots counted as held
        self._lending = 0  # activities inside lent(): only reported
        self._waiting: deque[_Waiter] = deque()

    @property
    def taken(self) -> int:
        """Slots held now (by polls and running activities)."""
        with self._lock:
            return self._taken

    @property
    def lending(self) -> int:
        """Activities that have lent their slot back and wait."""
        with self._lock:
            return self._lending

    # --------------------------------------------------------- the SDK's interface

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        await self._take(front=False)
        return SlotPermit()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        with self._lock:
            if self._waiting or self._taken >= self.size:
                return None
            self._taken += 1
        return SlotPermit()

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        pass

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        self._give_back()

    # --------------------------------------------------------- lending

    @contextlib.asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        """Lend the caller's slot back for the block; on the way out, wait for a slot
        again, ahead of the pollers, so the worker never runs more than ``size``
        activities that are not waiting."""
        with self._lock:
            self._lending += 1
            self._taken -= 1
            self._grant()
        try:
            yield
            await self._take(front=True)
        except BaseException:
            # Leaving at once (an error, a cancel): count the slot as held again without
            # waiting for it; the SDK releases it as the activity ends.
            with self._lock:
                self._taken += 1
            raise
        finally:
            with self._lock:
                self._lending -= 1

    # --------------------------------------------------------- internals

    async def _take(self, *, front: bool) -> None:
        with self._lock:
            if not self._waiting and self._taken < self.size:
                self._taken += 1
                return
            waiter = _Waiter()
            if front:
                self._waiting.appendleft(waiter)
            else:
                self._waiting.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                if waiter.granted:  # granted meanwhile: not ours any more
                    self._taken -= 1
                    self._grant()
                else:
                    self._waiting.remove(waiter)
            raise

    def _give_back(self) -> None:
        with self._lock:
            self._taken -= 1
            self._grant()

    def _grant(self) -> None:
        # Under the lock: hand free slots to waiters in order.
        while self._waiting and self._taken < self.size:
            waiter = self._waiting.popleft()
            waiter.granted = True
            self._taken += 1
            waiter.loop.call_soon_threadsafe(waiter.wake)
