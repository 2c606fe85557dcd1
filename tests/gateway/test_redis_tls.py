"""Redis URL forms, and the gateway on a Redis that speaks only TLS and wants AUTH (password, ACL user).

The TLS node is a real redis-server with a throwaway CA made by `openssl`; it needs a binary
built with TLS (Debian's redis-server, which .ci/run installs). Without one the test fails and
says so: a skip would let rediss:// support rot unnoticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from gwkit import plan
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redisnodes import TlsRedis, start_tls_redis

from gateway.redistarget import RedisTarget
from gateway.scriptconn import Script, ScriptConnection
from gateway.settings import GatewaySettings
from servelab.procs import Child


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("redis://127.0.0.1:7000/2", {"host": "127.0.0.1", "port": 7000, "db": 2, "tls": False}),
        ("redis://:pw@h", {"host": "h", "port": 6379, "password": "pw", "username": None}),
        ("redis://alice:p%40ss@h:1/0", {"username": "alice", "password": "p@ss"}),
        ("rediss://h:6380?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none", {"tls": True, "port": 6380}),
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/main/3?sentinel_password=x",
            {
                "sentinels": (("s1", 26380), ("s2", 26379), ("::1", 26381)),
                "master_name": "main",
                "db": 3,
                "sentinel_password": "x",
            },
        ),
        ("rediss+sentinel://u:p@s1/m", {"tls": True, "username": "u", "password": "p", "master_name": "m"}),
    ],
)
def test_url_forms(url: str, want: dict[str, Any]) -> None:
    t = RedisTarget.parse(url)
    assert {k: getattr(t, k) for k in want} == want


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "unsupported Redis URL scheme 'http'"),
        ("redis://h:70000", "bad host:port"),
        ("redis://h/x", "bad database number"),
        ("redis://a,b", "only a Sentinel URL takes a list"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis://u:secret@h?ssl_ca_certs=x", "unknown parameter(s) ssl_ca_certs"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
    ],
)
def test_bad_urls_are_refused_at_start_up_without_echoing_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        GatewaySettings(redis_url=url)
    assert message in str(info.value)
    assert "secret" not in str(info.value)


async def _whoami(url: str) -> tuple[bytes, bytes]:
    conn = ScriptConnection(url, connect_timeout_s=5, command_timeout_s=5)
    try:
        echo = Script(conn, "return ARGV[1]")
        return await conn.execute("ACL", "WHOAMI"), await echo([], ["over tls"])
    finally:
        await conn.close()


async def _tls_and_auth_cases(node: TlsRedis) -> None:
    assert await _whoami(node.url(f"{node.acl_user}:{node.acl_password}")) == (b"gateway", b"over tls")
    assert (await _whoami(node.url(f":{node.password}")))[0] == b"default"
    mtls = node.url(f":{node.password}", ssl_certfile=str(node.certs.client_cert),
                    ssl_keyfile=str(node.certs.client_key))  # fmt: skip
    assert (await _whoami(mtls))[0] == b"default"
    with pytest.raises(AuthenticationError, match="refused AUTH"):
        await _whoami(node.url(f"{node.acl_user}:wrong"))
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):  # not our CA: refused
        await _whoami(f"rediss://:{node.password}@127.0.0.1:{node.port}/0")
    with pytest.raises(RedisConnectionError):  # plain TCP to a TLS-only port
        await _whoami(f"redis://:{node.password}@127.0.0.1:{node.port}/0")
    await asyncio.sleep(0.2)  # let the refused transports finish closing before the loop does


def test_hot_path_client_speaks_tls_and_auth(spawn: Callable[..., Child], tmp_path: Path) -> None:
    asyncio.run(_tls_and_auth_cases(start_tls_redis(spawn, tmp_path)))


def test_gateway_meters_over_tls_with_an_acl_user(
    spawn: Callable[..., Child], tmp_path: Path, fast_upstream: Any, write_config: Any, gateway: Any
) -> None:
    node: TlsRedis = start_tls_redis(spawn, tmp_path)
    url = node.url(f"{node.acl_user}:{node.acl_password}")
    gw = gateway(write_config([fast_upstream()], {"acme": plan()}), redis_url=url)
    client = gw.client(gw.new_key("acme"))
    got = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    stream = client.completions.create(model="fast", prompt="hello", max_tokens=4, stream=True)
    chunks = list(stream)
    assert got.usage is not None and chunks
    totals = gw.usage("acme")["totals"]
    assert totals["requests"] == 2
    assert totals["completion_tokens"] == 4 + 4
    with redis.Redis(port=node.port, ssl=True, ssl_ca_certs=str(node.certs.ca), username=node.acl_user,
                     password=node.acl_password) as r:  # fmt: skip
        assert r.zcard("lease:{acme}") == 0
        assert r.xlen("events:{acme}") == 2
