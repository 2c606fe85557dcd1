"""The request fields the gateway reads, and the hop-by-hop header filter (pure functions).

The fuzz tests (hypothesis) hold parse_request to its contract: any bytes give a request or a
4xx GatewayError, never another exception (which the raw route would turn into a 500).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, InvalidRequest, UnprocessableRequest
from gateway.proxy import forwardable_headers
from gateway.wire import MAX_JSON_DEPTH, MAX_TOKENS_LIMIT, parse_request


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


@pytest.mark.parametrize(
    ("raw", "chat_route", "status", "code", "param"),
    [
        (b"[" * 1000 + b"]" * 1000, True, 400, "invalid_json", None),
        (
            b'{"model":"m","prompt":"x","t":' + b'{"a":' * 1000 + b"1" + b"}" * 1001,
            False,
            400,
            "invalid_json",
            None,
        ),
        (
            b'{"model":"m","prompt":"x","t":' + b"[" * 129 + b"]" * 129 + b"}",
            False,
            400,
            "invalid_json",
            None,
        ),
        (b'{"model":"m","prompt":"a\\ud800"}', False, 400, "invalid_unicode", "prompt"),
        (b'{"model":"m","prompt":["ok","\\udc00"]}', False, 400, "invalid_unicode", "prompt.1"),
        (
            b'{"model":"m","messages":[{"role":"u","content":"\\ud83d"}]}',
            True,
            400,
            "invalid_unicode",
            "messages.0.content",
        ),
        (
            b'{"model":"m","messages":[{"role":"u","content":[{"text":"\\udfff"}]}]}',
            True,
            400,
            "invalid_unicode",
            "messages.0.content.0.text",
        ),
        (
            b'{"model":"m","messages":[{"role":"u","content":[7]}]}',
            True,
            422,
            "invalid_value",
            "messages.0.content.0",
        ),
        (b'{"model":"m","prompt":"x","max_tokens":1e400}', False, 422, "invalid_value", "max_tokens"),
        (b'{"model":"m","prompt":"x","max_tokens":NaN}', False, 422, "invalid_value", "max_tokens"),
        (b'{"model":"m","prompt":"x","max_tokens":2147483648}', False, 422, "invalid_value", "max_tokens"),
        (b'{"model":"m","prompt":"x","max_tokens":' + b"9" * 5000 + b"}", False, 400, "invalid_json", None),
        (b'{"model":"m","prompt":[true]}', False, 422, "invalid_value", "prompt"),
        (b'{"model":"m","prompt":[[1,-1]]}', False, 422, "invalid_value", "prompt"),
        (b'{"model":"m","prompt":[2147483648]}', False, 422, "invalid_value", "prompt"),
    ],
)
def test_hostile_bodies_get_a_4xx_naming_the_problem(
    raw: bytes, chat_route: bool, status: int, code: str, param: str | None
) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw, chat=chat_route)
    assert (info.value.status, info.value.code, info.value.param) == (status, code, param)


def test_nesting_up_to_the_limit_is_accepted_and_passed_through() -> None:
    deep = json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))
    r = parse_request(chat(response_format=deep), chat=True)
    assert r.body["response_format"] == deep
    json.dumps(r.body)  # what api.py does when it rewrites the body: must not overflow either


def test_astral_characters_count_their_utf8_bytes() -> None:
    # A correctly paired surrogate escape is one astral character (4 UTF-8 bytes), not an error.
    assert parse_request(b'{"model":"m","prompt":"\\ud83d\\ude00"}', chat=False).prompt_bytes == 4


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_field_values = _json | st.sampled_from([[{"role": "user", "content": "x"}], "m", True, 1, 2**40, -1])


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "model",
                "messages",
                "prompt",
                "stream",
                "stream_options",
                "max_tokens",
                "max_completion_tokens",
                "n",
                "x",
            ]
        ),
        _field_values,
    ),
    chat_route=st.booleans(),
)
def test_fuzz_any_json_object_is_parsed_or_refused_with_a_4xx(
    body: dict[str, object], chat_route: bool
) -> None:
    """Whatever the JSON, parse_request returns a request or raises a 4xx GatewayError: nothing else."""
    raw = json.dumps(body).encode()
    try:
        r = parse_request(raw, chat=chat_route)
    except GatewayError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert r.prompt_bytes >= 0 and r.model == body["model"]
    assert r.max_tokens is None or 1 <= r.max_tokens <= MAX_TOKENS_LIMIT


@settings(max_examples=200, deadline=None, database=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_arbitrary_bytes_never_escape_as_other_errors(raw: bytes) -> None:
    try:
        parse_request(raw, chat=True)
    except GatewayError as exc:
        assert 400 <= exc.status < 500
