"""What sticky version assignment costs per request, and how close the split lands to the weights.

    .venv/bin/python -m loadtest.bench.version_assign [--n 200000]

Builds LiveVersions from an in-memory config (no Redis call is made: assignment is a pure
function of alias, sticky id and the weights already in memory), times `assign()` on distinct
conversation ids, and counts the split of 10,000 ids for 90/10 and 50/30/20 weights.
Output: one Markdown block (docs/results/onprem.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from gateway.config import parse_config
from gateway.versions import LiveVersions, bucket, choose, sticky_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="assign() calls per timing round")
    args = ap.parse_args()
    cfg = parse_config(
        {
            "plans": {"p": {"requests_per_minute": 1, "tokens_per_minute": 1, "tokens_per_month": 1,
                            "max_concurrent_requests": 1}},
            "tenants": {"t": {"plan": "p"}},
            "models": {"m": {"versions": {"v1": {"backends": ["http://a:1"], "weight": 90},
                                          "v2": {"backends": ["http://b:1"], "weight": 10}}}},
        },
        "bench",
    )  # fmt: skip
    lv = LiveVersions(cfg, None)  # type: ignore[arg-type]  # no Redis: assign() never touches it
    ids = [f"conversation-{i}" for i in range(args.n)]
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for i in ids:
            lv.assign("t", "m", sticky_id(i, None, "key"))
        rounds.append((time.perf_counter() - t) / args.n * 1e9)
    print(f"host: {platform.processor() or platform.machine()}, loadavg {os.getloadavg()[0]:.1f}")
    print(
        f"assign() incl. sticky_id: median {statistics.median(rounds):.0f} ns/request over 5 x {args.n:,} ids"
    )
    print()
    print("| weights | ids | requests per version | share - weight (points) |")
    print("|---|---|---|---|")
    for weights in ((("v1", 90.0), ("v2", 10.0)), (("a", 50.0), ("b", 30.0), ("c", 20.0))):
        counts = {v: 0 for v, _ in weights}
        for k in range(10_000):
            counts[choose(weights, bucket("m", f"conversation-{k}"))] += 1
        total = sum(w for _, w in weights)
        diffs = ", ".join(f"{v} {100 * counts[v] / 10_000 - 100 * w / total:+.2f}" for v, w in weights)
        shown = "/".join(f"{w:g}" for _, w in weights)
        print(f"| {shown} | 10,000 | {', '.join(f'{v} {c}' for v, c in counts.items())} | {diffs} |")


if __name__ == "__main__":
    main()
