"""Prefix-affinity routing with a load bound: send a prompt where its prefix was sent before.

vLLM caches the KV blocks of prompts it has seen (automatic prefix caching), but each replica has its
own cache. Least-loaded routing scatters requests that share a long system prompt or a conversation
history over all replicas, and each one computes the prefix again. This router remembers, per backend,
which prompt prefixes it sent there and prefers the backend with the longest remembered match. It is
the "approximate" flavour of llm-d's prefix scorer: the gateway never tokenizes (docs/gateway.md), so it
hashes characters, not tokens, and it knows what it routed, not what the backend still holds.

- Blocks: the prompt text (chat messages as role + content, or the completion prompt), UTF-8, cut
  into `block_chars`-byte chunks (64 bytes, about 16 tokens: vLLM's block size) and hashed as a
  chain, so block i matches only if everything before it matches too. At most `max_blocks`.
- Index: per backend URL, an LRU of block hashes with room for `blocks_per_backend` of them (a
  stand-in for that replica's KV capacity; older prefixes fall out as vLLM would evict them).
- Load bound: the backend with the longest match wins unless it has more than `load_bound`
  outstanding requests above the least-loaded candidate; then least-loaded wins. A hot prefix cannot
  pile every request onto one replica (AIBrix switches prefix matching off past an imbalance of 8
  running requests; 8 is the default here too). No match at all also means least-loaded.

The offline simulator has the same policy with exact cache contents (server/sim/routing.py,
`affinity-bounded`); docs/results/prefix-caching.md shows what it buys.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def outstanding(self) -> int: ...


B = TypeVar("B", bound=Candidate)


def prompt_text(body: bytes) -> bytes:
    """The part of an OpenAI request body that becomes the prompt, in order; b"" if there is none."""
    try:
        data = json.loads(body)
    except ValueError:
        return b""
    if not isinstance(data, dict):
        return b""
    messages = data.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                if not isinstance(content, str):
                    content = json.dumps(content, separators=(",", ":"), sort_keys=True)
                parts.append(f"<{m.get('role', '')}>{content}")
        return "".join(parts).encode()
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return prompt.encode()
    return b""


def block_hashes(text: bytes, block_chars: int = 64, max_blocks: int = 512) -> list[bytes]:
    """Chained hashes of the full `block_chars`-byte blocks of `text` (a partial last block is left out)."""
    out: list[bytes] = []
    prev = b""
    for i in range(min(len(text) // block_chars, max_blocks)):
        prev = hashlib.blake2b(prev + text[i * block_chars:(i + 1) * block_chars], digest_size=8).digest()
        out.append(prev)
    return out


class PrefixAffinity:
    """Per-backend LRU of routed prefix blocks, and the bounded pick; see the module docstring."""

    def __init__(self, *, load_bound: int = 8, block_chars: int = 64, max_blocks: int = 512,
                 blocks_per_backend: int = 65536) -> None:
        if load_bound < 0 or block_chars < 1 or max_blocks < 1 or blocks_per_backend < 1:
            raise ValueError("load_bound >= 0, block_chars, max_blocks and blocks_per_backend >= 1")
        self.load_bound = load_bound
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.blocks_per_backend = blocks_per_backend
        self._seen: dict[str, OrderedDict[bytes, None]] = {}

    def blocks(self, body: bytes) -> list[bytes]:
        return block_hashes(prompt_text(body), self.block_chars, self.max_blocks)

    def match(self, url: str, blocks: Sequence[bytes]) -> int:
        """Leading blocks of `blocks` last routed to `url`."""
        seen = self._seen.get(url)
        if not seen:
            return 0
        n = 0
        for h in blocks:
            if h not in seen:
                break
            n += 1
        return n

    def record(self, url: str, blocks: Sequence[bytes]) -> None:
        seen = self._seen.setdefault(url, OrderedDict())
        for h in blocks:
            if h in seen:
                seen.move_to_end(h)
            else:
                seen[h] = None
        while len(seen) > self.blocks_per_backend:
            seen.popitem(last=False)

    def choose(self, candidates: Sequence[B], blocks: Sequence[bytes]) -> B:
        """Longest remembered prefix within the load bound, else least outstanding (first on ties)."""
        least = min(candidates, key=lambda b: b.outstanding)
        if not blocks:
            return least
        best, best_hit = least, 0
        for b in candidates:
            hit = self.match(b.url, blocks)
            if hit > best_hit or (hit == best_hit and hit and b.outstanding < best.outstanding):
                best, best_hit = b, hit
        if best_hit == 0 or best.outstanding > least.outstanding + self.load_bound:
            best = least
        self.record(best.url, blocks)
        return best
