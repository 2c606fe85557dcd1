"""Malformed bodies, headers, methods and query parameters: each gets a 4xx OpenAI error, never a 500.

Every case goes over plain HTTP to a real gateway (the bytes are the point, so no SDK here), and
after the whole corpus the same replica still answers /healthz and serves a normal request, and
nothing was leased or metered for a rejected request.
"""

from __future__ import annotations

from typing import Any

import httpx
import redis
from gwkit import ADMIN_TOKEN, plan

DEEP = 1_000  # the nesting depth: past CPython's default recursion limit of 1,000


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": "hi"}], **kw}


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


# (name, path, raw body, expected status); the body is sent as-is with a valid key.
BODIES: list[tuple[str, str, bytes, int]] = [
    ("deep array body", "/v1/chat/completions", _nested(DEEP).encode(), 400),
    (
        "deep array in passthrough",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"hi"}],"x":' + _nested(DEEP).encode() + b"}",
        400,
    ),
    (
        "deep object in messages",
        "/v1/chat/completions",
        b'{"model":"fast","messages":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        400,
    ),
    ("very deep array", "/v1/completions", _nested(100_000).encode(), 400),
    (
        "deep content parts",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":' + _nested(DEEP, '"x"').encode() + b"}]}",
        400,
    ),
    (
        "lone surrogate in content",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"a\\ud800b"}]}',
        400,
    ),
    (
        "lone low surrogate in content part",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":[{"type":"text","text":"\\udfff"}]}]}',
        400,
    ),
    ("lone surrogate in prompt", "/v1/completions", b'{"model":"fast","prompt":"\\udbff"}', 400),
    ("lone surrogate in prompt list", "/v1/completions", b'{"model":"fast","prompt":["ok","\\ud800"]}', 400),
    ("lone surrogate in model", "/v1/completions", b'{"model":"\\ud800","prompt":"x"}', 404),
    (
        "invalid utf-8",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"\xff\xfe"}]}',
        400,
    ),
    ("empty body", "/v1/chat/completions", b"", 400),
    ("body is null", "/v1/chat/completions", b"null", 400),
    ("body is a list", "/v1/completions", b"[]", 400),
    ("body is a number", "/v1/completions", b"1e999", 400),
    ("max_tokens 1e400", "/v1/completions", b'{"model":"fast","prompt":"x","max_tokens":1e400}', 422),
    ("max_tokens NaN", "/v1/completions", b'{"model":"fast","prompt":"x","max_tokens":NaN}', 422),
    (
        "max_tokens 10**30",
        "/v1/completions",
        b'{"model":"fast","prompt":"x","max_tokens":' + b"1" + b"0" * 30 + b"}",
        422,
    ),
    (
        "max_tokens 2**63",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"x"}],"max_completion_tokens":9223372036854775808}',
        422,
    ),
    (
        "max_tokens 5000 digits",
        "/v1/completions",
        b'{"model":"fast","prompt":"x","max_tokens":' + b"9" * 5000 + b"}",
        400,
    ),
    ("max_tokens string", "/v1/completions", b'{"model":"fast","prompt":"x","max_tokens":"10"}', 422),
    ("max_tokens true", "/v1/completions", b'{"model":"fast","prompt":"x","max_tokens":true}', 422),
    ("max_tokens 1.5", "/v1/completions", b'{"model":"fast","prompt":"x","max_tokens":1.5}', 422),
    ("token id huge", "/v1/completions", b'{"model":"fast","prompt":[' + b"9" * 400 + b"]}", 422),
    ("token id float", "/v1/completions", b'{"model":"fast","prompt":[1.5e308]}', 422),
    ("token id negative", "/v1/completions", b'{"model":"fast","prompt":[[1,-5]]}', 422),
    ("model number", "/v1/completions", b'{"model":5,"prompt":"x"}', 422),
    ("model list", "/v1/completions", b'{"model":["fast"],"prompt":"x"}', 422),
    ("model huge string", "/v1/completions", b'{"model":"' + b"m" * 100_000 + b'","prompt":"x"}', 404),
    ("messages object", "/v1/chat/completions", b'{"model":"fast","messages":{"role":"user"}}', 422),
    ("message not object", "/v1/chat/completions", b'{"model":"fast","messages":[1]}', 422),
    (
        "role not string",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":1,"content":"x"}]}',
        422,
    ),
    (
        "content number",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":5}]}',
        422,
    ),
    (
        "content part text number",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}',
        422,
    ),
    (
        "content part not object",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":[5]}]}',
        422,
    ),
    ("prompt object", "/v1/completions", b'{"model":"fast","prompt":{"a":1}}', 422),
    (
        "stream string",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"x"}],"stream":"yes"}',
        422,
    ),
    (
        "stream_options list",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":[]}',
        422,
    ),
    (
        "stream_options without stream",
        "/v1/chat/completions",
        b'{"model":"fast","messages":[{"role":"user","content":"x"}],"stream_options":{}}',
        400,
    ),
]


def _error(r: httpx.Response, status: int, what: str) -> str | None:
    """None when `r` is the expected OpenAI error, else what is wrong with it."""
    if r.status_code != status:
        return f"{what}: HTTP {r.status_code} (want {status}): {r.text[:200]}"
    if not r.headers.get("content-type", "").startswith("application/json"):
        return f"{what}: content-type {r.headers.get('content-type')}"
    err = r.json().get("error", {})
    if set(err) != {"message", "type", "param", "code"} or not err["message"] or not err["type"]:
        return f"{what}: not an OpenAI error body: {r.text[:200]}"
    return None


