"""Synthetic prompts of exact token lengths, built offline before a run starts.

A load test is only as honest as its inputs: "230 tokens in, 219 out" must mean 230 real tokens of
the model's own tokenizer (mistral-common), not characters / 4. We build each prompt from words
that are single tokens of that tokenizer, then encode the whole text and trim or pad until the
count is exact, so the length distribution asked for is the one the server sees (plus the chat
template's few tokens, which the server's own `usage` reports).

Distributions (`LengthDist`): fixed, uniform, lognormal, and a ShareGPT-like mix: lognormal input
and output lengths whose means after vLLM's benchmark filter (prompt > 1024, prompt + output > 2048
or either < 4 dropped) match the published ShareGPT means (about 230 in / 219 out per request).
Output lengths become `max_tokens` with `ignore_eos`, so the server generates exactly that many.
An optional shared prefix (a fraction of every prompt) exercises prefix caching.

Everything is seeded; the same spec gives the same workload file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

DistKind = Literal["fixed", "uniform", "lognormal", "sharegpt"]

# vLLM's ShareGPT filter (benchmark_dataset.py) and the means it leaves (shared/reference/published-vllm.md).
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048
SHAREGPT_MIN_LEN = 4
SHAREGPT_MEAN_IN = 230.0
SHAREGPT_MEAN_OUT = 219.0
SHAREGPT_SIGMA_IN = 1.0
SHAREGPT_SIGMA_OUT = 0.9


class TokenCounter(Protocol):
    """The slice of a tokenizer we need: text -> token ids, without BOS/EOS."""

    def encode(self, text: str) -> list[int]: ...

    def single_token_words(self) -> list[str]: ...


@dataclass(frozen=True)
class LengthDist:
    """A length distribution in tokens. `mean` and `sigma` are for lognormal (sigma of log-length)."""

    kind: DistKind = "fixed"
    mean: float = 128.0
    low: int = 1
    high: int = 0  # uniform upper bound (inclusive); 0 means 2 * mean - low
    sigma: float = 0.5

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, max(1, round(self.mean)), dtype=np.int64)
        if self.kind == "uniform":
            high = self.high or int(2 * self.mean - self.low)
            return rng.integers(self.low, high + 1, size=n)
        if self.kind == "lognormal":
            mu = math.log(self.mean) - self.sigma**2 / 2  # so that E[length] = mean
            return np.maximum(1, np.rint(rng.lognormal(mu, self.sigma, size=n))).astype(np.int64)
        raise ValueError(f"{self.kind!r} is a joint input/output mix; use sharegpt_lengths()")


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that determines a workload file. Printed into summary.json beside the results."""

    input: LengthDist = LengthDist("fixed", 128)
    output: LengthDist = LengthDist("fixed", 64)
    sharegpt: bool = False  # joint ShareGPT-like mix; overrides input/output
    prefix_share: float = 0.0  # fraction of each prompt that is one common prefix (prefix caching)
    n: int = 256  # distinct prompts; users cycle through them
    seed: int = 0
    tokenizer: str = "v1"  # mistral-common tokenizer version (Mixtral-8x7B: v1 SentencePiece)


@dataclass(frozen=True)
class WorkItem:
    """One prompt: its text, its exact token count under the tokenizer, and max_tokens to ask for."""

    prompt: str
    prompt_tokens: int
    max_tokens: int


def _lognormal_mu_for_filtered_mean(target: float, sigma: float, upper: float, rng_seed: int = 1) -> float:
    """mu such that a lognormal(mu, sigma), clipped to [4, upper] by rejection, has mean `target`.

    Found by bisection on a fixed Monte-Carlo sample, so the result is deterministic.
    """
    z = np.random.default_rng(rng_seed).standard_normal(200_000)
    lo, hi = 0.0, math.log(upper)
    for _ in range(60):
        mu = (lo + hi) / 2
        x = np.rint(np.exp(mu + sigma * z))
        x = x[(x >= SHAREGPT_MIN_LEN) & (x <= upper)]
        if x.mean() < target:
            lo = mu
        else:
            hi = mu
    return (lo + hi) / 2


@lru_cache(maxsize=1)
def sharegpt_params() -> tuple[float, float, float, float]:
    """(mu_in, sigma_in, mu_out, sigma_out) of the ShareGPT-like mix, calibrated to the published means."""
    mu_in = _lognormal_mu_for_filtered_mean(SHAREGPT_MEAN_IN, SHAREGPT_SIGMA_IN, SHAREGPT_MAX_PROMPT)
    mu_out = _lognormal_mu_for_filtered_mean(SHAREGPT_MEAN_OUT, SHAREGPT_SIGMA_OUT, SHAREGPT_MAX_TOTAL)
    return mu_in, SHAREGPT_SIGMA_IN, mu_out, SHAREGPT_SIGMA_OUT


