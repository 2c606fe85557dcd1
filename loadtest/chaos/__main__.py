"""The chaos suite: faults, long streams, hostile and malformed input against a live local platform.

    .venv/bin/python -m loadtest.chaos --out docs/results/chaos.md      (or: make chaos)

Brings up on 127.0.0.1, through servelab's stack supervisor: Redis with AOF, 2 simulated
Mixtral-8x7B backends and 3 gateway replicas (lease TTL 3 s, heartbeat 0.5 s, recovery tick
0.5 s, one shared spool folder). Steady traffic (plain and streamed) runs across the replicas
while, phase by phase, it

1. kills one replica with -9 in the middle of long streams (survivors meter them from their
   last checkpoint);
2. SIGKILLs Redis under load and restarts it on the same AOF (settles spool, then replay);
3. runs a storm of client disconnects (streams dropped after 1 to 12 tokens);
4. holds a concurrency-limited tenant's slots with streams longer than the lease TTL while
   a prober keeps knocking;
5. bursts hostile prompts ("a a a", digits, CJK, emoji, many short messages) at a
   tokens-per-minute-limited tenant, a request flood at a requests-per-minute tenant, and a
   quota tenant until its month is used up;
6. sends the malformed corpus (loadtest/chaos/malformed.py) to the surviving replicas.

From the disconnect storm on, one tenant at a time uses the backends and everything is drained
between phases, so the simulators' own token counters split by tenant. It prints, per tenant,
tokens the backends generated vs metered (Redis) vs received (clients), each limit's overshoot,
5xx per phase and request ids metered twice, and exits 1 if anything is outside the bounds in
loadtest/chaos/verdict.py.
Everything is bounded: about 3,000 requests, a few minutes, processes stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from loadtest.chaos import verdict
from loadtest.chaos.malformed import corpus
from loadtest.chaos.traffic import Call, Ledger, chat_body, complete, raw, stream
from servelab.stack import Stack, StackConfig, demo_config_path

HEARTBEAT_S = 0.5
LEASE_TTL_S = 3.0
TPM = 6_000
RPM = 60
CONC = 3
QUOTA = 20_000
PLANS = {
    "big": {"requests_per_minute": 600_000, "tokens_per_minute": 50_000_000, "tokens_per_month": 10**10,
            "max_concurrent_requests": 1000, "default_max_tokens": 64},
    "tpm": {"requests_per_minute": 600_000, "tokens_per_minute": TPM, "tokens_per_month": 10**10,
            "max_concurrent_requests": 1000, "default_max_tokens": 16},
    "rpm": {"requests_per_minute": RPM, "tokens_per_minute": 50_000_000, "tokens_per_month": 10**10,
            "max_concurrent_requests": 1000, "default_max_tokens": 4},
    "conc": {"requests_per_minute": 600_000, "tokens_per_minute": 50_000_000, "tokens_per_month": 10**10,
             "max_concurrent_requests": CONC, "default_max_tokens": 16},
    "quota": {"requests_per_minute": 600_000, "tokens_per_minute": 50_000_000, "tokens_per_month": QUOTA,
              "max_concurrent_requests": 1000, "default_max_tokens": 64},
}  # fmt: skip
TENANTS = {"steady": "big", "hostile": "tpm", "flood": "rpm", "holder": "conc", "capped": "quota"}
HOSTILE = {
    "a a a": "a " * 500,
    "digits": "".join(str(i % 10) for i in range(1000)),
    "cjk": "数据中心的推理服务" * 40,
    "emoji": "🙂🚀🔥" * 80,
}


def hostile_bodies() -> list[dict[str, Any]]:
    """Six of each shape, all at once: about 2 bytes per token and worse, and many tiny messages."""
    bodies = []
    for text in HOSTILE.values():
        bodies += [chat_body(text, 16)] * 6
    return bodies + [chat_body([{"role": "user", "content": "1"}] * 30, 16)] * 6


class Run:
    """One chaos run: the stack, the ledger, the phase windows."""

    def __init__(self, stack: Stack, info: dict[str, Any], ledger: Ledger, log: Any) -> None:
        self.stack = stack
        self.info = info
        self.ledger = ledger
        self.say = log
        self.names = dict(zip(info["gateway_urls"], ["gateway", "gateway-1", "gateway-2"], strict=False))
        self.alive = list(info["gateway_urls"])
        self.keys: dict[str, str] = info["keys"]
        self.phase = "start"
        self.windows: dict[str, tuple[float, float]] = {}
        self.allowed_5xx: list[tuple[float, float]] = []
        self.stop_steady = threading.Event()
        self.t_redis_kill = 0.0
        self.notes: dict[str, Any] = {}

    def gw(self, i: int) -> str:
        return self.alive[i % len(self.alive)]

    # -- traffic ---------------------------------------------------------------------------------
    def _steady(self, worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(timeout=60) as http:
            n = 0
            while not self.stop_steady.is_set():
                n += 1
                gw, key = self.gw(worker + n), self.keys["steady"]
                if rng.random() < 0.5:
                    c = complete(http, self.ledger, gw, key, "steady", self.phase, chat_body("say hi", 16))
                else:
                    c = stream(
                        http, self.ledger, gw, key, "steady", self.phase, chat_body("count", 24, stream=True)
                    )
                if c.status >= 500:
                    time.sleep(0.05)  # a client backing off, not spinning on 503s

    def phase_begin(self, name: str) -> None:
        self.phase = name
        self.windows[name] = (time.monotonic(), 0.0)
        self.say(f"phase {name}")

    def phase_end(self, name: str) -> None:
        self.windows[name] = (self.windows[name][0], time.monotonic())

    # -- phases ----------------------------------------------------------------------------------
    def replica_kill(self) -> None:
        victim = self.info["gateway_urls"][2]
        first_tokens = threading.Barrier(7)
        calls: list[Call] = []

        def long_stream() -> None:
            def mark(c: Call) -> None:
                if c.completion_tokens == 20:  # past the first heartbeat at ~30 ms/token
                    first_tokens.wait(timeout=60)

            with httpx.Client(timeout=60) as http:
                calls.append(stream(http, self.ledger, victim, self.keys["steady"], "steady", self.phase,
                                    chat_body("a long story", 400, stream=True), on_chunk=mark))  # fmt: skip

        threads = [threading.Thread(target=long_stream) for _ in range(6)]
        for t in threads:
            t.start()
        first_tokens.wait(timeout=90)
        time.sleep(0.3)
        self.alive.remove(victim)  # clients stop choosing it, as a load balancer would
        self.stack.kill("gateway-2", hard=True)
        self.notes["killed"] = victim
        self.say("  killed gateway-2 (-9) with 6 streams at >= 20 tokens in")
        for t in threads:
            t.join(timeout=120)
        time.sleep(LEASE_TTL_S + 3 * HEARTBEAT_S + 2)  # leases lapse, a survivor recovers them

    def redis_kill(self) -> None:
        streams = [threading.Thread(target=self._one_stream, args=(i, 120)) for i in range(4)]
        for t in streams:
            t.start()
        time.sleep(1.5)
        self.t_redis_kill = time.monotonic()
        self.stack.kill("redis", hard=True)
        self.say("  SIGKILLed redis")
        time.sleep(3)
        self.stack.restart("redis")
        t_up = time.monotonic()
        self.say(f"  redis restarted on its AOF after {t_up - self.t_redis_kill:.1f} s")
        # 503s are the designed answer while Redis is away and until each replica reconnects.
        self.allowed_5xx.append((self.t_redis_kill, t_up + 3.0))
        for t in streams:
            t.join(timeout=120)
        time.sleep(3)

    def _one_stream(self, i: int, max_tokens: int) -> None:
        with httpx.Client(timeout=60) as http:
            stream(http, self.ledger, self.gw(i), self.keys["steady"], "steady", self.phase,
                   chat_body("a long answer please", max_tokens, stream=True))  # fmt: skip

    def disconnects(self, count: int) -> None:
        rng = random.Random(7)
        stops = [rng.randint(1, 12) for _ in range(count)]

        def one(i: int) -> None:
            with httpx.Client(timeout=60) as http:
                stream(http, self.ledger, self.gw(i), self.keys["steady"], "steady", self.phase,
                       chat_body("go on", 64, stream=True), stop_after=stops[i])  # fmt: skip

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(count)))

    def long_streams(self) -> None:
        """Streams three times the lease TTL hold the concurrency slots; a prober keeps knocking."""
        done = threading.Event()
        holders = [threading.Thread(target=self._hold, args=(i,)) for i in range(CONC)]
        for t in holders:
            t.start()
        time.sleep(1.0)
        with httpx.Client(timeout=60) as http:
            i = 0
            while any(t.is_alive() for t in holders):
                i += 1
                complete(http, self.ledger, self.gw(i), self.keys["holder"], "holder", self.phase,
                         chat_body("may I?", 4))  # fmt: skip
                time.sleep(0.2)
        done.set()
        for t in holders:
            t.join()

    def _hold(self, i: int) -> None:
        with httpx.Client(timeout=90) as http:
            stream(http, self.ledger, self.gw(i), self.keys["holder"], "holder", self.phase,
                   chat_body("hold the line", 1500, stream=True))  # fmt: skip

    def hostile(self) -> tuple[float, float]:
        bodies = hostile_bodies()
        t0 = time.monotonic()

        def one(i: int) -> None:
            with httpx.Client(timeout=60) as http:
                complete(
                    http, self.ledger, self.gw(i), self.keys["hostile"], "hostile", self.phase, bodies[i]
                )

        with ThreadPoolExecutor(len(bodies)) as pool:
            list(pool.map(one, range(len(bodies))))
        return t0, time.monotonic()

    def flood(self, count: int) -> tuple[float, float]:
        t0 = time.monotonic()

        def one(i: int) -> None:
            with httpx.Client(timeout=60) as http:
                complete(
                    http, self.ledger, self.gw(i), self.keys["flood"], "flood", self.phase, chat_body("x", 4)
                )

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(one, range(count)))
        return t0, time.monotonic()

    def quota(self) -> None:
        def worker(w: int) -> None:
            streak = 0
            with httpx.Client(timeout=60) as http:
                for i in range(400):
                    c = complete(http, self.ledger, self.gw(w + i), self.keys["capped"], "capped", self.phase,
                                 chat_body("spend it", 64))  # fmt: skip
                    streak = streak + 1 if c.code == "insufficient_quota" else 0
                    if streak >= 3:
                        return

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(worker, range(4)))

    def malformed(self, count: int) -> dict[str, Any]:
        statuses: Counter[int] = Counter()
        bad_bodies: list[str] = []
        with httpx.Client(timeout=60) as http:
            for i, (method, path, headers, body, what) in enumerate(
                corpus(count, self.keys["steady"], self.info["admin_token"])
            ):
                call, resp = raw(http, self.ledger, self.gw(i), self.phase, method, path, headers, body)
                statuses[call.status] += 1
                if resp is not None and resp.status_code >= 400 and method != "HEAD":
                    try:
                        err = resp.json()["error"]
                        assert set(err) == {"message", "type", "param", "code"}
                    except (ValueError, KeyError, TypeError, AssertionError):
                        bad_bodies.append(f"{what}: {resp.status_code} {resp.text[:80]!r}")
                if resp is not None and resp.status_code == 200 and "usage" in resp.text[-400:]:
                    usage = resp.json().get("usage") or {}  # a mutation that happened to be valid
                    call.tenant, call.prompt_tokens = "steady", int(usage.get("prompt_tokens", 0))
                    call.completion_tokens = int(usage.get("completion_tokens", 0))
        healthy = all(httpx.get(f"{gw}/healthz", timeout=10).status_code == 200 for gw in self.alive)
        return {"sent": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
                "not_openai_bodies": bad_bodies, "replicas_healthy_after": healthy}  # fmt: skip

    def drain(self, r: redis.Redis, timeout_s: float = 60) -> float:
        """Wait until no tenant has an in-flight record and the spools are empty."""
        t0 = time.monotonic()
        spool = Path(os.environ["SERVELAB_SPOOL_DIR"])
        while time.monotonic() - t0 < timeout_s:
            inflight = sum(int(r.hlen(f"inflight:{{{t}}}")) for t in TENANTS)
            spooled = sum(p.stat().st_size for p in spool.glob("*") if p.is_file())
            if inflight == 0 and spooled == 0:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise SystemExit(f"not drained after {timeout_s:.0f} s: inflight={inflight} spool bytes={spooled}")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, timeout=10).stdout.strip()  # fmt: skip
    return out.stdout.strip() + (" (with uncommitted changes in the tree)" if dirty else "")


def write_config(path: Path) -> None:
    base = yaml.safe_load(demo_config_path().read_text())
    cfg = {
        "plans": PLANS,
        "tenants": {t: {"plan": p, "models": ["mixtral-8x7b"]} for t, p in TENANTS.items()},
        "models": {"mixtral-8x7b": base["models"]["mixtral-8x7b"]},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", type=Path, default=Path("runs/chaos"), help="stack files and logs")
    ap.add_argument("--disconnects", type=int, default=120)
    ap.add_argument("--malformed", type=int, default=520)
    ap.add_argument("--flood", type=int, default=150, help="requests sent at the requests-per-minute tenant")
    ap.add_argument("--disconnect-slack", type=int, default=2, help="tokens allowed per client disconnect")
    ap.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    cfg_path = state / "chaos.yaml"
    write_config(cfg_path)
    os.environ.update({
        "SERVELAB_LEASE_TTL_S": str(LEASE_TTL_S), "SERVELAB_LEASE_HEARTBEAT_S": str(HEARTBEAT_S),
        "SERVELAB_RECOVERY_INTERVAL_S": "0.5", "SERVELAB_SPOOL_DIR": str(state / "spool"),
        "SERVELAB_LOG_LEVEL": "warning",
    })  # fmt: skip
    # A fresh start: the previous run's AOF would bring its usage back, its spool its settles.
    for folder in ("redis", "spool"):
        shutil.rmtree(state / folder, ignore_errors=True)
    (state / "spool").mkdir()
    ledger = Ledger(time.strftime("%H%M%S"))
    started = time.time()
    load0 = os.getloadavg()
    config = StackConfig(state_dir=state, gateway_port=0, backend_port=0, backends=2, gateways=3,
                         config_path=cfg_path, gateway_args=("--lease-ttl-s", str(LEASE_TTL_S)))  # fmt: skip
    say("starting Redis (AOF), 2 simulators and 3 gateway replicas")
    with Stack(config) as stack:
        info = stack.info
        r = redis.Redis.from_url(info["redis_url"])
        gen0 = verdict.sim_counters(info["backend_urls"])
        run = Run(stack, info, ledger, say)
        steady = [threading.Thread(target=run._steady, args=(w,), daemon=True) for w in range(4)]

        run.phase_begin("baseline")
        for t in steady:
            t.start()
        time.sleep(8)
        run.phase_end("baseline")
        run.phase_begin("replica-kill")
        run.replica_kill()
        run.phase_end("replica-kill")
        run.phase_begin("redis-kill")
        run.redis_kill()
        run.phase_end("redis-kill")
        run.stop_steady.set()
        for t in steady:
            t.join(timeout=120)
        # From here on one tenant at a time uses the backends, with a drain between phases, so
        # the simulators' counters can be split by tenant: generated per tenant, not just in total.
        say("waiting for spools and recovery to drain")
        drained_s = run.drain(r)

        def snap() -> dict[str, float]:
            run.drain(r)
            time.sleep(0.5)
            return verdict.sim_counters(info["backend_urls"])

        marks = {"steady": snap()}
        run.phase_begin("disconnects")
        run.disconnects(args.disconnects)
        run.phase_end("disconnects")
        marks["disconnects"] = snap()
        run.phase_begin("long-streams")
        run.long_streams()
        run.phase_end("long-streams")
        marks["holder"] = snap()
        run.phase_begin("hostile-prompts")
        hostile_window = run.hostile()
        run.phase_end("hostile-prompts")
        marks["hostile"] = snap()
        run.phase_begin("rpm-flood")
        flood_window = run.flood(args.flood)
        run.phase_end("rpm-flood")
        marks["flood"] = snap()
        run.phase_begin("quota")
        run.quota()
        run.phase_end("quota")
        marks["capped"] = snap()
        run.phase_begin("malformed")
        mal = run.malformed(args.malformed)
        run.phase_end("malformed")
        gen1 = snap()
        order = ["steady", "disconnects", "holder", "hostile", "flood", "capped"]
        starts = [gen0] + [marks[k] for k in order]
        ends = [marks[k] for k in order] + [gen1]
        generated: dict[str, dict[str, float]] = {t: {"prompt": 0.0, "generation": 0.0} for t in TENANTS}
        for name, a, b in zip([*order, "malformed"], starts, ends, strict=True):
            tenant = "steady" if name in ("steady", "disconnects", "malformed") else name
            for k in ("prompt", "generation"):
                generated[tenant][k] += b[k] - a[k]
        run.notes["generated"] = generated
        run.notes["disconnect_generated"] = marks["disconnects"]["generation"] - marks["steady"]["generation"]
        usages = {t: verdict.tenant_usage(r, t) for t in TENANTS}
        r.close()
    report, ok = render(run, ledger, usages, gen0, gen1, mal, hostile_window, flood_window, drained_s, args,
                        started, load0)  # fmt: skip
    (state / "ledger.json").write_text(json.dumps([asdict(c) for c in ledger.where()]))
    print(report)
    print(f"(ledger of every call: {state / 'ledger.json'}; stack logs: {state})")
    if args.out:
        args.out.write_text(report)
    return 0 if ok else 1


def render(run: Run, ledger: Ledger, usages: dict[str, verdict.TenantUsage], gen0: dict[str, float],
           gen1: dict[str, float], mal: dict[str, Any], hostile_window: tuple[float, float],
           flood_window: tuple[float, float], drained_s: float, args: argparse.Namespace, started: float,
           load0: tuple[float, float, float]) -> tuple[str, bool]:  # fmt: skip
    calls = ledger.where()
    checks: list[verdict.Check] = []
    rows: list[list[Any]] = []
    for tenant in TENANTS:
        u = usages[tenant]
        mine = [c for c in calls if c.tenant == tenant]
        rp, rc = verdict.received(mine)
        served = sum(1 for c in mine if c.status == 200)
        g = run.notes["generated"][tenant]
        rows.append([tenant, TENANTS[tenant], served, u.requests, f"{g['prompt']:.0f}", u.prompt, rp,
                     f"{g['generation']:.0f}", u.completion, rc])  # fmt: skip
        if tenant != "steady":  # no fault touched these phases: every generated token is metered
            diff = g["generation"] - u.completion
            checks.append((f"{tenant}: completion generated - metered", diff, 0, diff == 0))
    generated_c = gen1["generation"] - gen0["generation"]
    generated_p = gen1["prompt"] - gen0["prompt"]
    metered_c = sum(u.completion for u in usages.values())
    metered_p = sum(u.prompt for u in usages.values())
    received_c = sum(int(r[9]) for r in rows)
    killed = run.notes.get("killed", "")
    bound, parts = verdict.loss_bound(
        calls,
        heartbeat_s=HEARTBEAT_S,
        killed=killed,
        t_redis_kill=run.t_redis_kill,
        disconnect_slack=args.disconnect_slack,
    )
    lost = generated_c - metered_c
    checks.append(("completion tokens generated - metered", lost, bound, 0 <= lost <= bound))
    storm = {c.rid for c in calls if c.phase == "disconnects"}
    storm_metered = sum(
        int(e["completion_tokens"]) for e in usages["steady"].events if e["request_id"] in storm
    )
    d_loss = run.notes["disconnect_generated"] - storm_metered
    d_bound = args.disconnect_slack * args.disconnects
    checks.append(
        ("disconnect storm alone: completion generated - metered", d_loss, d_bound, 0 <= d_loss <= d_bound)
    )
    dups = verdict.duplicates(usages)
    checks.append(("request ids metered twice", len(dups), 0, not dups))
    unmetered = verdict.served_but_unmetered(calls, usages)
    checks.append(("completed 200s with no usage event", len(unmetered), 0, not unmetered))
    mismatch = verdict.per_call_mismatch(calls, usages)
    checks.append(("completed calls metered != usage the client got", len(mismatch), 0, not mismatch))
    by_phase, outside = verdict.five_xx(calls, run.allowed_5xx)
    checks.append(("5xx outside the Redis outage window", outside, 0, outside == 0))
    broken = [c for c in calls if c.outcome == "broken" and c.gateway != run.notes.get("killed")]
    checks.append(("connections broken other than by the replica kill", len(broken), 0, not broken))
    # Limits.
    h = usages["hostile"]
    h_dur = hostile_window[1] - hostile_window[0]
    # docs/gateway.md: a burst stays within capacity + refill, plus at most one request's body bytes.
    tpm_bound = (
        TPM
        + TPM / 60 * h_dur
        + max(
            len(json.dumps(b, ensure_ascii=False, separators=(",", ":")).encode()) for b in hostile_bodies()
        )
    )
    checks.append(("tpm: true tokens admitted in the hostile burst", h.prompt + h.completion, tpm_bound,
                   h.prompt + h.completion <= tpm_bound))  # fmt: skip
    f_dur = flood_window[1] - flood_window[0]
    rpm_bound = RPM + RPM / 60 * f_dur
    checks.append(("rpm: requests admitted in the flood", usages["flood"].requests, math.floor(rpm_bound),
                   usages["flood"].requests <= rpm_bound))  # fmt: skip
    holder = [c for c in calls if c.tenant == "holder"]
    over = verdict.concurrency_overshoot(holder, CONC)
    checks.append(("concurrency: streams generating at once above the limit", over, 0, over == 0))
    held = [c for c in holder if c.kind == "stream" and len(c.chunk_times) > 1]
    if held:  # while every holder streams, any admitted probe is one request over the limit
        a, b = max(c.chunk_times[0] for c in held), min(c.chunk_times[-1] for c in held)
        probes = [c for c in holder if c.kind == "complete" and a < c.t0 and c.t1 < b]
        admitted = sum(1 for c in probes if c.status == 200)
        run.notes["probes"] = (len(probes), Counter(str(c.code or c.status) for c in probes), b - a)
        checks.append((f"concurrency: slots held by streams for at least 3 lease TTLs ({b - a:.1f} s)",
                       round(b - a, 1), 3 * LEASE_TTL_S, b - a >= 3 * LEASE_TTL_S))  # fmt: skip
        checks.append((f"concurrency: probes admitted while {len(held)} streams held the slots "
                       f"({len(probes)} probes over {b - a:.1f} s, {b - a:.1f}/{LEASE_TTL_S:g} = "
                       f"{(b - a) / LEASE_TTL_S:.1f} lease TTLs)", admitted, 0, admitted == 0))  # fmt: skip
    q = usages["capped"]
    checks.append(
        (
            "quota: tokens metered for the month",
            q.prompt + q.completion,
            QUOTA,
            q.prompt + q.completion <= QUOTA,
        )
    )
    checks.append(("malformed: 5xx answers", sum(n for s, n in mal["statuses"].items() if s >= 500), 0,
                   all(s < 500 for s in mal["statuses"])))  # fmt: skip
    checks.append(("malformed: 4xx without the OpenAI error body", len(mal["not_openai_bodies"]), 0,
                   not mal["not_openai_bodies"]))  # fmt: skip
    checks.append(("replicas healthy after the corpus", int(mal["replicas_healthy_after"]), 1,
                   bool(mal["replicas_healthy_after"])))  # fmt: skip
    ok = all(c[3] for c in checks)
    tpm_used, q_used, flood_n = h.prompt + h.completion, q.prompt + q.completion, usages["flood"].requests
    probes_admitted = next((int(c[1]) for c in checks if c[0].startswith("concurrency: probes")), 0)
    limit_rows = [
        ["requests per minute", "flood", RPM, flood_n, max(0, flood_n - RPM),
         f"{rpm_bound - RPM:.1f}", f"refill {RPM / 60:g}/s over the {f_dur:.1f} s flood"],
        ["tokens per minute (hostile prompts)", "hostile", TPM, tpm_used, max(0, tpm_used - TPM),
         f"{tpm_bound - TPM:.0f}", f"refill over {h_dur:.1f} s + one request's body bytes (docs/gateway.md)"],
        ["concurrent requests (streams 4 lease TTLs long)", "holder", CONC, CONC + probes_admitted + over,
         probes_admitted + over, 0, "-"],
        ["tokens per month", "capped", QUOTA, q_used, max(0, q_used - QUOTA), 0, "-"],
    ]  # fmt: skip
    kinds = Counter(c.kind for c in calls)
    out = [
        "# Chaos run",
        "",
        f"Command: `.venv/bin/python -m loadtest.chaos --disconnects {args.disconnects} --malformed "
        f"{args.malformed} --flood {args.flood}` (`make chaos`) at commit {_commit()}, started "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{time.time() - started:.0f} s; {platform.node()}, {os.cpu_count()} CPUs, load average at start "
        f"{load0[0]:.2f}. Stack: Redis with AOF, 2 simulators, 3 gateways (lease TTL {LEASE_TTL_S:g} s, "
        f"heartbeat {HEARTBEAT_S:g} s).",
        "",
        f"Calls: {len(calls)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
        f"client disconnects {sum(1 for c in calls if c.outcome == 'disconnected')}; "
        f"malformed sent {mal['sent']}; streams cut by the replica kill "
        f"{sum(1 for c in calls if c.outcome == 'broken' and c.gateway == run.notes.get('killed'))}; "
        f"spools and recovery drained {drained_s:.1f} s after the last phase.",
        "",
        f"**Verdict: {'PASS' if ok else 'FAIL'}**",
        "",
        "## Checks",
        "",
        verdict.table(
            [[n, f"{v:g}", f"{b:g}", "ok" if g else "**FAIL**"] for n, v, b, g in checks],
            ["check", "value", "bound", ""],
        ),
        "",
        "## Tokens: backend generated vs metered vs received",
        "",
        verdict.table(
            rows,
            [
                "tenant",
                "plan",
                "200s seen by clients",
                "requests metered",
                "prompt processed",
                "prompt metered",
                "prompt received",
                "completion generated",
                "completion metered",
                "completion received",
            ],
        ),
        "",
        f"Backends (the simulators' own counters, all tenants): completion tokens generated "
        f"{generated_c:.0f}, metered {metered_c}, received {received_c}; prompt tokens processed "
        f"{generated_p:.0f}, metered {metered_p}. Generated - metered completion = {lost:.0f}, bound "
        f"{bound:.0f} ({', '.join(f'{k}: {v:.0f}' for k, v in parts.items()) or 'none'}).",
        "",
        verdict.BOUNDS,
        "",
        "## Limits: admitted vs limit",
        "",
        verdict.table(
            limit_rows,
            ["limit", "tenant", "limit", "admitted", "over the limit", "allowed over", "why allowed"],
        ),
        "",
        "## 5xx by phase",
        "",
        verdict.table(
            [[p, by_phase.get(p, 0), "yes" if p == "redis-kill" else "no"] for p in run.windows],
            ["phase", "5xx", "outage window (5xx allowed)"],
        ),
        "",
        f"Malformed corpus answers by status: {mal['statuses']}.",
        "",
        f"Request ids metered twice: {dups[:10] or 'none'}.",
    ]
    if unmetered or mismatch or broken:
        by_rid = {c.rid: c for c in calls}
        examples = [
            f"{rid} ({by_rid[rid].phase}, {by_rid[rid].kind} via {run.names.get(by_rid[rid].gateway)}, "
            f"{by_rid[rid].outcome})"
            for rid in [*unmetered[:5], *[c.rid for c in broken[:5]]]
        ]
        out += ["", "Examples: " + "; ".join([*examples, *mismatch[:5]])]
    return "\n".join(out) + "\n", ok


if __name__ == "__main__":
    sys.exit(main())