def test_malformed_input_gets_openai_4xx_and_replica_stays_healthy(
    fast_upstream: Any, write_config: Any, gateway: Any, redis_url: str
) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan()}))
    key = gw.new_key("acme")
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    problems: list[str | None] = []
    served = 0
    check = problems.append
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for what, path, body, status in BODIES:
            check(_error(c.post(path, content=body, headers=auth), status, what))

        # Headers: two Authorization headers are ambiguous (which key pays?), so 400 before auth.
        dup = [("authorization", f"Bearer {key}"), ("authorization", "Bearer sk-other"),
               ("content-type", "application/json")]  # fmt: skip
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/usage"):
            method = "POST" if "completions" in path else "GET"
            r = c.request(method, path, content=b'{"model":"fast","prompt":"x"}', headers=dup)
            check(_error(r, 400, f"duplicate authorization on {path}"))
            if r.status_code == 400 and r.json()["error"]["code"] != "duplicate_header":
                check(f"duplicate authorization on {path}: code {r.json()['error']['code']}")
        r = c.post("/v1/completions", content=b"{}", headers={"authorization": "Basic Zm9vOmJhcg=="})
        check(_error(r, 401, "basic auth"))
        r = c.post("/v1/completions", content=b"{}", headers={"authorization": b"Bearer \xe9\xff"})
        check(_error(r, 401, "latin-1 key"))

        # Methods: the completion routes answer 405 with Allow: POST to anything else.
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
            for path in ("/v1/chat/completions", "/v1/completions"):
                r = c.request(method, path, headers=auth)
                check(_error(r, 405, f"{method} {path}"))
                if r.headers.get("allow") != "POST":
                    check(f"{method} {path}: allow header {r.headers.get('allow')!r}")
        r = c.head("/v1/chat/completions", headers=auth)
        if r.status_code != 405 or r.headers.get("allow") != "POST":
            check(f"HEAD: {r.status_code} {r.headers}")

        # Admin query parameters and bodies.
        usage = "/admin/v1/tenants/acme/usage"
        for params in [{"events": "-1"}, {"events": "1001"}, {"events": "abc"}, {"events": "1" + "0" * 30},
                       {"events": "1e3"}, {"month": "2026-13"}, {"month": "not-a-month"}]:  # fmt: skip
            check(_error(c.get(usage, params=params, headers=admin), 422, f"usage {params}"))
        for query in ("month=%ED%A0%80", "month=%00", "events=%ff"):  # undecodable / odd bytes
            check(_error(c.get(f"{usage}?{query}", headers=admin), 422, f"usage ?{query}"))
        for month in ("2026-13", "abc", "%ED%A0%80", "2026-1"):  # the tenant's own /v1/usage too
            check(_error(c.get(f"/v1/usage?month={month}", headers=auth), 400, f"/v1/usage month={month}"))
        r = c.get(usage, params={"events": "0"}, headers=admin)
        if r.status_code != 200 or r.json().get("recent_events") != []:
            check(f"usage events=0: {r.status_code} {r.text[:200]}")
        for pbody in ({"requests_per_minute": -1}, {"fair_share_weight": "x"}, {"nope": 1}, [],
                      {"tokens_per_minute": 1.5}, {"max_concurrent_requests": "1e3"}):  # fmt: skip
            r = c.put("/admin/v1/tenants/acme/plan", json=pbody, headers=admin)
            check(_error(r, 422, f"plan {str(pbody)[:40]}"))
        # Absurd but well-typed limits may be accepted; requests afterwards must still not 500.
        for pbody in (
            {"tokens_per_minute": 10**30, "tokens_per_month": 10**30},
            {"fair_share_weight": 1e300},
        ):
            r = c.put("/admin/v1/tenants/acme/plan", json=pbody, headers=admin)
            if r.status_code != 200:
                check(_error(r, 422, f"plan {str(pbody)[:40]}"))
            done = c.post(
                "/v1/completions", json={"model": "fast", "prompt": "x", "max_tokens": 2}, headers=auth
            )
            if done.status_code >= 500:
                check(f"completion after plan {pbody}: {done.status_code} {done.text[:200]}")
            served += done.status_code == 200
        assert c.delete("/admin/v1/tenants/acme/plan", headers=admin).status_code == 200
        jhead = {**admin, "content-type": "application/json"}
        check(
            _error(c.put("/admin/v1/tenants/acme/plan", content=b"{bad", headers=jhead), 422, "plan bad json")
        )
        r = c.put("/admin/v1/tenants/acme/plan", content=_nested(DEEP).encode(), headers=jhead)
        check(_error(r, 400 if r.status_code == 400 else 422, "plan deep json"))
        r = c.post("/admin/v1/tenants/acme/keys", json={"name": "n" * 101}, headers=admin)
        check(_error(r, 422, "key name too long"))
        check(_error(c.delete("/admin/v1/keys/%00%ff", headers=admin), 404, "revoke unknown id"))
        check(_error(c.get("/admin/v1/tenants/%ff%fe", headers=admin), 404, "tenant bad utf-8"))

        # The replica is fine afterwards, and nothing above was leased or metered.
        assert c.get("/healthz").json() == {"status": "ok"}
        ok = c.post("/v1/chat/completions", json=_chat(max_tokens=4), headers=auth)
        assert ok.status_code == 200, ok.text
        served += 1
    found = [p for p in problems if p]
    assert not found, "\n".join(found)
    with redis.Redis.from_url(redis_url) as r:
        assert r.zcard("lease:{acme}") == 0
    assert gw.usage("acme")["totals"]["requests"] == served
