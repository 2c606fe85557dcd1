"""Where Redis is, from one URL, and following it when Sentinel moves the master.

Both Redis clients of a gateway (redis-py for admin, keys and pub/sub; scriptconn.py's lean
connection for the hot-path scripts) are built from the one `RedisTarget` parsed here, so they
cannot disagree about the node, the credentials or TLS:

    redis://[[user]:password@]host[:port][/db]
    rediss://...?ssl_ca_certs=ca.pem[&ssl_certfile=..&ssl_keyfile=..&ssl_cert_reqs=required
                 &ssl_check_hostname=true]                         TLS, redis-py's parameter names
    redis+sentinel://[[user]:password@]h1[:26379],h2,h3/<master>[/db][?sentinel_password=..]
    rediss+sentinel://...                                           TLS to Sentinels and master

A bad URL is refused with a message that names the problem and never the password.

`FailoverWatch` subscribes to the Sentinels' `+promoted-slave` and `+switch-master` and drops
every connection at once (the script connection, the redis-py pool, the pub/sub client). Without
it a gateway keeps writing to the old master over its open connections until Sentinel demotes
that node, which takes seconds, and everything written there in between is discarded when it resyncs
from the new one (measured in tests/gateway/test_sentinel.py: most requests served after a
`SENTINEL FAILOVER` were missing from the new master's usage). What is written in the short
window before the event arrives (up to a second: Sentinel polls the promoted replica's role) is
covered by the durable settle (scriptconn.py's WAIT); see docs/scaling.md for the bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.redis")

_SCHEMES = {"redis": (False, False), "rediss": (True, False),
            "redis+sentinel": (False, True), "rediss+sentinel": (True, True)}  # fmt: skip
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _host_port(item: str, default_port: int, url: str) -> tuple[str, int]:
    host, port = item, str(default_port)
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif item.count(":") == 1:
        host, port = item.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad host:port {item!r} in Redis URL {_redact(url)!r}")
    return host, int(port)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hosts}"


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to authenticate, parsed once from the URL; see the module docstring."""

    url: str
    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls_params: tuple[tuple[str, str], ...] = ()
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Raise ValueError naming what is wrong (never echoing the password)."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r}: use one of {', '.join(sorted(_SCHEMES))}"
            )
        tls, sentinel = _SCHEMES[parts.scheme]
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        user, has_pw, password = userinfo.partition(":")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        allowed = (_TLS_PARAMS if tls else ()) + (_SENTINEL_PARAMS if sentinel else ())
        unknown = sorted(set(query) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} in Redis URL {_redact(url)!r}; "
                f"this scheme takes: {', '.join(allowed) or 'none'}"
            )
        if query.get("ssl_cert_reqs", "required") not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        path = [p for p in parts.path.split("/") if p]
        master_name = None
        if sentinel:
            if not path:
                raise ValueError(
                    f"Redis URL {_redact(url)!r} names no master: use {parts.scheme}://host:26379/<master>[/db]"
                )
            master_name = unquote(path.pop(0))
        if len(path) > 1 or (path and not path[0].isdigit()):
            raise ValueError(f"bad database number in Redis URL {_redact(url)!r}")
        hosts = [h for h in hostlist.split(",") if h]
        if not hosts:
            hosts = ["127.0.0.1"]
        if len(hosts) > 1 and not sentinel:
            raise ValueError(f"several hosts in Redis URL {_redact(url)!r}: only a Sentinel URL takes a list")
        addrs = tuple(_host_port(h, 26379 if sentinel else 6379, url) for h in hosts)
        return cls(
            url=url,
            tls=tls,
            host=addrs[0][0],
            port=addrs[0][1],
            db=int(path[0]) if path else 0,
            username=unquote(user) if user else None,
            password=unquote(password) if has_pw else None,
            tls_params=tuple((k, v) for k, v in query.items() if k in _TLS_PARAMS),
            sentinels=addrs if sentinel else (),
            master_name=master_name,
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
        )

    @property
    def redacted(self) -> str:
        """The URL with the password replaced, for logs and errors."""
        return _redact(self.url)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for rediss:// (verifies the server unless ssl_cert_reqs=none)."""
        if not self.tls:
            return None
        p = dict(self.tls_params)
        ctx = ssl.create_default_context(cafile=p.get("ssl_ca_certs"))
        if p.get("ssl_certfile"):
            ctx.load_cert_chain(p["ssl_certfile"], p.get("ssl_keyfile"))
        reqs = _CERT_REQS[p.get("ssl_cert_reqs", "required")]
        ctx.check_hostname = reqs != ssl.CERT_NONE and p.get("ssl_check_hostname", "true").lower() in (
            "1", "true", "yes", "on",
        )  # fmt: skip
        ctx.verify_mode = reqs
        return ctx

    def redis_py_kwargs(self) -> dict[str, Any]:
        """Connection keywords for redis-py (Redis(...) or Sentinel.master_for) meaning the same."""
        kw: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.tls:
            kw["ssl"] = True
            for k, v in self.tls_params:
                kw[k] = v.lower() in ("1", "true", "yes", "on") if k == "ssl_check_hostname" else v
        return kw


