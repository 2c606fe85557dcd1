"""A Sentinel failover under load: the gateway follows the new master, meters once, limits stay global.

Real processes on 127.0.0.1: a primary, two replicas, three Sentinels (quorum 2) and two gateway
replicas whose only Redis settings are the `redis+sentinel://` URL and a durable settle (WAIT for
one replica). Clients keep calling both gateways while the primary is killed with -9 and
Sentinel promotes a replica. Afterwards the tenant's monthly quota
is cut (a run-time plan change, which must reach both gateways through the new master) and the
clients run until it is used up.

What must hold: every 200 is metered exactly once (events, request counts and tokens equal what
clients received; no request id twice), no request is metered that no client received, the
quota is never exceeded, and any 5xx is a 503 from the failover window. Every request gets an
HTTP answer within `REQUEST_BOUND_S` (derived below from the settings), and both gateways'
threads exit when stopped: a request that waited on a connection lost during the switch used to
hang until the client gave up, and kept its gateway's thread (and event loop) alive after the test.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import redis
from gwkit import plan
from redisnodes import start_sentinel_setup

from servelab.procs import Child

MSG = [{"role": "user", "content": "hi there"}]

# The gateways' Redis settings here (the connect timeout is the default) and the bound on one
# request's Redis work that follows from them (gateway/scriptconn.py's module docstring): with
# S Sentinels, no AUTH and db 0, a connect takes at most S*(c + 2t) + c + 2t (each Sentinel
# asked in turn, then the master's ROLE) and each script command at most connect + 2t. A
# request sends at most 6 (admit and settle: EVALSHA, and after NOSCRIPT SCRIPT LOAD + EVALSHA),
# plus the API-key lookup after the pub/sub resync emptied the key cache (redis-py: the pool
# wait, then asking the Sentinels, connecting and the command, retried once).
SOCKET_TIMEOUT_S = 0.5  # t
CONNECT_TIMEOUT_S = 0.5  # c (GatewaySettings' default)
POOL_TIMEOUT_S = 2.0  # GatewaySettings' default
SENTINELS = 3
_C, _T = CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S
_CONNECT_S = SENTINELS * (_C + 2 * _T) + _C + 2 * _T
_LOOKUP_S = POOL_TIMEOUT_S + 2 * (SENTINELS * (_C + _T) + _C + _T)
REQUEST_BOUND_S = 6 * (_CONNECT_S + 2 * SOCKET_TIMEOUT_S) + _LOOKUP_S + 1.0  # + 1 s for the backend and HTTP


class Load:
    """Client threads calling the gateways round-robin until told to stop; records every outcome."""

    def __init__(self, clients: list[openai.OpenAI], threads: int) -> None:
        self.clients = clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok: dict[str, int] = {}  # request id -> total tokens the client received
        self.started: dict[str, float] = {}  # request id -> when the client sent it
        self.latency: dict[str, float] = {}  # request id -> seconds to its answer, whatever it was
        self.statuses: Counter[str] = Counter()
        self.errors5xx: list[tuple[float, int, str]] = []
        self.quota_429_streak = [0] * threads
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            rid = f"sentinel-{i}-{n}"
            client = self.clients[(i + n) % len(self.clients)]
            t0 = time.monotonic()
            try:
                try:
                    r = client.chat.completions.create(
                        model="fast", messages=MSG, max_tokens=8, extra_headers={"x-request-id": rid}
                    )
                finally:
                    with self.lock:
                        self.latency[rid] = time.monotonic() - t0
            except openai.APIStatusError as exc:
                code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
                with self.lock:
                    self.statuses[f"{exc.status_code}:{code}"] += 1
                    if exc.status_code >= 500:
                        self.errors5xx.append((time.monotonic(), exc.status_code, str(code)))
                    streak = code == "insufficient_quota"
                    self.quota_429_streak[i] = self.quota_429_streak[i] + 1 if streak else 0
                time.sleep(0.01)
                continue
            except openai.APIConnectionError:  # no HTTP answer (a client timeout included)
                with self.lock:
                    self.statuses["connection"] += 1
                continue
            assert r.usage is not None
            with self.lock:
                self.ok[rid] = r.usage.total_tokens
                self.started[rid] = t0
                self.statuses["200"] += 1
                self.quota_429_streak[i] = 0

    def successes(self) -> int:
        with self.lock:
            return len(self.ok)

    def wait(self, what: str, cond: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {dict(self.statuses)}"
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(timeout=30)


def test_sentinel_failover_under_load(
    spawn: Callable[..., Child], tmp_path: Path, fast_upstream: Any, write_config: Any, gateway: Any
) -> None:
    setup = start_sentinel_setup(spawn, tmp_path / "redis")
    cfg = write_config([fast_upstream()], {"acme": plan(tokens_per_month=10**9)})
    gws = [
        gateway(
            cfg,
            redis_url=setup.url,
            spool_dir=tmp_path / f"spool-{i}",
            recovery_interval_s=0.5,
            redis_socket_timeout_s=SOCKET_TIMEOUT_S,
            redis_connect_timeout_s=CONNECT_TIMEOUT_S,
            redis_pool_timeout_s=POOL_TIMEOUT_S,
            redis_settle_wait_replicas=1,
            lease_ttl_s=5.0,
        )
        for i in range(2)
    ]
    key = gws[0].new_key("acme")
    # The client waits past the bound, so that a request the gateway never answers shows up.
    load = Load([gw.client(key, timeout=REQUEST_BOUND_S + 5) for gw in gws], threads=4)
    load.start()
    try:
        load.wait("traffic before the failover", lambda: load.successes() >= 40, 60)
        before = load.successes()
        t_failover = time.monotonic()
        setup.nodes[setup.primary_port].kill9()  # the primary dies; Sentinel promotes a replica
        load.wait("a replica to be promoted", lambda: setup.master_port() in setup.replica_ports, 30)
        t_promoted = time.monotonic()
        load.wait("traffic on the new master", lambda: load.successes() >= before + 60, 60)

        # Cut the quota at run time: the change travels through the new master to both replicas.
        used = gws[0].usage("acme")["quota"]["tokens_used"]
        quota = used + 600
        with gws[0].admin() as c:
            assert c.put("/admin/v1/tenants/acme/plan", json={"tokens_per_month": quota}).status_code == 200

        def plan_everywhere() -> bool:
            plans = []
            for gw in gws:
                with gw.admin() as c:
                    plans.append(c.get("/admin/v1/tenants/acme").json()["plan"]["tokens_per_month"])
            return plans == [quota, quota]

        load.wait("the plan change on both gateways", plan_everywhere, 10)
        # Requests admitted before a gateway heard of the change may pass the new quota; from
        # here on no admission may: the counter never grows past max(quota, where it is now).
        at_cut = gws[0].usage("acme")["quota"]["tokens_used"]
        load.wait("the quota to run out on every client", lambda: min(load.quota_429_streak) >= 3, 60)
    finally:
        load.finish()
    assert not any(w.is_alive() for w in load.workers), "a client thread is still waiting for an answer"

    # Settles that hit the failover went to the spool; the replay is asynchronous: poll for it.
    new_master = redis.Redis(port=setup.master_port())
    deadline = time.monotonic() + 30
    while True:
        report = gws[0].usage("acme")
        if report["totals"]["requests"] >= len(load.ok) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    with new_master:
        events = new_master.xrange("events:{acme}")
        # An admission whose reply the dying primary never sent may have reached the new master
        # (the gateway answered 503): the gateway's release frees it (spooled until the new
        # master answers), and the lease TTL bounds it in any case.
        deadline = time.monotonic() + 5.0 + 5
        while True:
            now_ms = new_master.time()[0] * 1000
            leases = new_master.zcount("lease:{acme}", now_ms, "+inf")  # live (unexpired) leases
            if not leases or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    ids = [f[b"request_id"].decode() for _, f in events if f[b"status"] == b"200"]
    twice = [rid for rid, n in Counter(ids).items() if n > 1]
    assert not twice, f"metered twice: {twice[:10]}"
    assert set(ids) == set(load.ok), (
        f"served but not metered: {len(set(load.ok) - set(ids))} of {len(load.ok)}, e.g. "
        f"{sorted(set(load.ok) - set(ids))[:10]}; "
        f"metered but not served: {sorted(set(ids) - set(load.ok))[:10]}"
    )
    totals = report["totals"]
    assert totals["requests"] == len(load.ok)
    assert totals["prompt_tokens"] + totals["completion_tokens"] == sum(load.ok.values())
    assert report["quota"]["tokens_used"] <= max(quota, at_cut), (report["quota"], quota, at_cut)
    assert leases == 0
    # Any 5xx is the failover window's 503 (a request that met the switch), never a 500.
    assert all(status == 503 for _, status, _ in load.errors5xx), load.errors5xx
    late = [t for t, _, _ in load.errors5xx if t > t_promoted + 15]
    assert not late, f"5xx long after the promotion: {len(late)}"
    assert load.successes() > before + 60
    # Every request got an HTTP answer, and within the bound.
    assert "connection" not in load.statuses, f"requests with no HTTP answer: {dict(load.statuses)}"
    slowest = max(load.latency.values())
    assert slowest <= REQUEST_BOUND_S, (slowest, REQUEST_BOUND_S)
    # Both gateways shut down: no request or task of theirs is left running.
    assert [gw.stop() for gw in gws] == [True, True], "a gateway thread did not exit"
    print(
        f"failover: promoted in {t_promoted - t_failover:.2f}s; outcomes {dict(load.statuses)}; "
        f"metered {totals['requests']} requests, quota {report['quota']['tokens_used']}/{quota}; "
        f"slowest answer {slowest:.2f}s (bound {REQUEST_BOUND_S:.1f}s)"
    )
