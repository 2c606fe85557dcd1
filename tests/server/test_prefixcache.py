"""Prefix caching (server/sim/prefixcache.py), shared-prefix workloads and prefix-aware routing.

Numbers are derived by hand in each test from the block size and the prompt lengths.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.sim.engine import Engine, LinearCost
from server.sim.lengths import LengthDist
from server.sim.offline import Workload, simulate
from server.sim.prefixcache import PrefixCachingAllocator
from server.sim.prefixwork import Conversations, SharedContexts
from server.sim.request import BlockChain, Request
from server.sim.routing import PrefixAffinity

BS = 4


def _run(eng: Engine, req: Request) -> None:
    """Add `req` and step the engine until it finishes."""
    eng.add(req)
    t = 0.0
    while not req.finished:
        plan = eng.plan()
        assert plan is not None
        t += plan.duration_s
        eng.complete(plan, t)


def _engine(num_blocks: int = 64) -> Engine:
    return Engine(LinearCost(), num_blocks=num_blocks, block_size=BS, prefix_caching=True)


def test_a_request_whose_first_two_blocks_are_cached_prefills_only_the_rest() -> None:
    eng = _engine()
    # A: 12-token prompt = 3 full blocks of context 1, then 2 output tokens.
    _run(eng, Request("a", 12, 2, blocks=BlockChain(1, 3, 100, 3)))
    # B: the first 2 blocks (8 tokens) of the same context, then 5 tokens of its own: 13 tokens.
    b = Request("b", 13, 2, blocks=BlockChain(1, 2, 101, 3))
    eng.add(b)
    plan = eng.plan()
    assert plan is not None
    assert plan.num_prefill_tokens == 13 - 8
    assert plan.shape.prefill == ((5, 8),)  # 5 new tokens attending to 8 cached ones
    assert b.num_cached_tokens == 8


def test_an_identical_prompt_still_computes_its_last_block() -> None:
    eng = _engine()
    chain = BlockChain(1, 3, 100, 3)
    _run(eng, Request("a", 12, 1, blocks=chain))
    b = Request("b", 12, 1, blocks=chain)
    eng.add(b)
    plan = eng.plan()
    assert plan is not None
    # 3 blocks are cached, but vLLM must compute the last prompt token to sample: (12 - 1) // 4 = 2
    # blocks are used, and the 4 tokens of the third block are computed again.
    assert plan.num_prefill_tokens == 4
    assert eng.kv.hit_tokens == 8 and eng.kv.query_tokens == 24  # type: ignore[attr-defined]


def _held_request(kv: PrefixCachingAllocator, name: str, key: int, nblocks: int) -> Request:
    """A request that has computed `nblocks` full blocks of content `key`."""
    req = Request(name, nblocks * BS, 1, blocks=BlockChain(key, nblocks, key + 1000, nblocks))
    assert kv.try_allocate(nblocks)
    req.num_blocks = nblocks
    req.num_computed = nblocks * BS
    kv.register(req)
    return req


def test_lru_evicts_the_least_recently_freed_cached_block() -> None:
    kv = PrefixCachingAllocator(3, BS)
    a = _held_request(kv, "a", 1, 1)
    b = _held_request(kv, "b", 2, 1)
    kv.release(a)  # free queue: [1 never-used block, a's block, b's block] after the next line
    kv.release(b)
    a0, b0 = BlockChain(1, 1, 0, 1).block_id(0), BlockChain(2, 1, 0, 1).block_id(0)
    assert kv.num_free == 3 and kv.is_cached(a0) and kv.is_cached(b0)
    assert kv.try_allocate(2)  # takes the never-used block, then evicts a's (freed before b's)
    assert not kv.is_cached(a0) and kv.is_cached(b0)
    assert kv.evictions == 1 and kv.num_free == 1


def test_a_request_frees_its_tail_first_so_the_prefix_is_evicted_last() -> None:
    kv = PrefixCachingAllocator(2, BS)
    r = _held_request(kv, "r", 7, 2)
    kv.release(r)
    first, second = (BlockChain(7, 2, 0, 2).block_id(b) for b in (0, 1))
    assert kv.try_allocate(1)
    assert kv.is_cached(first) and not kv.is_cached(second)


def test_a_shared_block_returns_to_the_free_pool_only_when_its_last_user_leaves() -> None:
    kv = PrefixCachingAllocator(4, BS)
    a = _held_request(kv, "a", 3, 2)
    b = Request("b", 2 * BS + 1, 1, blocks=BlockChain(3, 2, 2000, 2))
    hit, revive = kv.match(b)
    assert (hit, revive) == (2, 0)  # both blocks held by a, none needs reviving
    kv.take_hits(b, hit)
    assert kv.num_free == 2  # sharing took no new block
    kv.release(a)
    assert kv.num_free == 2  # still referenced by b
    kv.release(b)
    assert kv.num_free == 4 and kv.num_cached_free == 2


def test_reviving_a_free_cached_block_needs_room_for_it() -> None:
    eng = _engine(num_blocks=4)
    _run(eng, Request("a", 12, 1, blocks=BlockChain(1, 3, 100, 3)))
    assert eng.kv.num_free == 4
    b = Request("b", 13, 1, blocks=BlockChain(1, 3, 101, 3))
    eng.add(b)
    plan = eng.plan()
    assert plan is not None
    # 3 cached blocks are revived (they leave the free queue) and 1 new block holds token 13.
    assert plan.num_prefill_tokens == 1 and eng.kv.num_free == 0


def test_prefix_affinity_routes_to_the_replica_holding_the_prefix_unless_past_the_load_bound() -> None:
    engines = [_engine(), _engine()]
    _run(engines[1], Request("warm", 12, 1, blocks=BlockChain(5, 3, 100, 3)))
    req = Request("r", 20, 1, blocks=BlockChain(5, 3, 101, 5))
    assert PrefixAffinity(engines).pick(req) == 1  # least-loaded alone would say 0 (tie, lower index)
    for i in range(3):
        engines[1].add(Request(f"busy{i}", 4, 1))
    assert PrefixAffinity(engines, load_bound=2).pick(req) == 0  # 3 more outstanding than replica 0
    assert PrefixAffinity(engines, load_bound=3).pick(req) == 1


def test_shared_contexts_give_full_context_blocks_one_id_and_the_rest_their_own() -> None:
    spec = SharedContexts(num_contexts=1, context_len=40)
    p = spec.prepare(3, None, LengthDist.parse("8"), LengthDist.parse("4"), seed=0, block_size=16)
    assert p.input_lens.tolist() == [48, 48, 48]
    # 40 tokens = 2 full blocks shared (the third holds 8 context + 8 question tokens: not shared).
    ids = [[c.block_id(b) for b in range(c.num_blocks)] for c in p.chains]
    assert [c.num_blocks for c in p.chains] == [(48 + 4) // 16] * 3
    assert ids[0][:2] == ids[1][:2] == ids[2][:2]
    assert len({i[2] for i in ids}) == 3
    assert spec.working_set_tokens() == 40


def test_conversation_turns_carry_the_history_as_prefix() -> None:
    spec = Conversations(turns=3, system_len=32, turn_gap_s=10.0)
    p = spec.prepare(3, 1.0, LengthDist.parse("16"), LengthDist.parse("16"), seed=0, block_size=16)
    # turn t's prompt = system + t x (user + answer) + user
    assert p.input_lens.tolist() == [48, 80, 112]
    assert np.allclose(np.diff(p.send_s), 10.0)
    c0, c1 = p.chains[0], p.chains[1]
    # turn 2 starts with turn 1's prompt and answer: its first (48 + 16) / 16 = 4 blocks are turn 1's
    assert [c1.block_id(b) for b in range(4)] == [c0.block_id(b) for b in range(4)]


def test_cache_hits_and_affinity_lower_ttft_in_a_small_cluster() -> None:
    wl = Workload(num_requests=300, input_len=32, output_len=8, rate=40.0, seed=1,
                  prefix=SharedContexts(num_contexts=6, context_len=512))
    cost = LinearCost(fixed_s=0.002, per_prefill_token_s=2e-5, per_decode_seq_s=1e-5)
    off = simulate(wl, cost_model=cost, num_blocks=200, replicas=3)
    ll = simulate(wl, cost_model=cost, num_blocks=200, replicas=3, prefix_caching=True)
    aff = simulate(wl, cost_model=cost, num_blocks=200, replicas=3, prefix_caching=True,
                   router="prefix-affinity")
    assert np.isnan(off.prefix_hit_rate)
    # Each context is 32 blocks, 6 contexts = 192 blocks: nearly the whole of one replica's 200,
    # so affinity (2 contexts per replica) hits far more often than least-loaded.
    assert aff.prefix_hit_rate > ll.prefix_hit_rate > 0
    assert aff.summary()["ttft_mean_s"] < ll.summary()["ttft_mean_s"] < off.summary()["ttft_mean_s"]


@pytest.mark.parametrize("router", ["least-loaded", "prefix-affinity"])
def test_fast_stepper_equals_reference_with_prefix_caching_and_preemption(router: str) -> None:
    wl = Workload(num_requests=400, input_len="uniform:8:200", output_len="uniform:1:120", rate=60.0,
                  seed=4, prefix=SharedContexts(num_contexts=5, context_len=300, zipf_s=1.0))
    kw = dict(cost_model=LinearCost(per_context_token_s=1e-7), num_blocks=120, replicas=2,
              prefix_caching=True, router=router, max_num_batched_tokens=256)
    ref = simulate(wl, stepper="reference", **kw)  # type: ignore[arg-type]
    fast = simulate(wl, stepper="fast", **kw)  # type: ignore[arg-type]
    assert ref.preemptions > 0 and ref.prefix_hit_rate > 0.3
    assert fast.steps == ref.steps and fast.preemptions == ref.preemptions
    assert np.array_equal(fast.ttft, ref.ttft) and np.array_equal(fast.e2e, ref.e2e)
    assert fast.prefix_hit_rate == ref.prefix_hit_rate


def test_simulate_cli_reports_the_hit_rate_of_each_router(tmp_path: Path) -> None:
    rates = {}
    for router in ("least-loaded", "prefix-affinity"):
        out = tmp_path / f"{router}.json"
        subprocess.run(
            [sys.executable, "-m", "servelab.cli", "simulate", "--model", "llama-3.1-8b", "--replicas", "4",
             "--num-requests", "300", "--rate", "20", "--input-len", "100", "--output-len", "20",
             "--shared-contexts", "40", "--context-len", "2000", "--prefix-caching", "--router", router,
             "--json", str(out)],
            check=True, capture_output=True, timeout=120)
        data = json.loads(out.read_text())
        assert data["inputs"]["workload"]["prefix"]["working_set_tokens"] == 40 * 2000
        rates[router] = data["results"]["prefix_cache_hit_rate"]
    # 40 contexts over 4 replicas: affinity computes each context about once, least-loaded about 4 times.
    assert rates["prefix-affinity"] > rates["least-loaded"] + 0.1
