"""The time wheel that wakes held Pings: never early, in order, cancel and re-arm, one failure spares the rest."""

from __future__ import annotations

import asyncio
import time

from gateway.timewheel import TimeWheel, wheel


class Sleeper:
    __slots__ = ("due", "name", "woken", "boom")

    def __init__(self, name: str, woken: list, boom: bool = False) -> None:
        self.due, self.name, self.woken, self.boom = None, name, woken, boom

    def wake(self) -> None:
        self.woken.append((self.name, time.monotonic()))
        if self.boom:
            raise RuntimeError("boom")


async def test_wake_ups_come_in_order_never_early_and_cancelled_ones_never():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx["message"]))
    w = TimeWheel(loop, tick=0.05)
    woken: list = []
    t0 = time.monotonic()
    late, early, gone, moved, bad = (Sleeper(n, woken, boom=(n == "bad")) for n in
                                     ("late", "early", "gone", "moved", "bad"))
    w.at(late, t0 + 0.4)
    w.at(early, t0 + 0.1)
    w.at(bad, t0 + 0.1)
    w.at(gone, t0 + 0.2)
    w.at(moved, t0 + 0.15)
    w.cancel(gone)
    w.at(moved, t0 + 0.3)  # re-armed: only the later wake-up counts
    assert len(w) == 4 and gone.due is None
    await asyncio.sleep(0.6)
    names = [n for n, _ in woken]
    assert names in (["early", "bad", "moved", "late"], ["bad", "early", "moved", "late"])
    when = dict(woken)
    assert when["early"] >= t0 + 0.1 and when["moved"] >= t0 + 0.3 and when["late"] >= t0 + 0.4
    assert when["late"] < t0 + 0.6
    assert errors == ["time wheel wake-up failed"] and len(w) == 0
    assert all(s.due is None for s in (late, early, gone, moved, bad))


async def test_a_moment_already_past_wakes_on_the_next_tick_and_each_loop_has_its_wheel():
    w = wheel()
    assert wheel() is w
    woken: list = []
    s = Sleeper("past", woken)
    w.at(s, time.monotonic() - 5)
    await asyncio.sleep(0.3)
    assert [n for n, _ in woken] == ["past"]
