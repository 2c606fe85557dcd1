"""Scheduler invariants, checked step by step with an injected clock and a linear cost model."""

from __future__ import annotations

import random

import pytest

from server.sim.engine import Engine, LinearCost
from server.sim.kvcache import blocks_for
from server.sim.request import Request, Status
from server.sim.scheduler import SchedulerConfig


def run(engine: Engine, t: float = 0.0, check=None, max_steps: int = 100_000) -> float:
    """Step the engine until idle, calling `check(plan)` before each step completes."""
    steps = 0
    while engine.has_work():
        plan = engine.plan()
        assert plan is not None, "engine has work but scheduled nothing"
        if check:
            check(plan)
        t += plan.duration_s
        engine.complete(plan, t)
        steps += 1
        assert steps < max_steps
    return t


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_random_load_respects_every_limit_and_finishes_everything(policy: str) -> None:
    rng = random.Random(7)
    cfg = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, policy=policy)  # type: ignore[arg-type]
    eng = Engine(LinearCost(), num_blocks=40, config=cfg)
    # Requests trickle in with random priorities, so the priority policy sometimes preempts a
    # request it already scheduled earlier in the same step (the un-schedule path).
    reqs = [Request(str(i), rng.randint(1, 200), rng.randint(1, 120), arrival_s=i * 1e-3,
                    priority=rng.randint(0, 3)) for i in range(60)]

    def check(plan) -> None:
        s = eng.scheduler
        assert len(s.running) <= cfg.max_num_seqs
        assert sum(plan.schedule.num_new) <= cfg.max_num_batched_tokens
        held = sum(r.num_blocks for r in s.running)
        assert held == eng.kv.num_used <= eng.kv.num_blocks
        assert not set(map(id, plan.schedule.preempted)) & set(map(id, plan.schedule.reqs))
        for r, n in zip(plan.schedule.reqs, plan.schedule.num_new, strict=True):
            assert n >= 1 and r in s.running
            assert r.num_blocks >= blocks_for(r.num_computed + n, 16)

    t, k, steps = 0.0, 0, 0
    while k < len(reqs) or eng.has_work():
        if k < len(reqs) and rng.random() < 0.3:
            eng.add(reqs[k])
            k += 1
        if not eng.has_work():
            continue
        plan = eng.plan()
        assert plan is not None
        check(plan)
        t += plan.duration_s
        eng.complete(plan, t)
        steps += 1
        assert steps < 100_000
    assert all(r.status == Status.FINISHED and r.num_output == r.output_target for r in reqs)
    assert eng.kv.num_used == 0
    assert eng.num_preemptions > 0  # 40 blocks of 16 tokens cannot hold this load without preempting
    assert eng.generation_tokens_total >= sum(r.output_target for r in reqs)


def test_preemption_takes_the_newest_frees_its_blocks_and_recomputes_it() -> None:
    # 6 blocks of 16 = 96 slots; two requests of 40 prompt + 40 output cannot both finish.
    cfg = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256)
    eng = Engine(LinearCost(), num_blocks=6, config=cfg)
    a, b = Request("a", 40, 40), Request("b", 40, 40)
    eng.add(a)
    eng.add(b)
    seen: list[tuple[str, int, int]] = []

    def check(plan) -> None:
        for v in plan.schedule.preempted:
            seen.append((v.req_id, v.num_blocks, v.num_computed))
            assert v.status == Status.PREEMPTED

    run(eng, check=check)
    assert seen and seen[0] == ("b", 0, 0)  # the newest is the victim; blocks freed, progress reset
    assert a.num_preemptions == 0 and b.num_preemptions >= 1
    assert a.status == b.status == Status.FINISHED and b.num_output == 40
    assert a.finish_s < b.finish_s
    assert eng.kv.num_used == 0


def test_fcfs_order_with_one_sequence_slot() -> None:
    eng = Engine(LinearCost(), num_blocks=100, config=SchedulerConfig(max_num_seqs=1))
    reqs = [Request(str(i), 10, 3, arrival_s=i * 0.001) for i in range(5)]
    for r in reqs:
        eng.add(r)
    run(eng)
    finish = [r.finish_s for r in reqs]
    assert finish == sorted(finish)


def test_priority_order_lower_value_first_then_arrival() -> None:
    eng = Engine(LinearCost(), num_blocks=100, config=SchedulerConfig(max_num_seqs=1, policy="priority"))
    prios = [5, 1, 3, 1, 0]
    reqs = [Request(str(i), 10, 3, arrival_s=i * 0.001, priority=p) for i, p in enumerate(prios)]
    for r in reqs:
        eng.add(r)
    run(eng)
    order = [r.req_id for r in sorted(reqs, key=lambda r: r.finish_s)]
    assert order == ["4", "1", "3", "2", "0"]


def test_priority_preemption_evicts_the_lowest_priority_request() -> None:
    eng = Engine(LinearCost(), num_blocks=6, config=SchedulerConfig(max_num_seqs=4, policy="priority"))
    low, high = Request("low", 40, 40, priority=9), Request("high", 40, 40, arrival_s=0.001, priority=0)
    eng.add(low)
    eng.add(high)
    run(eng)
    assert low.num_preemptions >= 1 and high.num_preemptions == 0
    assert high.finish_s < low.finish_s


