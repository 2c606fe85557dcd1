"""Tokens per byte of hostile prompt shapes, with Mistral's own tokenizers, and what exact counting costs.

The gateway reserves tokens before a request runs, without tokenizing. This measures, for prompt
shapes built to beat a bytes/4 estimate, how many tokens the real tokenizers count against the
prompt's text bytes and against the whole request body's bytes, and how long exact counting would
take per request on the gateway's hot path (mistral-common, as vLLM's mistral mode counts).

    .venv/bin/python -m loadtest.bench.prompt_shapes [--target-bytes 4000] [--repeat 20]

Prints a Markdown table (docs/gateway.md quotes it).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from server.catalog import tokenizer_for
from server.sim.tokens import PromptCounter


def _fill(unit: str, target: int) -> str:
    return unit * max(1, target // len(unit.encode()))


def shapes(target: int) -> dict[str, list[dict[str, Any]]]:
    prose = (
        "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly "
        "report on infrastructure spending and latency budgets. "
    )
    return {
        "english prose": [{"role": "user", "content": _fill(prose, target)}],
        "'a a a ...'": [{"role": "user", "content": _fill("a ", target)}],
        "digits": [{"role": "user", "content": _fill("8203917465", target)}],
        "CJK": [{"role": "user", "content": _fill("数据中心的延迟预算与吞吐量", target)}],
        "emoji": [{"role": "user", "content": _fill("🚀🔥🧠🌍", target)}],
        "symbols": [{"role": "user", "content": _fill("{}[]<>|~^`", target)}],
        "many short messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": "hi"}
            for i in range(max(1, target // 34) | 1)
        ],
        "long system prompt": [
            {"role": "system", "content": _fill(prose, target - 20)},
            {"role": "user", "content": "ok?"},
        ],
        "empty user messages": [{"role": "user", "content": ""} for _ in range(max(1, target // 30))],
    }


def _time_us(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-bytes", type=int, default=4000, help="prompt text size per shape")
    ap.add_argument("--repeat", type=int, default=20, help="timed tokenizations per cell (median)")
    ap.add_argument("--models", default="mixtral-8x7b,mixtral-8x22b,llama-3.1-8b", help="catalog keys")
    args = ap.parse_args()
    print(f"target text bytes per prompt: {args.target_bytes}; loadavg {os.getloadavg()[0]:.2f}\n")
    print(
        "| tokenizer (model) | shape | messages | text bytes | body bytes | tokens | tokens / text byte "
        "| tokens / body byte | bytes/4 estimate | exact count, us |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst_body = 0.0
    for key in args.models.split(","):
        counter = PromptCounter(tokenizer_for(key))
        for name, msgs in shapes(args.target_bytes).items():
            text = sum(len(m["content"].encode()) for m in msgs)
            body = len(json.dumps({"model": key, "messages": msgs, "max_tokens": 16}).encode())
            tokens = counter.chat(msgs)
            us = _time_us(functools.partial(counter.chat, msgs), args.repeat)
            worst_body = max(worst_body, tokens / body)
            print(
                f"| {key} | {name} | {len(msgs)} | {text} | {body} | {tokens} | {tokens / max(text, 1):.2f} "
                f"| {tokens / body:.2f} | {math.ceil(text / 4)} | {us:,.0f} |"
            )
    print(f"\nhighest tokens per body byte: {worst_body:.3f}")


if __name__ == "__main__":
    main()
