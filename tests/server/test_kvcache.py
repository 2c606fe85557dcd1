"""Block accounting of the paged KV cache."""

from __future__ import annotations

import pytest

from server.sim.kvcache import BlockAllocator, blocks_for


def test_blocks_for_rounds_up_to_whole_blocks() -> None:
    assert [blocks_for(n, 16) for n in (0, 1, 15, 16, 17, 32, 33)] == [0, 1, 1, 1, 2, 2, 3]


def test_allocate_is_all_or_nothing_and_free_returns_blocks() -> None:
    kv = BlockAllocator(10, 16)
    assert kv.try_allocate(7)
    assert not kv.try_allocate(4)
    assert kv.num_free == 3 and kv.num_used == 7
    assert kv.usage == pytest.approx(0.7)
    kv.free(7)
    assert kv.num_free == 10 and kv.usage == 0.0


def test_freeing_more_than_allocated_is_a_bug() -> None:
    kv = BlockAllocator(4)
    with pytest.raises(RuntimeError, match="freed more blocks"):
        kv.free(1)


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError):
        BlockAllocator(0)


def test_without_prefix_caching_release_frees_a_request_and_nothing_is_ever_cached() -> None:
    from server.sim.request import BlockChain, Request

    kv = BlockAllocator(10, 4)
    req = Request("r", 12, 4, blocks=BlockChain(1, 3, 2, 3))
    assert kv.try_allocate(3)
    req.num_blocks = 3
    assert kv.match(req) == (0, 0) and kv.match_len(BlockChain(1, 3, 2, 3), 3) == 0
    kv.release(req)
    assert kv.num_free == 10 and req.num_blocks == 0