def test_chunked_prefill_and_decodes_before_new_prefills() -> None:
    cfg = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=32)
    eng = Engine(LinearCost(), num_blocks=100, config=cfg)
    first = Request("first", 8, 20)
    eng.add(first)
    t = 0.0
    plan = eng.plan()
    assert plan is not None
    t += plan.duration_s
    eng.complete(plan, t)
    assert first.num_output == 1  # whole 8-token prompt fit: first token sampled
    long = Request("long", 100, 5)
    eng.add(long)
    chunks = []
    while long.num_output == 0:
        plan = eng.plan()
        assert plan is not None
        sched = dict(zip((r.req_id for r in plan.schedule.reqs), plan.schedule.num_new, strict=True))
        assert plan.schedule.reqs[0] is first and sched["first"] == 1  # the decode goes first
        chunks.append(sched["long"])
        t += plan.duration_s
        eng.complete(plan, t)
    assert chunks == [31, 31, 31, 7]  # budget 32 minus the decode, then the rest
    assert long.first_token_s == t


def test_abort_frees_blocks_wherever_the_request_is() -> None:
    eng = Engine(LinearCost(), num_blocks=20, config=SchedulerConfig(max_num_seqs=1))
    running, waiting = Request("r", 50, 50), Request("w", 50, 50)
    eng.add(running)
    eng.add(waiting)
    plan = eng.plan()
    assert plan is not None
    eng.complete(plan, plan.duration_s)
    assert eng.kv.num_used == blocks_for(50, 16)
    assert eng.abort(running) and eng.abort(waiting)
    assert eng.kv.num_used == 0 and not eng.has_work()
    assert not eng.abort(running)


def test_request_that_can_never_fit_is_refused() -> None:
    eng = Engine(LinearCost(), num_blocks=2)
    with pytest.raises(ValueError, match="could never run"):
        eng.add(Request("big", 40, 10))


def test_times_come_from_the_caller() -> None:
    eng = Engine(LinearCost(fixed_s=0.5, per_prefill_token_s=0, per_decode_seq_s=0), num_blocks=10)
    r = Request("x", 4, 3, arrival_s=0.0)
    eng.add(r)
    end = run(eng)
    assert end == pytest.approx(1.5)
    assert (r.first_token_s, r.finish_s) == (pytest.approx(0.5), pytest.approx(1.5))


def test_without_chunked_prefill_steps_are_prefill_only_or_decode_only() -> None:
    rng = random.Random(3)
    cfg = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, chunked_prefill=False)
    eng = Engine(LinearCost(), num_blocks=60, config=cfg)
    reqs = [Request(str(i), rng.randint(1, 200), rng.randint(1, 120)) for i in range(40)]
    t, k = 0.0, 0
    kinds = set()
    while k < len(reqs) or eng.has_work():
        if k < len(reqs) and rng.random() < 0.3:
            eng.add(reqs[k])
            k += 1
        if not eng.has_work():
            continue
        plan = eng.plan()
        assert plan is not None
        sched = plan.schedule
        assert not (sched.prefills and sched.decodes)  # V0: a prefill step stalls every decode
        for r, n in zip(sched.prefills, sched.prefill_new, strict=True):
            assert r.num_computed == 0 and n == r.prompt_len + r.num_output  # whole (re)computed prompts
        assert sum(sched.num_new) <= cfg.max_num_batched_tokens
        assert eng.kv.num_used <= eng.kv.num_blocks
        kinds.add("prefill" if sched.prefills else "decode")
        t += plan.duration_s
        eng.complete(plan, t)
    assert kinds == {"prefill", "decode"}
    assert all(r.status == Status.FINISHED and r.num_output == r.output_target for r in reqs)
    assert eng.kv.num_used == 0 and eng.num_preemptions > 0


def test_without_chunked_prefill_a_sequence_must_fit_one_step() -> None:
    eng = Engine(LinearCost(), num_blocks=100,
                 config=SchedulerConfig(max_num_batched_tokens=64, chunked_prefill=False))
    with pytest.raises(ValueError, match="must fit one step"):
        eng.add(Request("long", 60, 10))


def test_new_prefill_waits_for_nothing_without_chunking_but_joins_decodes_with_it() -> None:
    for chunked in (True, False):
        eng = Engine(LinearCost(), num_blocks=100,
                     config=SchedulerConfig(max_num_batched_tokens=256, chunked_prefill=chunked))
        first = Request("first", 8, 20)
        eng.add(first)
        plan = eng.plan()
        assert plan is not None
        eng.complete(plan, plan.duration_s)
        eng.add(Request("second", 30, 5))
        plan = eng.plan()
        assert plan is not None
        ids = sorted(r.req_id for r in plan.schedule.reqs)
        assert ids == (["first", "second"] if chunked else ["second"])
