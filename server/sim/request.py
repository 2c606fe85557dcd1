"""One request's state inside the engine: how many tokens it has, how many are in the KV cache.

The scheduler and engine mutate these in place every step, so this is a plain class with
`__slots__` rather than a frozen dataclass: a step touches every running request, and allocating a
new object per request per step would make the offline simulator allocation-bound. The vocabulary
follows vLLM V1: `num_tokens` = prompt + generated, `num_computed` = tokens whose KV is in the
cache; a step schedules `num_tokens - num_computed` of them (or a chunk), and when a request's
computed tokens catch up with its tokens it samples one more token.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3
    ABORTED = 4


@dataclass(frozen=True, slots=True)
class BlockChain:
    """The content of a request's token blocks, as ids, without storing one id per block.

    vLLM names a full KV block by the hash of its tokens chained with its parent block's hash, so two
    requests share block b only if their first b+1 blocks hold the same tokens. A simulated request
    has no tokens; it has a shared part (a system prompt, a document, or a conversation so far:
    `shared_key`, its first `num_shared` blocks) followed by its own blocks (`own_key`). Block b's
    id is `key << 24 | b`, which is unique per (content, position) and so has the chain property.
    `num_blocks` counts the full blocks of prompt + output (a partial last block is never cached).
    """

    shared_key: int
    num_shared: int
    own_key: int
    num_blocks: int

    def block_id(self, b: int) -> int:
        return ((self.shared_key if b < self.num_shared else self.own_key) << 24) | b


class Request:
    """A request as the engine sees it. Times are seconds on the engine's clock."""

    __slots__ = (
        "arrival_s",
        "blocks",
        "cached_hashes",
        "finish_reason",
        "finish_s",
        "first_token_s",
        "last_token_s",
        "max_tokens",
        "num_blocks",
        "num_cached_tokens",
        "num_computed",
        "num_hashed",
        "num_output",
        "num_preemptions",
        "output_target",
        "priority",
        "prompt_len",
        "req_id",
        "scheduled_s",
        "seq",
        "status",
        "watcher",
    )

    def __init__(
        self,
        req_id: str,
        prompt_len: int,
        max_tokens: int,
        *,
        arrival_s: float = 0.0,
        stop_len: int | None = None,
        priority: int = 0,
        watcher: Any = None,
        blocks: BlockChain | None = None,
    ) -> None:
        if prompt_len < 1:
            raise ValueError("a request needs at least one prompt token")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.req_id = req_id
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        # The length at which the "model" would emit EOS; None means it never does (ignore_eos).
        natural = max_tokens if stop_len is None else max(1, stop_len)
        self.output_target = min(max_tokens, natural)
        self.finish_reason = "length" if self.output_target >= max_tokens else "stop"
        self.arrival_s = arrival_s
        self.priority = priority
        self.seq = 0  # arrival order, set by the scheduler (tie-break after priority and arrival)
        self.num_computed = 0
        self.num_output = 0
        self.num_blocks = 0
        self.num_preemptions = 0
        self.status = Status.WAITING
        self.scheduled_s = -1.0  # first time the scheduler admitted it (set by drivers that pass `now`)
        self.first_token_s = -1.0
        self.last_token_s = -1.0
        self.finish_s = -1.0
        # Prefix caching (server/sim/prefixcache.py): the content ids of this request's full blocks,
        # the ids of the cached blocks it holds a reference to, how many of its full blocks have been
        # offered to the cache, and how many prompt tokens its first admission found cached.
        self.blocks = blocks
        self.cached_hashes: list[int] = []
        self.num_hashed = 0
        self.num_cached_tokens = 0
        # Whoever waits for this request's tokens (the real-time server keeps an asyncio.Event here).
        self.watcher = watcher

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_output

    @property
    def finished(self) -> bool:
        return self.status >= Status.FINISHED

    def __repr__(self) -> str:
        return (
            f"Request({self.req_id!r}, prompt={self.prompt_len}, out={self.num_output}/{self.output_target},"
            f" computed={self.num_computed}, blocks={self.num_blocks}, status={self.status.name})"
        )
