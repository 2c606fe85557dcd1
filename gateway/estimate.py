"""How many tokens to reserve before a request runs: a bound the prompt's shape cannot beat.

The gateway never tokenizes on the hot path: exact counting with Mistral's own tokenizers costs
0.4 to 2.8 ms per 4 KB chat request (loadtest/bench/prompt_shapes.py, docs/gateway.md), several
times the gateway's whole CPU budget per request. Instead it reserves, for the prompt, the number
of bytes of the request body. Byte-level tokenizers (BPE with byte fallback, SentencePiece with
byte fallback, Tekken) never emit more than one token per byte of text, and every prompt token
(message text, chat-template tokens, tool schemas, names) comes from bytes of the body, which
also holds JSON punctuation for each message: measured, the worst hostile shape (digits) counts
0.98 tokens per body byte, English prose 0.20. So true prompt tokens <= body bytes, and with
`max_tokens` capping the completion, no admitted request uses more than it reserved: a burst of
hostile prompts stays within the token bucket (capacity + refill), with no extra bound.

The price is headroom, not throughput: an English prompt reserves about five times its tokens
until settle refunds the difference, so a tenant close to its tokens-per-minute limit has fewer
requests in flight at once. `bytes_div_4` (the earlier estimate: ceil(prompt text bytes / 4))
keeps that headroom and can be beaten by about 4x (digits) for prompt tokens, carried as debt.

One exception keeps big prompts usable on small plans: when the bound plus `max_tokens` is more
than the whole bucket but the estimate fits, the request reserves the whole bucket (it waits for
a full bucket, and runs alone). Such a request can overshoot the bucket by at most
(its body bytes + max_tokens - tokens_per_minute); that is the documented bound.
"""

from __future__ import annotations

from typing import Literal

PromptReservation = Literal["body_bytes", "bytes_div_4"]


def reservation(
    strategy: PromptReservation,
    *,
    body_bytes: int,
    prompt_estimate: int,
    max_tokens: int,
    tokens_per_minute: int,
) -> int:
    """Tokens to reserve from the token bucket and the monthly quota for one request."""
    estimated = prompt_estimate + max_tokens
    if strategy == "bytes_div_4":
        return estimated
    bound = body_bytes + max_tokens
    if bound > tokens_per_minute >= estimated:
        return tokens_per_minute  # the whole bucket: admitted alone, once the bucket is full
    return bound