def _master_event(channel: str, data: str) -> tuple[str, str, str]:
    """(event, master name, new master address) from a Sentinel event message.

    +switch-master: "<master> <old ip> <old port> <new ip> <new port>"
    +promoted-slave: "slave <ip>:<port> <ip> <port> @ <master> <old ip> <old port>"
    """
    f = data.split()
    if channel == "+switch-master":
        return channel, f[0], f"{f[3]}:{f[4]}"
    return channel, f[5], f"{f[2]}:{f[3]}"


class FailoverWatch:
    """Follows the Sentinels' failover events and runs its callbacks the moment the master moves.

    Runs as one background task per gateway (app.py starts it only for a Sentinel URL). It also
    runs the callbacks after each resubscription, since a switch may have happened while it was
    not listening; a needless reconnect costs one round trip, a missed one costs metering.
    """

    def __init__(self, target: RedisTarget, *, connect_timeout_s: float) -> None:
        self._target = target
        self._connect_timeout = connect_timeout_s
        self._callbacks: list[Callable[[str], Awaitable[None] | None]] = []
        self.switches = 0
        self.subscriptions = 0

    def on_switch(self, callback: Callable[[str], Awaitable[None] | None]) -> None:
        self._callbacks.append(callback)

    async def _notify(self, reason: str) -> None:
        for cb in self._callbacks:
            try:
                result = cb(reason)
                if result is not None:
                    await result
            except Exception:  # one failing listener must not stop the others
                log.exception("Failover callback failed: reason=%s", reason)

    async def run(self) -> None:
        """Forever: subscribe on one Sentinel after another; back off when none answers."""
        t = self._target
        kw: dict[str, Any] = {
            "socket_connect_timeout": self._connect_timeout,
            "username": t.sentinel_username,
            "password": t.sentinel_password,
        }
        if t.tls:
            kw.update({k: v for k, v in t.redis_py_kwargs().items() if k.startswith("ssl")})
        backoff = 0.1
        while True:
            for host, port in t.sentinels:
                client = Redis(host=host, port=port, **kw)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    # +promoted-slave comes as soon as Sentinel sees the replica answer as master;
                    # +switch-master only after the other replicas were re-pointed (seconds later).
                    await pubsub.subscribe("+promoted-slave", "+switch-master")
                    if self.subscriptions:  # not the first: a switch may have gone by meanwhile
                        await self._notify(f"resubscribed to Sentinel {host}:{port}")
                    self.subscriptions += 1
                    backoff = 0.1
                    while True:
                        msg = await pubsub.get_message(timeout=None)
                        if msg is None or msg.get("type") != "message":
                            continue
                        event, name, new = _master_event(msg["channel"].decode(), msg["data"].decode())
                        if name != t.master_name:
                            continue
                        self.switches += 1
                        log.warning(
                            "Redis master moved, dropping connections: %s master=%s new=%s", event, name, new
                        )
                        await self._notify(f"{event}: master now at {new}")
                except (RedisError, OSError, ValueError) as exc:
                    log.warning("Sentinel watch lost %s:%s, trying the next: error=%s", host, port, exc)
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                    with contextlib.suppress(RedisError, OSError):
                        await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
