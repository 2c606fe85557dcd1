"""A seeded corpus of malformed requests: every one must get a 4xx in the OpenAI envelope.

Each case is (method, path, headers, body, what). Templates cover the classes that once gave
500s (nesting past the recursion limit, lone UTF-16 surrogates, numbers JSON allows but no field
can hold, wrong types, duplicate Authorization headers, other methods on the completion routes,
bad admin query parameters), and a seeded RNG mutates valid bodies (truncation, byte flips,
type swaps, deletions) to reach the rest. The same seed gives the same corpus.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

Case = tuple[str, str, list[tuple[str, str]], bytes, str]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
VALID: dict[str, Any] = {
    "model": "mixtral-8x7b",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 4,
}


def _deep(depth: int, leaf: str = "1") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


def _templates() -> list[tuple[str, bytes]]:
    ok = json.dumps(VALID)[:-1]  # an open object with every required field, to append to
    base = ok[: ok.index(', "max_tokens"')]  # the same without max_tokens
    return [
        ("deep array body", _deep(1_000)),
        ("deep passthrough", f'{ok},"x":'.encode() + _deep(1_000) + b"}"),
        ("very deep", _deep(50_000)),
        ("deep object", b'{"model":"mixtral-8x7b","messages":' + b'{"a":' * 1000 + b"1" + b"}" * 1001),
        ("surrogate content", b'{"model":"mixtral-8x7b","messages":[{"role":"user","content":"\\ud800"}]}'),
        (
            "surrogate part",
            b'{"model":"mixtral-8x7b","messages":[{"role":"user","content":[{"type":"text","text":"a\\udfff"}]}]}',
        ),
        ("surrogate prompt", b'{"model":"mixtral-8x7b","prompt":"\\udbff x"}'),
        ("surrogate model", b'{"model":"\\ud800","prompt":"x"}'),
        ("invalid utf-8", b'{"model":"mixtral-8x7b","messages":[{"role":"user","content":"\xc3\x28"}]}'),
        ("max_tokens 1e400", f'{base},"max_tokens":1e400}}'.encode()),
        ("max_tokens NaN", f'{base},"max_tokens":NaN}}'.encode()),
        ("max_tokens 2**64", f'{base},"max_tokens":{2**64}}}'.encode()),
        ("max_tokens 5000 digits", f'{base},"max_tokens":{"9" * 5000}}}'.encode()),
        ("max_tokens -1", f'{base},"max_tokens":-1}}'.encode()),
        ("token id huge", b'{"model":"mixtral-8x7b","prompt":[' + b"9" * 300 + b"]}"),
        ("token id float", b'{"model":"mixtral-8x7b","prompt":[1e308]}'),
        ("model number", b'{"model":7,"messages":[]}'),
        ("messages string", b'{"model":"mixtral-8x7b","messages":"hi"}'),
        ("content number", b'{"model":"mixtral-8x7b","messages":[{"role":"user","content":1}]}'),
        ("stream string", f'{ok},"stream":"yes"}}'.encode()),
        ("stream_options list", f'{ok},"stream":true,"stream_options":[1]}}'.encode()),
        ("body null", b"null"),
        ("body empty", b""),
        ("body list", b"[]"),
        ("truncated", json.dumps(VALID).encode()[:20]),
    ]


def _mutate(rng: random.Random) -> tuple[str, bytes]:
    body: dict[str, Any] = json.loads(json.dumps(VALID))
    field = rng.choice(["model", "messages", "max_tokens", "stream", "stream_options", "prompt"])
    values: list[Any] = [
        None,
        True,
        -7,
        0,
        2**70,
        1.5,
        "",
        "x" * 50,
        [],
        {},
        [None],
        {"a": [1, {"b": "\ud800"}]},
    ]
    if field == "stream":  # never a valid stream: the suite meters those through its own clients
        values = [v for v in values if v not in (None, True, False)]
    value = rng.choice(values)
    if field == "messages" and value is None:
        body.pop("messages")
    else:
        body[field] = value
    raw = json.dumps(body).encode()  # "\ud800" is written as its escape: valid JSON, invalid text
    what = f"{field}={type(value).__name__}"
    if rng.random() < 0.25:  # break the bytes too
        cut = rng.randrange(1, len(raw))
        raw = raw[:cut] if rng.random() < 0.5 else raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1 :]
        what += " +bytes"
    return what, raw


def corpus(count: int, key: str, admin_token: str, seed: int = 0) -> Iterator[Case]:
    """At least `count` cases: every template on both routes, the header, method and admin
    cases, then seeded mutations up to `count`."""
    rng = random.Random(seed)
    auth = [("authorization", f"Bearer {key}"), ("content-type", "application/json")]
    admin = [("authorization", f"Bearer {admin_token}")]
    cases: list[Case] = []
    for what, body in _templates():
        cases.append(("POST", CHAT, auth, body, what))
        cases.append(("POST", COMPLETIONS, auth, body, what))
    dup = [
        ("authorization", f"Bearer {key}"),
        ("authorization", "Bearer sk-x"),
        ("content-type", "application/json"),
    ]
    for path in (CHAT, COMPLETIONS, "/v1/models", "/v1/usage"):
        cases.append(
            ("POST" if "completions" in path else "GET", path, dup, json.dumps(VALID).encode(), "dup auth")
        )
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        cases += [
            (method, CHAT, auth, b"", f"{method} chat"),
            (method, COMPLETIONS, auth, b"", f"{method} cmpl"),
        ]
    usage = "/admin/v1/tenants/steady/usage"
    for query in ("events=0", "events=-1", "events=abc", "events=1e3", "events=" + "9" * 40, "month=2026-13",
                  "month=%ED%A0%80", "month=x"):  # fmt: skip
        cases.append(("GET", f"{usage}?{query}", admin, b"", f"admin {query}"))
    plan = "/admin/v1/tenants/steady/plan"
    for body in (b"{bad", _deep(1000), b'{"tokens_per_minute":-1}', b'{"nope":1}', b"[]"):
        cases.append(("PUT", plan, [*admin, ("content-type", "application/json")], body, "admin plan body"))
    while len(cases) < count:
        what, body = _mutate(rng)
        cases.append(("POST", rng.choice([CHAT, COMPLETIONS]), auth, body, what))
    yield from cases
