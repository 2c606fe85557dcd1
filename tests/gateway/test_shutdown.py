"""A gateway's shutdown ends its background loops even when one swallows a cancel.

On Python 3.11 `asyncio.wait_for` (inside every redis-py command with a socket timeout) can
return normally when the cancel arrives as the awaited call completes; the loop then carries on.
`gateway.app._stop` cancels again until the task is gone.
"""

from __future__ import annotations

import asyncio

from gateway.app import _stop


def test_stop_ends_a_loop_that_swallowed_the_first_cancel() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what a lost cancel looks like from the loop's side

    async def main() -> tuple[bool, float]:
        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # let it start
        t = asyncio.get_running_loop().time()
        await asyncio.wait_for(_stop(task), timeout=10)
        return task.cancelled(), asyncio.get_running_loop().time() - t

    cancelled, took = asyncio.run(main())
    assert swallowed == 1
    assert cancelled
    assert took < 5


def test_stop_reports_a_loop_that_died_with_an_error(caplog) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        task = asyncio.create_task(broken())
        await asyncio.sleep(0)
        await _stop(task)

    asyncio.run(main())
    assert any("ended with an error" in r.getMessage() for r in caplog.records)
