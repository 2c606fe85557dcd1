"""The hot-path script connection against a real redis-server: calls end, and WAIT covers its command.

Two faults found by looping tests/gateway/test_sentinel.py (see gateway/scriptconn.py):

- a call that waited for a connection being made, which was then lost before the call resumed,
  was queued on the dead connection and waited forever (nothing reads or times out a lost
  connection): its HTTP request was never answered and its server thread never exited;
- the durable settle's `WAIT` was written before the settle it was meant to cover.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.ratelimit import _fields
from gateway.scriptconn import CommandNotRun, NotReplicated, Script, ScriptConnection, may_have_run

TIMEOUT_S = 0.5


def _conn(url: str, **kw: Any) -> ScriptConnection:
    return ScriptConnection(url, connect_timeout_s=TIMEOUT_S, command_timeout_s=TIMEOUT_S, **kw)


async def test_calls_waiting_for_a_connection_lost_at_once_fail_fast(redis_url: str) -> None:
    """The connection is lost after it was made but before the calls that waited for it resume
    (as when Sentinel or a network drop closes a fresh connection): every call must end within
    the command bound (2 x timeout) with an error that says the command did not run."""
    conn = _conn(redis_url)
    first = asyncio.ensure_future(conn.execute("PING"))
    while conn._connecting is None:  # the first call is connecting; the others will wait for it
        await asyncio.sleep(0)

    def close_it(fut: asyncio.Future[Any]) -> None:
        # Registered before the waiters' own callbacks: the transport's connection_lost runs
        # before they resume, which is the ordering that used to strand them.
        if not fut.cancelled() and fut.exception() is None:
            transport = fut.result().transport
            assert transport is not None
            transport.close()

    conn._connecting.add_done_callback(close_it)
    waiters = [asyncio.ensure_future(conn.execute("PING")) for _ in range(8)]
    _, pending = await asyncio.wait([first, *waiters], timeout=2 * TIMEOUT_S + 1.0)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of 9 calls never ended"
    errors = [t.exception() for t in waiters]
    assert all(isinstance(e, CommandNotRun) for e in errors), errors
    assert not any(may_have_run(e) for e in errors if e is not None)
    assert isinstance(first.exception(), RedisConnectionError)  # it was written: outcome unknown
    assert may_have_run(first.exception())  # type: ignore[arg-type]
    # The next call reconnects and works.
    assert await conn.execute("PING") == b"PONG"
    await conn.close()


async def test_a_call_on_a_dead_server_fails_as_not_run(redis_url: str) -> None:
    conn = _conn("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(CommandNotRun) as info:
        await conn.execute("PING")
    assert not may_have_run(info.value)


async def test_durable_wait_follows_the_command_it_covers(redis_url: str) -> None:
    """WAIT counts the replicas that have every earlier write of its connection, so it must be
    written after the settle; MONITOR shows the order Redis received them in."""
    client = redis.Redis.from_url(redis_url)
    conn = _conn(redis_url, wait_replicas=1, wait_timeout_ms=10)
    with client.monitor() as monitor:
        with pytest.raises(NotReplicated):  # this Redis has no replica: 0 of 1 acknowledged
            await conn.execute_replicated("SET", "scriptconn:k", "v")
        seen = [monitor.next_command()["command"] for _ in range(2)]
    await conn.close()
    client.close()
    assert seen == ["SET scriptconn:k v", "WAIT 1 10"], seen


async def test_a_packed_head_and_tail_run_the_same_command_as_a_plain_call(redis_url: str) -> None:
    """`Script.head` packs a call's start once; `run` appends the per-call values. The command
    Redis runs must be the one a plain call sends: same keys (some in the tail), same arguments,
    and a tail of the wrong length is refused before anything is written."""
    conn = _conn(redis_url)
    echo = Script(conn, "return {KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], #KEYS, #ARGV}")
    plain = await echo(["k:{t}:a", "k:{t}:b", "k:{t}:c"], ["x", 42, "é"])
    head = echo.head(["k:{t}:a", "k:{t}:b"], [], 4, tail_keys=1)
    assert await echo.run(head, ("k:{t}:c", "x", 42, "é")) == plain
    assert plain == [b"k:{t}:a", b"k:{t}:b", b"k:{t}:c", b"x", b"42", "é".encode(), 3, 3]
    fixed = echo.head(["k:{t}:a", "k:{t}:b", "k:{t}:c"], ["x"], 2)
    assert await echo.run(fixed, (42, "é")) == plain
    with pytest.raises(ValueError, match="needs 2 trailing arguments"):
        await echo.run(fixed, (42,))
    assert await conn.execute("PING") == b"PONG"  # nothing half-written is left on the connection
    with pytest.raises(ValueError, match="cannot follow fixed"):
        echo.head(["k:{t}:a"], ["x"], 2, tail_keys=1)
    await conn.close()


def test_script_replies_are_read_by_name_whatever_their_order() -> None:
    """The Lua side answers name/value pairs. The usual order is read as it comes; another order
    (a field added or moved in a script) is looked up by name, and a missing name is an error
    that says which, never a value taken from the wrong slot."""
    names = [b"counted", b"tokens_level", b"quota_used", b"owned"]
    assert _fields([b"counted", 1, b"tokens_level", b"5.0", b"quota_used", 7, b"owned", 1], names) == [
        1,
        b"5.0",
        7,
        1,
    ]
    moved = [b"owned", 0, b"extra", b"x", b"quota_used", 9, b"counted", -1, b"tokens_level", b"2.5"]
    assert _fields(moved, names) == [-1, b"2.5", 9, 0]
    with pytest.raises(ValueError, match="lacks owned"):
        _fields([b"counted", 1, b"tokens_level", b"5.0", b"quota_used", 7], names)
