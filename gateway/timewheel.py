"""Many far-off wake-ups on one event-loop timer (a timing wheel).

Tens of thousands of held Pings each wait for a moment minutes away (their next
look, the end of their heartbeat). A loop timer apiece costs about 600 bytes
(handle, arguments, context); here a waiting object costs one entry in the
bucket of its tick. Wake-ups are rounded up to the next tick (never early);
cancelling takes the entry out at once, so nothing keeps a finished waiter.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import Protocol


class Sleeper(Protocol):
    """What the wheel wakes: ``due`` is the tick it waits for (None: not waiting)."""

    due: int | None

    def wake(self) -> None: ...


class TimeWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        self.loop = loop
        self.tick = tick
        self._buckets: dict[int, dict[Sleeper, None]] = {}  # an insertion-ordered set per tick
        self._ticks: list[int] = []  # heap of the ticks that have a bucket
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick: int | None = None

    def at(self, sleeper: Sleeper, when: float) -> None:
        """Wake ``sleeper`` at ``when`` (time.monotonic seconds) or up to one tick later; replaces its
        earlier wake-up, if any."""
        self.cancel(sleeper)
        tick = max(math.ceil(when / self.tick), self._now_tick() + 1)
        sleeper.due = tick
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
        bucket[sleeper] = None
        if self._timer_tick is None or tick < self._timer_tick:
            self._arm(tick)

    def cancel(self, sleeper: Sleeper) -> None:
        """``sleeper`` is not woken (a no-op when it is not waiting)."""
        tick, sleeper.due = sleeper.due, None
        if tick is not None and (bucket := self._buckets.get(tick)) is not None:
            bucket.pop(sleeper, None)
            if not bucket:
                del self._buckets[tick]  # its tick stays in the heap and is skipped when it comes up

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def _now_tick(self) -> int:
        return math.floor(time.monotonic() / self.tick)

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self.loop.call_later(max(0.0, tick * self.tick - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_tick = None
        now = self._now_tick()
        while self._ticks and self._ticks[0] <= now:
            tick = heapq.heappop(self._ticks)
            for sleeper in self._buckets.pop(tick, {}):
                if sleeper.due == tick:
                    sleeper.due = None
                    try:
                        sleeper.wake()
                    except Exception as exc:  # noqa: BLE001 - one sleeper's failure must not stop the others
                        self.loop.call_exception_handler({"message": "time wheel wake-up failed",
                                                          "exception": exc})
        if self._ticks:
            self._arm(self._ticks[0])


_wheels: dict[asyncio.AbstractEventLoop, TimeWheel] = {}


def wheel() -> TimeWheel:
    """The running loop's wheel."""
    loop = asyncio.get_running_loop()
    found = _wheels.get(loop)
    if found is None:
        for old in [other for other in _wheels if other.is_closed()]:
            del _wheels[old]
        found = _wheels[loop] = TimeWheel(loop)
    return found
