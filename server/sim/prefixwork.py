"""Workloads whose prompts share prefixes: shared contexts (system prompts, documents) and chats.

Both give every request a `BlockChain` (server/sim/request.py): which of its KV blocks hold content
another request may also have, so the prefix cache and the prefix-aware routers have something to
find. Lengths and arrival times follow `offline.Workload`'s distributions and seed.

- `SharedContexts`: `num_contexts` contexts of `context_len` tokens each (150 customers with
  6,000-token contexts in llm-d's benchmark); each request is one context, picked uniformly or by a
  Zipf law, followed by its own question of the workload's `input_len` tokens.
- `Conversations`: multi-turn chats. Each conversation opens with one shared system prompt; turn t's
  prompt is everything so far (system + earlier user messages and answers) plus a new user message
  of `input_len` tokens, and its answer has `output_len` tokens. Conversations start as a Poisson
  process at rate / turns, and a conversation's turns are `turn_gap_s` apart (open loop: the next
  turn does not wait for the last answer, so if that answer is late its blocks are not cached yet).

The shared-prefix working set, the quantity the prefix-caching gain depends on, is
`working_set_tokens()`: the distinct shared tokens a replica would need to hold to serve every
request from cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from server.sim.lengths import LengthDist
from server.sim.request import BlockChain

# BlockChain keys: contexts and the system prompt take small keys, requests and conversations
# start above them, so ids never collide.
_OWN_KEY_BASE = 1 << 20


@dataclass(frozen=True)
class Prepared:
    """A workload laid out in send order: times, lengths and each request's block chain."""

    send_s: np.ndarray
    input_lens: np.ndarray
    output_lens: np.ndarray
    chains: list[BlockChain]


@dataclass(frozen=True)
class SharedContexts:
    num_contexts: int
    context_len: int
    zipf_s: float = 0.0  # 0 = uniform popularity; s > 0: P(context k) ~ 1 / k**s

    def __post_init__(self) -> None:
        if self.num_contexts < 1 or self.context_len < 1:
            raise ValueError("num_contexts and context_len must be at least 1")
        if self.zipf_s < 0:
            raise ValueError("zipf_s must be >= 0")

    def working_set_tokens(self) -> int:
        return self.num_contexts * self.context_len

    def describe(self) -> dict[str, object]:
        return {"kind": "shared-contexts", "num_contexts": self.num_contexts, "context_len": self.context_len,
                "zipf_s": self.zipf_s, "working_set_tokens": self.working_set_tokens()}

    def prepare(self, n: int, rate: float | None, question: LengthDist, answer: LengthDist, seed: int,
                block_size: int) -> Prepared:
        rng = np.random.default_rng(seed)
        questions = question.sample(rng, n)
        outs = answer.sample(rng, n)
        send = _poisson(rng, n, rate)
        if self.zipf_s > 0:
            w = 1.0 / np.arange(1, self.num_contexts + 1) ** self.zipf_s
            ctx = rng.choice(self.num_contexts, size=n, p=w / w.sum())
        else:
            ctx = rng.integers(0, self.num_contexts, size=n)
        ins = questions + self.context_len
        shared = self.context_len // block_size
        chains = [
            BlockChain(int(c) + 1, shared, _OWN_KEY_BASE + i, int(ins[i] + outs[i]) // block_size)
            for i, c in enumerate(ctx.tolist())
        ]
        return Prepared(send, ins, outs, chains)


@dataclass(frozen=True)
class Conversations:
    turns: int
    system_len: int = 0
    turn_gap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.turns < 1 or self.system_len < 0 or not self.turn_gap_s > 0:
            raise ValueError("turns >= 1, system_len >= 0 and turn_gap_s > 0 are required")

    def working_set_tokens(self, mean_user: float, mean_answer: float, concurrent: float) -> int:
        """System prompt + the mean history of `concurrent` live conversations."""
        history = (self.turns - 1) / 2 * (mean_user + mean_answer)
        return int(self.system_len + concurrent * history)

    def describe(self) -> dict[str, object]:
        return {"kind": "conversations", "turns": self.turns, "system_len": self.system_len,
                "turn_gap_s": self.turn_gap_s}

    def prepare(self, n: int, rate: float | None, question: LengthDist, answer: LengthDist, seed: int,
                block_size: int) -> Prepared:
        rng = np.random.default_rng(seed)
        convs = math.ceil(n / self.turns)
        users = question.sample(rng, convs * self.turns).reshape(convs, self.turns)
        answers = answer.sample(rng, convs * self.turns).reshape(convs, self.turns)
        starts = _poisson(rng, convs, None if rate is None else rate / self.turns)
        sys_blocks = self.system_len // block_size
        rows: list[tuple[float, int, int, BlockChain]] = []
        for c in range(convs):
            before = self.system_len
            for t in range(self.turns):
                prompt = before + int(users[c, t])
                out = int(answers[c, t])
                gap = 0.0 if rate is None else t * self.turn_gap_s
                # The system prompt is the part every conversation shares; the rest is this chat's
                # own stream, shared by its later turns (key = conversation).
                chain = BlockChain(1, sys_blocks, _OWN_KEY_BASE + c, (prompt + out) // block_size)
                rows.append((float(starts[c]) + gap, prompt, out, chain))
                before = prompt + out
        rows.sort(key=lambda r: r[0])
        rows = rows[:n]
        return Prepared(np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.int64),
                        np.array([r[2] for r in rows], dtype=np.int64), [r[3] for r in rows])


PrefixSpec = SharedContexts | Conversations


def _poisson(rng: np.random.Generator, n: int, rate: float | None) -> np.ndarray:
    if rate is None or math.isinf(rate):
        return np.zeros(n)
    t = np.cumsum(rng.exponential(1.0 / rate, size=n))
    return t - t[0]
