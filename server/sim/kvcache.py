"""Paged KV-cache accounting: a fixed pool of blocks of `block_size` token slots.

vLLM stores each sequence's KV cache in fixed-size blocks (16 tokens by default) handed out from one
pool sized at start-up from the memory left after the weights. Scheduling only ever needs to know
how many blocks a sequence holds and how many are free, so this allocator counts blocks instead of
keeping a free list of block ids: allocation and release are O(1), which is what lets the offline
simulator play 100,000 requests in seconds. Prefix caching (sharing blocks between sequences with
the same prompt prefix) is `server/sim/prefixcache.py`, a subclass that also names blocks; the
scheduler reaches both through the same methods, and the hooks cost nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.sim.request import BlockChain, Request


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold `num_tokens` token slots."""
    return -(-num_tokens // block_size)


class BlockAllocator:
    """A pool of `num_blocks` KV blocks; callers hold counts, the pool holds the free total."""

    __slots__ = ("block_size", "num_blocks", "num_free")
    caching = False  # True in PrefixCachingAllocator: the scheduler then calls match/take_hits/register

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_free = num_blocks

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0..1 (what vLLM reports as kv_cache_usage_perc)."""
        return (self.num_blocks - self.num_free) / self.num_blocks

    def try_allocate(self, n: int) -> bool:
        """Take `n` blocks if that many are free; False (and nothing taken) otherwise."""
        if n > self.num_free:
            return False
        self.num_free -= n
        return True

    def free(self, n: int) -> None:
        """Give back `n` blocks."""
        self.num_free += n
        if self.num_free > self.num_blocks:
            raise RuntimeError(f"freed more blocks than allocated ({self.num_free} > {self.num_blocks})")

    def release(self, req: Request) -> None:
        """Give back all of `req`'s blocks (finish, preemption, abort)."""
        self.free(req.num_blocks)
        req.num_blocks = 0

    def match(self, req: Request) -> tuple[int, int]:
        """(cached leading blocks of `req`, how many of them are free); never any without caching."""
        return 0, 0

    def match_len(self, chain: BlockChain, limit: int) -> int:
        """Leading blocks of `chain` cached here (routers ask; nothing is cached without caching)."""
        return 0

    def take_hits(self, req: Request, hit: int) -> None:
        """Reference `req`'s first `hit` cached blocks (only called with hit > 0, so never here)."""
        raise NotImplementedError

    def count_query(self, req: Request, hit: int) -> None:
        """Count an admitted prompt for the hit rate (only with caching)."""

    def register(self, req: Request) -> None:
        """Offer `req`'s newly filled blocks to the cache (nothing to do without caching)."""
