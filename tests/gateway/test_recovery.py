"""The maintenance loop (gateway/recovery.py) ends when it is cancelled, whatever its tick does.

On Python 3.11 `asyncio.wait_for` returns normally when the cancellation arrives in the loop
turn in which what it waits for completes; redis-py sends every command through one. A loop
that lost its cancellation that way ran on, and the app's shutdown waited for it forever (a
gateway thread left running after tests/gateway/test_sentinel.py).
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.recovery import next_tick


async def test_a_tick_loop_stops_when_cancelled_as_redis_comes_back() -> None:
    back = asyncio.Event()
    ticks = 0

    async def loop() -> None:
        nonlocal ticks
        while True:
            await next_tick(back, 0.05)
            back.clear()
            ticks += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    back.set()  # Redis answered again ...
    task.cancel()  # ... in the same loop turn as the shutdown's cancel
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert done, f"the loop swallowed its cancellation and ran on ({ticks} ticks)"
    assert task.cancelled()


async def test_a_cancellation_lost_inside_a_tick_ends_the_loop_at_the_next_tick() -> None:
    back = asyncio.Event()
    in_tick = asyncio.Event()

    async def loop() -> None:
        while True:
            await next_tick(back, 0.01)
            in_tick.set()
            # The tick's Redis work, in which a library loses the cancellation (3.11's wait_for).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    await in_tick.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert done and task.cancelled()


async def test_a_tick_ends_early_when_redis_comes_back_and_on_time_otherwise() -> None:
    back = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await next_tick(back, 0.2)
    assert loop.time() - t0 >= 0.19  # a full interval without the event
    loop.call_later(0.01, back.set)
    t0 = loop.time()
    await next_tick(back, 5.0)
    assert loop.time() - t0 < 1.0  # at once when the event is set
