"""How many tokens to reserve before a request runs: a bound the prompt's shape cannot beat.

The gateway never tokenizes on the hot path: exact counting with Mistral's own tokenizers costs
0.4 to 2.8 ms per 4 KB chat request (loadtest/bench/prompt_shapes.py, docs/gateway.md), several
times the gateway's whole CPU budget per request. Instead it reserves, for the prompt, the number
of bytes of the request body. Byte-level tokenizers (BPE with byte fallback, SentencePiece with
byte fallback, Tekken) never emit more than one token per byte of text, and every prompt token
(message text, chat-template tokens, tool schemas, names) comes from bytes of the body, which
also holds JSON punctuation for each message: measured, the worst hostile shape (digits) counts
0.98 tokens per body byte, English prose 0.20. So true prompt tokens <= body bytes, and with
`max_tokens` capping the completion no request uses more than it reserved.

Admission itself waits only for the *estimate* (ceil(prompt text bytes / 4) + max_tokens) to be
in the bucket, then takes the bound: normal traffic is admitted at the rate its real usage
allows (waiting for the worst case made a 3,000 tokens/min tenant get 86 % of its limit in the
load-test check), while the bucket pays every request's worst case until settle refunds the
difference. A burst of hostile prompts therefore stays within capacity + refill + the last
admitted request's (bound - estimate), which is less than that one request's body bytes: the
documented bound. `bytes_div_4` (reserve the estimate itself) keeps more headroom for requests
in flight and can be beaten by about 4x (digits) for prompt tokens, carried as debt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptReservation = Literal["body_bytes", "bytes_div_4"]


@dataclass(slots=True)
class Reservation:
    reserve: int  # taken from the token bucket and the quota at admission, trued up at settle
    need: int  # must be available in the bucket (and the quota) for the request to be admitted


def reservation(
    strategy: PromptReservation, *, body_bytes: int, prompt_estimate: int, max_tokens: int
) -> Reservation:
    """Tokens to reserve for one request, and the part that must be available to admit it."""
    estimated = prompt_estimate + max_tokens
    if strategy == "bytes_div_4":
        return Reservation(estimated, estimated)
    return Reservation(max(body_bytes, prompt_estimate) + max_tokens, estimated)
