"""Automatic prefix caching, as vLLM V1 does it (`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`).

What is modelled, and how it follows vLLM:

- A full block is named by its content (here `BlockChain.block_id`, standing in for vLLM's chained
  block hash). When a block becomes full and no block with that name is cached yet, it is cached
  under the name; a duplicate computed at the same time by another request stays private, as in
  vLLM (the first one keeps the name).
- Blocks carry reference counts. A cached block whose count falls to zero stays in the cache *and*
  in the free queue: it can be handed out again as free space (evicting it), or revived by a
  request that finds it.
- The free queue is FIFO: allocation takes from the head, freed blocks go to the tail, and a
  request's blocks are freed in reverse order (its tail first), so the blocks nearest the start of
  a prompt, which other requests are most likely to share, are evicted last. That is vLLM's LRU.
  Blocks that never held a named block are kept as counted runs in the queue, so an 80k-block pool
  costs a handful of entries, not 80k.
- On admission a request looks up its leading blocks; the run of hits (capped so that at least the
  last prompt token is computed, which vLLM needs to sample) is its computed prefix. Hit blocks
  that were free leave the free queue. The admission fails, and nothing is taken, when the hits
  that must be revived plus the new blocks do not fit.
- Blocks filled by prefill chunks are cached as soon as the chunk is computed; blocks filled by
  generated tokens are cached when the request releases them (finish or preemption). vLLM caches
  those as they fill; the difference only shows when another request wants a running request's
  generated tokens, which no workload here does.

Counts only ever go through this object, so the scheduler's block arithmetic is unchanged: a
request's `num_blocks` counts every block it references, shared or not.
"""

from __future__ import annotations

from collections import OrderedDict

from server.sim.kvcache import BlockAllocator
from server.sim.request import BlockChain, Request


class PrefixCachingAllocator(BlockAllocator):
    """A block pool with vLLM's automatic prefix caching; see the module docstring."""

    __slots__ = ("_anon", "_queue", "evictions", "held", "hit_tokens", "query_tokens")
    caching = True

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        super().__init__(num_blocks, block_size)
        # The free queue, head first: a named block (int id -> 0) or a run of unnamed blocks
        # (("run", n) -> count). Python's OrderedDict gives O(1) pop-front, append and delete-middle.
        self._queue: OrderedDict[int | tuple[str, int], int] = OrderedDict()
        self._anon = 0
        self._push_unnamed(num_blocks)
        self.held: dict[int, int] = {}  # cached block id -> reference count (> 0)
        self.evictions = 0
        self.query_tokens = 0  # prompt tokens of admitted requests (vLLM's prefix_cache_queries)
        self.hit_tokens = 0  # of which found cached (prefix_cache_hits)

    # -- the free queue ----------------------------------------------------------------------------

    def _push_unnamed(self, n: int) -> None:
        if n <= 0:
            return
        q = self._queue
        if q:
            last = next(reversed(q))
            if isinstance(last, tuple):
                q[last] += n
                return
        self._anon += 1
        q[("run", self._anon)] = n

    def try_allocate(self, n: int) -> bool:
        if n > self.num_free:
            return False
        self.num_free -= n
        q = self._queue
        while n > 0:
            key = next(iter(q))
            if isinstance(key, tuple):
                run = q[key]
                if run > n:
                    q[key] = run - n
                    return True
                del q[key]
                n -= run
            else:  # the least recently freed cached block: evict it
                del q[key]
                self.evictions += 1
                n -= 1
        return True

    def free(self, n: int) -> None:
        super().free(n)
        self._push_unnamed(n)

    @property
    def num_cached_free(self) -> int:
        """Blocks that are free but still hold a cached prefix (evictable)."""
        return sum(1 for k in self._queue if not isinstance(k, tuple))

    def is_cached(self, block_id: int) -> bool:
        return block_id in self.held or block_id in self._queue

    # -- requests ----------------------------------------------------------------------------------

    def match(self, req: Request) -> tuple[int, int]:
        chain = req.blocks
        if chain is None:
            return 0, 0
        limit = min(chain.num_blocks, (req.prompt_len + req.num_output - 1) // self.block_size)
        held, q = self.held, self._queue
        hit = revive = 0
        while hit < limit:
            bid = chain.block_id(hit)
            if bid in held:
                pass
            elif bid in q:
                revive += 1
            else:
                break
            hit += 1
        return hit, revive

    def match_len(self, chain: BlockChain, limit: int) -> int:
        """Leading blocks of `chain` cached here (the router's view; nothing changes)."""
        held, q = self.held, self._queue
        hit = 0
        limit = min(limit, chain.num_blocks)
        while hit < limit:
            bid = chain.block_id(hit)
            if bid not in held and bid not in q:
                break
            hit += 1
        return hit

    def take_hits(self, req: Request, hit: int) -> None:
        chain = req.blocks
        assert chain is not None
        held, q = self.held, self._queue
        ids = req.cached_hashes
        for b in range(hit):
            bid = chain.block_id(b)
            if bid in held:
                held[bid] += 1
            else:
                del q[bid]
                held[bid] = 1
                self.num_free -= 1
            ids.append(bid)
        req.num_hashed = hit
        req.num_blocks = hit
        req.num_computed = hit * self.block_size

    def count_query(self, req: Request, hit: int) -> None:
        self.query_tokens += req.prompt_len
        self.hit_tokens += min(hit * self.block_size, req.prompt_len)

    def register(self, req: Request) -> None:
        chain = req.blocks
        if chain is None:
            return
        full = min(req.num_computed // self.block_size, chain.num_blocks)
        b = req.num_hashed
        if b >= full:
            return
        held, q = self.held, self._queue
        ids = req.cached_hashes
        while b < full:
            bid = chain.block_id(b)
            if bid not in held and bid not in q:
                held[bid] = 1
                ids.append(bid)
            b += 1
        req.num_hashed = full

    def release(self, req: Request) -> None:
        self.register(req)
        ids = req.cached_hashes
        private = req.num_blocks - len(ids)
        # Reverse order: the private tail first, then the named blocks from the last to the first.
        if private:
            self.free(private)
        held, q = self.held, self._queue
        for bid in reversed(ids):
            c = held[bid] - 1
            if c:
                held[bid] = c
            else:
                del held[bid]
                q[bid] = 0
                self.num_free += 1
        req.cached_hashes = []
        req.num_hashed = 0
        req.num_blocks = 0

