"""The byte-level usage strip the streaming proxy applies to every chunk of a running-usage stream."""

from __future__ import annotations

import json

import pytest

from gateway.costs import Usage
from gateway.proxy import _usage_of, _without_usage

CHUNKS = [
    # vLLM's compact form, with generated text that itself spells `"usage": {`
    b'{"id":"x","choices":[{"index":0,"delta":{"content":"a \\"usage\\": {1}"}}],'
    b'"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}',
    # spaced form with nested details
    b'{"id":"x","choices":[{"index":0,"delta":{"content":"b"}}], "usage": {"prompt_tokens": 3,'
    b' "total_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}}}',
    # usage first: not where servers put it, handled by the JSON fallback
    b'{"usage":{"prompt_tokens":3,"completion_tokens":2},"id":"x","choices":[{"index":0,"delta":{}}]}',
]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_strip_removes_usage_and_keeps_everything_else(chunk: bytes) -> None:
    before, after = json.loads(chunk), json.loads(_without_usage(chunk))
    before.pop("usage")
    assert after == before


@pytest.mark.parametrize("chunk", CHUNKS)
def test_usage_is_read_from_the_kept_bytes(chunk: bytes) -> None:
    assert _usage_of(chunk) == Usage(prompt_tokens=3, completion_tokens=2)