def sharegpt_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Input and output lengths drawn like vLLM's filtered ShareGPT (rejection keeps the filter exact)."""
    mu_in, s_in, mu_out, s_out = sharegpt_params()
    ins: list[int] = []
    outs: list[int] = []
    while len(ins) < n:
        a = np.rint(rng.lognormal(mu_in, s_in, size=2 * n)).astype(np.int64)
        b = np.rint(rng.lognormal(mu_out, s_out, size=2 * n)).astype(np.int64)
        keep = (
            (a >= SHAREGPT_MIN_LEN)
            & (b >= SHAREGPT_MIN_LEN)
            & (a <= SHAREGPT_MAX_PROMPT)
            & (a + b <= SHAREGPT_MAX_TOTAL)
        )
        ins.extend(a[keep].tolist())
        outs.extend(b[keep].tolist())
    return np.array(ins[:n]), np.array(outs[:n])


class MistralTokenCounter:
    """mistral-common's raw tokenizer (no chat template), and its single-token words."""

    def __init__(self, version: str = "v1") -> None:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        factory = getattr(MistralTokenizer, version, None)
        if factory is None:
            raise ValueError(f"unknown mistral-common tokenizer version {version!r} (try v1, v2, v3, v7)")
        self._tok = factory().instruct_tokenizer.tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, bos=False, eos=False))

    def single_token_words(self) -> list[str]:
        # Lower-case alphabetic words of 3-8 letters that are one token both at the start of a
        # text and after a space (SentencePiece and tekken differ here): k such words joined by
        # single spaces are k tokens, which the final re-encode in exact_text() confirms.
        base = len(self.encode("the"))
        words = []
        for piece in self._tok.vocab():
            word = piece.lstrip("▁Ġ ")
            if not (3 <= len(word) <= 8 and word.isascii() and word.isalpha() and word.islower()):
                continue
            if len(self.encode(word)) == 1 and len(self.encode("the " + word)) == base + 1:
                words.append(word)
        if len(words) < 100:
            raise RuntimeError(f"tokenizer has only {len(words)} single-token words; cannot build prompts")
        return sorted(set(words))


def exact_text(
    counter: TokenCounter, words: Sequence[str], rng: np.random.Generator, n_tokens: int, prefix: str = ""
) -> str:
    """A text of exactly `n_tokens` tokens (prefix included), fixed up by re-encoding."""
    body_n = n_tokens - (len(counter.encode(prefix)) if prefix else 0)
    picks = [words[i] for i in rng.integers(0, len(words), size=max(body_n, 0))]
    text = (prefix + " " + " ".join(picks)) if prefix and picks else (prefix or " ".join(picks))
    for _ in range(64):
        have = len(counter.encode(text))
        if have == n_tokens:
            return text
        if have > n_tokens:
            text = text.rsplit(" ", 1)[0] if " " in text else text[:-1]
        else:
            text = text + " " + words[int(rng.integers(0, len(words)))]
    raise RuntimeError(f"could not build a prompt of exactly {n_tokens} tokens")


def build(spec: WorkloadSpec, counter: TokenCounter | None = None) -> list[WorkItem]:
    """The workload for `spec`: `spec.n` prompts of exact lengths, seeded."""
    counter = counter or MistralTokenCounter(spec.tokenizer)
    rng = np.random.default_rng(spec.seed)
    if spec.sharegpt:
        ins, outs = sharegpt_lengths(rng, spec.n)
    else:
        ins, outs = spec.input.sample(rng, spec.n), spec.output.sample(rng, spec.n)
    words = counter.single_token_words()
    prefix = ""
    if spec.prefix_share > 0:
        prefix_len = max(1, round(spec.prefix_share * float(np.min(ins))))
        prefix = exact_text(counter, words, rng, prefix_len)
    items = []
    for n_in, n_out in zip(ins.tolist(), outs.tolist(), strict=True):
        text = exact_text(counter, words, rng, int(n_in), prefix=prefix if n_in > len(prefix.split()) else "")
        items.append(WorkItem(prompt=text, prompt_tokens=int(n_in), max_tokens=int(n_out)))
    return items


def save(items: Iterable[WorkItem], path: Path) -> None:
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(asdict(item)) + "\n")


def load(path: Path) -> list[WorkItem]:
    with path.open() as f:
        return [WorkItem(**json.loads(line)) for line in f if line.strip()]
