"""canary: a model update rolled out by the SLO gate, promoted when healthy, rolled back when not.

The scenario brings its own model alias so it cannot disturb the stack's traffic: three
simulated Mixtral-8x7B engines and one gateway of its own, on the stack's Redis (so the audit
log and the rollout state live where every replica would see them). The alias
`<model>-canary` has three versions:

- v1, the version in production (engine at `--speedup 4`);
- v2, a healthy update (the same engine speed);
- v3, a regressed update (engine at `--speedup 0.5`: every step 8x slower, as a bad kernel
  or a slower GPU pool would be).

Phase 1 rolls v2 out over v1 in steps while streaming traffic flows: expected, the gate finds
it within thresholds at every step and promotes it. Phase 2 rolls v3 out over v2: expected, the
gate sees its p95 TTFT/TPOT beyond the thresholds at the first step and rolls it back by itself,
with the numbers in the audit log, while only the first step's share of conversations ever met
it. Watch it from another terminal with `servelab rollout status <model>-canary --watch --url
<the gateway this scenario prints>`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from servelab.procs import Child, free_port, python_module, start, wait_http_ok
from servelab.scenarios.base import Check, Context, Precondition
from servelab.scenarios.load import Load

TENANT = "canary-demo"
ENGINES = {"v1": "4", "v2": "4", "v3": "0.5"}


def _admin(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _start_parts(ctx: Context, folder: Path, alias: str) -> tuple[str, list[Child]]:
    children: list[Child] = []
    urls: dict[str, str] = {}
    for version, speedup in ENGINES.items():
        port = free_port()
        argv = python_module(
            "servelab.cli", "serve", "--engine", "sim", "--model", ctx.model, "--gpu", "h100", "--tp", "2",
            "--dtype", "bf16", "--host", "127.0.0.1", "--port", str(port), "--speedup", speedup,
        )  # fmt: skip
        children.append(start(f"canary-sim-{version}", argv, log_path=folder / f"sim-{version}.log"))
        urls[version] = f"http://127.0.0.1:{port}"
    for (version, url), child in zip(urls.items(), children, strict=True):
        wait_http_ok(url + "/health", timeout_s=120, proc=child.popen)
        ctx.say(f"engine {version} up at {url} (speedup {ENGINES[version]})")
    config = {
        "plans": {
            "demo": {
                "requests_per_minute": 100_000,
                "tokens_per_minute": 50_000_000,
                "tokens_per_month": 10_000_000_000,
                "max_concurrent_requests": 256,
            }
        },
        "tenants": {TENANT: {"plan": "demo"}},
        "models": {
            alias: {
                "continuous_usage_stats": True,
                "versions": {
                    v: {"backends": [u], "weight": 100 if v == "v1" else 0, "upstream_model": ctx.model}
                    for v, u in urls.items()
                },
            }
        },
    }
    cfg_path = folder / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = {"REDIS_URL": str(ctx.info["redis_url"]), "SERVELAB_ADMIN_TOKEN": str(ctx.info["admin_token"])}
    argv = python_module("gateway", "--config", str(cfg_path), "--host", "127.0.0.1", "--port", str(port))
    gw = start("canary-gateway", argv, env=env, log_path=folder / "gateway.log")
    children.append(gw)
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(base + "/healthz", timeout_s=60, proc=gw.popen)
    ctx.say(f"gateway for {alias!r} at {base} (logs in {folder})")
    return base, children


async def _until_decided(
    load: Load, base: str, token: str, key: str, alias: str, timeout_s: float
) -> dict[str, Any]:
    """Closed-loop streaming from many conversations until the rollout leaves `running`."""
    stop = asyncio.Event()
    n = 0

    async def user() -> None:
        nonlocal n
        while not stop.is_set():
            n += 1
            await load.one(
                TENANT, key, words=24, max_tokens=24, stream=True, headers={"x-conversation-id": f"c{n}"}
            )

    users = [asyncio.create_task(user()) for _ in range(6)]
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status = await asyncio.to_thread(_admin, base, token, "GET", f"/admin/v1/rollouts/{alias}")
            if status["status"] != "running":
                break
    finally:
        stop.set()
        await asyncio.gather(*users)
    return status


def run(ctx: Context) -> list[Check]:
    for field in ("redis_url", "admin_token"):
        if not ctx.info.get(field):
            raise Precondition(f"stack.json has no {field}")
    alias = f"{ctx.model}-canary"
    token = str(ctx.info["admin_token"])
    folder = Path(ctx.stack.state_dir) / "canary"
    folder.mkdir(parents=True, exist_ok=True)
    window_s = 2.0 if ctx.short else 10.0
    gate = {
        "steps": [10, 50],
        "window_s": window_s,
        "thresholds": {
            "min_requests": 30,
            "max_error_rate_increase": 0.02,
            "max_latency_ratio": 1.5,
            "min_latency_increase_s": 0.005,
        },
    }
    base, children = _start_parts(ctx, folder, alias)
    try:
        key = _admin(base, token, "POST", f"/admin/v1/tenants/{TENANT}/keys", {"name": "canary"})["key"]
        _admin(base, token, "DELETE", f"/admin/v1/models/{alias}/weights")  # start from the YAML: v1 = 100%
        ctx.watch(f"`servelab rollout status {alias} --watch --url {base}` prints each step and decision")
        load = Load(base, alias, ctx.t0)
        warm = Load(base, alias, ctx.t0)

        async def warm_up() -> None:
            # A fresh engine's first requests pay one-off costs; a canary judged on them would
            # fail for the wrong reason. The version header reaches each one before the rollout.
            try:
                for version in ENGINES:
                    for _ in range(5):
                        await warm.one(
                            TENANT, key, words=24, max_tokens=24, headers={"x-servelab-version": version}
                        )
            finally:
                await warm.close()

        asyncio.run(warm_up())
        ctx.say("warmed each version with 5 requests picked by the x-servelab-version header")

        async def both() -> tuple[dict[str, Any], dict[str, Any], int, int]:
            try:
                ctx.say(f"phase 1: roll out v2 (healthy) over v1, steps 10% -> 50%, {window_s:g} s windows")
                _admin(base, token, "POST", "/admin/v1/rollouts", {"model": alias, "canary": "v2", **gate})
                first = await _until_decided(load, base, token, key, alias, 120)
                ctx.say(f"phase 1 ended: {first['status']} ({first['reason']})")
                mark = len(load.records)
                ctx.say("phase 2: roll out v3 (8x slower engine) over v2")
                body = {"model": alias, "canary": "v3", "baseline": "v2", **gate}
                _admin(base, token, "POST", "/admin/v1/rollouts", body)
                second = await _until_decided(load, base, token, key, alias, 120)
                ctx.say(f"phase 2 ended: {second['status']} ({second['reason']})")
                return first, second, mark, len(load.records)
            finally:
                await load.close()

        first, second, mark, end = asyncio.run(both())
        weights = {
            v["version"]: v["weight"]
            for v in _admin(base, token, "GET", f"/admin/v1/models/{alias}/versions")["versions"]
        }
        phase2 = load.records[mark:end]
        on_v3 = [r for r in phase2 if r.headers.get("x-servelab-version") == "v3"]
        failed = [r for r in load.records if not r.ok]
        abort = next((e for e in second.get("audit", []) if e["action"] == "abort"), None)
        window = (abort or {}).get("detail", {}).get("window", {})

        def p95(side: str, what: str) -> str:
            v = window.get(side, {}).get(what)
            return "-" if v is None else f"{v * 1000:.0f} ms"

        steps1 = [
            e["action"] for e in reversed(first.get("audit", [])) if e["time_ms"] >= first["started_ms"]
        ]
        reason = (abort or {}).get("reason", "-")
        actor = (abort or {}).get("actor", "-")
        shown = ", ".join(f"{k}={v:g}" for k, v in weights.items())
        share = len(on_v3) / max(1, len(phase2))
        numbers = (
            f"TTFT p95 {p95('canary', 'p95_ttft_s')} vs {p95('baseline', 'p95_ttft_s')}, "
            f"TPOT p95 {p95('canary', 'p95_tpot_s')} vs {p95('baseline', 'p95_tpot_s')}"
        )
        promoted = first["status"] == "promoted" and steps1[-1:] == ["promote"]
        rolled_back = second["status"] == "aborted" and actor == "slo-gate"
        settled = weights.get("v2") == 100 and weights.get("v3") == 0
        return [
            Check(
                "healthy canary promoted",
                "promoted by slo-gate",
                f"{first['status']}: {' -> '.join(steps1)}",
                promoted,
            ),
            Check(
                "regressed canary rolled back by itself",
                "aborted by slo-gate",
                f"{second['status']} by {actor}",
                rolled_back,
            ),
            Check("audit log says why", "p95 TTFT or TPOT beyond thresholds", reason, "p95" in reason),
            Check("the numbers behind it", "canary slower than baseline", numbers, bool(window)),
            Check("weights after both", "v2 = 100%, v3 = 0%", shown, settled),
            Check(
                "exposure to the bad version",
                "about the first step (10%) of phase 2's requests",
                f"{len(on_v3)} of {len(phase2)} ({share:.0%})",
                0 < len(on_v3) <= 0.3 * len(phase2),
            ),
            Check("no failed requests", "0", str(len(failed)), not failed),
        ]
    finally:
        for child in reversed(children):
            child.stop()


SCENARIOS = {"canary": run}
