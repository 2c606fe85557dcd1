"""The request fields the gateway reads, and the hop-by-hop header filter (pure functions)."""

from __future__ import annotations

import json

import pytest

from gateway.errors import InvalidRequest, UnprocessableRequest
from gateway.proxy import forwardable_headers
from gateway.wire import parse_request


def chat(**kw: object) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hello world!"}], **kw}
    ).encode()


def test_reads_only_what_it_needs() -> None:
    r = parse_request(
        chat(max_tokens=7, stream=True, stream_options={"include_usage": True}, seed=1), chat=True
    )
    assert (r.model, r.stream, r.max_tokens, r.client_wants_usage) == ("m", True, 7, True)
    assert r.prompt_bytes == 12 and r.prompt_tokens_estimate == 3
    assert r.body["seed"] == 1


def test_content_parts_and_completion_prompts() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}]}
    assert parse_request(json.dumps(body).encode(), chat=True).prompt_bytes == 4
    assert parse_request(b'{"model":"m","prompt":["ab","cd"]}', chat=False).prompt_bytes == 4
    assert parse_request(b'{"model":"m","prompt":[1,2,3]}', chat=False).prompt_tokens_estimate == 3


@pytest.mark.parametrize(
    ("raw", "exc", "param"),
    [
        (b"{not json", InvalidRequest, None),
        (b"[1]", InvalidRequest, None),
        (b'{"messages": []}', InvalidRequest, "model"),
        (b'{"model": "m"}', InvalidRequest, "messages"),
        (b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}', UnprocessableRequest, "model"),
        (chat(max_tokens=0), UnprocessableRequest, "max_tokens"),
        (chat(max_tokens="5"), UnprocessableRequest, "max_tokens"),
        (chat(max_completion_tokens=-1), UnprocessableRequest, "max_completion_tokens"),
        (chat(stream="yes"), UnprocessableRequest, "stream"),
        (chat(stream_options={"include_usage": True}), InvalidRequest, "stream_options"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', UnprocessableRequest, "messages.0"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": 5}]}',
            UnprocessableRequest,
            "messages.0.content",
        ),
    ],
)
def test_bad_bodies_name_the_field(raw: bytes, exc: type[Exception], param: str | None) -> None:
    with pytest.raises(exc) as info:
        parse_request(raw, chat=True)
    assert type(info.value) is exc
    assert info.value.param == param  # type: ignore[attr-defined]
    if param:
        assert f"'{param}'" in str(info.value)


def test_hop_by_hop_headers_are_dropped() -> None:
    out = forwardable_headers(
        [
            ("Content-Type", "application/json"),
            ("Connection", "keep-alive, X-Private"),
            ("Keep-Alive", "5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Private", "1"),
            ("Content-Length", "10"),
            ("X-Upstream", "a"),
        ]
    )
    assert out == {"content-type": "application/json", "x-upstream": "a"}
