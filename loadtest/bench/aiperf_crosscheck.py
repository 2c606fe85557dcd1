"""Cross-check our numbers with NVIDIA's aiperf on the same target, prompts and load.

Starts one simulator server (real time), builds one workload (exact-length prompts, fixed
output with ignore_eos), and measures it three times back to back at the same Poisson rate and
request count: servelab loadtest, aiperf, servelab loadtest again (the two servelab runs give the
run-to-run noise on this shared machine). aiperf gets the very same prompts as a single_turn
input file, the same max_tokens/ignore_eos through --extra-inputs, and counts tokens from the
server's usage (--use-server-token-count); its tokenizer is a WordLevel tokenizer over the
single-token words our prompts are made of, which counts our prompts exactly as mistral-common v1
does (aiperf wants a Hugging Face tokenizer and this machine has no hub access). aiperf's
"inter token latency" is (E2E - TTFT) / (output tokens - 1), i.e. vLLM's TPOT.

aiperf lives in its own virtual environment, never in the project's:

    uv venv --python 3.11 /tmp/aiperf-venv && uv pip install --python /tmp/aiperf-venv/bin/python aiperf
    .venv/bin/python -m loadtest.bench.aiperf_crosscheck --aiperf /tmp/aiperf-venv/bin/aiperf \
        --rate 4 --requests 240 --out docs/results/aiperf-crosscheck.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from loadtest import report, workloads
from loadtest.runner import Plan, execute
from loadtest.workloads import LengthDist, WorkloadSpec
from servelab.procs import free_port, python_module, start, wait_http_ok

AIPERF_TOKENIZER = """
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
words = json.load(open(sys.argv[1]))
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for w in words:
    vocab.setdefault(w, len(vocab))
tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
fast.save_pretrained(sys.argv[2])
"""


def ours(base: str, spec: WorkloadSpec, rate: float, requests: int, run_dir: Path) -> dict:
    plan = Plan(
        scenario="chat",
        target=base,
        model="mixtral-8x7b",
        keys={"default": "sk-none"},
        workload=spec,
        duration_s=requests / rate,
        rates={"default": [rate]},
        metrics_urls=(f"{base}/metrics",),
        drain_s=60,
    )
    s = report.build(execute(plan, run_dir, log=print), plan)
    o = s["overall"]
    return {
        "ttft_p50": o["ttft"]["p50"],
        "ttft_p95": o["ttft"]["p95"],
        "tpot_p50": o["tpot"]["p50"],
        "tpot_p95": o["tpot"]["p95"],
        "itl_p50": o["itl"]["p50"],
        "itl_p95": o["itl"]["p95"],
        "e2e_p50": o["e2e"]["p50"],
        "e2e_p95": o["e2e"]["p95"],
        "requests": o["requests"],
        "errors": o["errors"],
        "tokens_match": s["serverside"]["tokens_match"],
    }


def aiperf(
    exe: str,
    base: str,
    items: list[workloads.WorkItem],
    tok_dir: Path,
    rate: float,
    requests: int,
    max_tokens: int,
    out: Path,
) -> dict:
    inp = out / "input.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    with inp.open("w") as f:
        for it in items:
            f.write(json.dumps({"text": it.prompt}) + "\n")
    argv = [
        exe,
        "profile",
        "-m",
        "mixtral-8x7b",
        "--url",
        base,
        "--endpoint-type",
        "chat",
        "--streaming",
        "--input-file",
        str(inp),
        "--custom-dataset-type",
        "single_turn",
        "--tokenizer",
        str(tok_dir),
        "--use-server-token-count",
        "--extra-inputs",
        f"max_tokens:{max_tokens}",
        "--extra-inputs",
        "ignore_eos:true",
        "--request-rate",
        str(rate),
        "--arrival-pattern",
        "poisson",
        "--request-count",
        str(requests),
        "--output-artifact-dir",
        str(out / "artifacts"),
        "--random-seed",
        "0",
        "--ui-type",
        "none",
    ]
    subprocess.run(
        argv,
        check=True,
        stdout=(out / "aiperf.log").open("w"),
        stderr=subprocess.STDOUT,
        cwd=out,
        timeout=1800,
    )
    d = json.loads((out / "artifacts" / "profile_export_aiperf.json").read_text())

    def ms(key: str, q: str) -> float:
        return float(d[key][q]) / 1000.0

    return {
        "ttft_p50": ms("time_to_first_token", "p50"),
        "ttft_p95": ms("time_to_first_token", "p95"),
        "tpot_p50": ms("inter_token_latency", "p50"),
        "tpot_p95": ms("inter_token_latency", "p95"),
        "itl_p50": ms("inter_chunk_latency", "p50"),
        "itl_p95": ms("inter_chunk_latency", "p95"),
        "e2e_p50": ms("request_latency", "p50"),
        "e2e_p95": ms("request_latency", "p95"),
        "requests": int(d["request_count"]["avg"]),
        "errors": None,
        "tokens_match": None,
        "aiperf_version": d.get("aiperf_version"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aiperf", default="/tmp/aiperf-venv/bin/aiperf")
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("docs/results/aiperf-crosscheck.md"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lt-aiperf-"))
    spec = WorkloadSpec(
        input=LengthDist("uniform", args.input_len, low=args.input_len // 4, high=args.input_len * 7 // 4),
        output=LengthDist("fixed", args.output_len),
        n=args.requests,
    )
    counter = workloads.MistralTokenCounter(spec.tokenizer)
    items = workloads.build(spec, counter)
    (work / "words.json").write_text(json.dumps(counter.single_token_words()))
    tok_dir = work / "aiperf-tokenizer"
    py = str(Path(args.aiperf).parent / "python")
    subprocess.run(
        [py, "-c", AIPERF_TOKENIZER, str(work / "words.json"), str(tok_dir)], check=True, capture_output=True
    )

    port = free_port()
    sim = start(
        "sim",
        python_module(
            "servelab.cli",
            "serve",
            "--engine",
            "sim",
            "--model",
            "mixtral-8x7b",
            "--gpu",
            "h100",
            "--tp",
            "2",
            "--dtype",
            "bf16",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ),
        log_path=work / "sim.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/health", 60, sim.popen)
        a1 = ours(base, spec, args.rate, args.requests, work / "servelab-1")
        b = aiperf(
            args.aiperf, base, items, tok_dir, args.rate, args.requests, args.output_len, work / "aiperf"
        )
        a2 = ours(base, spec, args.rate, args.requests, work / "servelab-2")
    finally:
        sim.stop()

    def pct(x: float, y: float) -> str:
        return f"{100 * (y - x) / x:+.1f}%"

    load = os.getloadavg()
    lines = [
        "# Cross-check with NVIDIA aiperf",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on `{platform.node()}`"
        f" ({os.cpu_count()} cores;"
        f" load average at the end {load[0]:.2f}),"
        f" aiperf {b.get('aiperf_version')}.",
        "",
        "```bash",
        f".venv/bin/python -m loadtest.bench.aiperf_crosscheck --aiperf {args.aiperf} --rate {args.rate:g}"
        f" --requests {args.requests} --input-len {args.input_len} --output-len {args.output_len}",
        "```",
        "",
        f"Target: one `servelab serve --engine sim` (Mixtral-8x7B, 2×H100, bf16, real time) on 127.0.0.1."
        f" Load: open loop, Poisson, {args.rate:g} req/s, {args.requests} requests per run; the same"
        f" {args.requests} prompts (uniform {args.input_len // 4}-{args.input_len * 7 // 4} tokens,"
        f" exact under mistral-common v1) and max_tokens {args.output_len} with ignore_eos for both tools."
        " Runs back to back: servelab, aiperf, servelab.",
        "",
        "| metric (ms) | servelab run 1 | aiperf | servelab run 2 | aiperf vs mean of servelab runs |"
        " servelab run 2 vs run 1 |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in (
        ("ttft_p50", "TTFT p50"),
        ("ttft_p95", "TTFT p95"),
        ("tpot_p50", "TPOT p50"),
        ("tpot_p95", "TPOT p95"),
        ("itl_p50", "ITL p50"),
        ("itl_p95", "ITL p95"),
        ("e2e_p50", "E2E p50"),
        ("e2e_p95", "E2E p95"),
    ):
        mean = (a1[key] + a2[key]) / 2
        lines.append(
            f"| {name} | {a1[key] * 1000:.2f} | {b[key] * 1000:.2f} | {a2[key] * 1000:.2f} |"
            f" {pct(mean, b[key])} | {pct(a1[key], a2[key])} |"
        )
    lines += [
        "",
        f"Requests: servelab {a1['requests']} / {a2['requests']} (errors {a1['errors']} / {a2['errors']},"
        f" token totals equal to the server's counters: {a1['tokens_match']} / {a2['tokens_match']}), aiperf"
        f" {b['requests']}.",
        "",
        'aiperf\'s "inter token latency" is reported here as TPOT (same definition); its "inter chunk'
        ' latency" as ITL (gaps between streamed chunks). Both tools draw their own Poisson arrival times'
        " (same rate, different draws), so some difference is sampling: the last column shows how much two"
        " servelab runs of the same load differ. Raw outputs were in " + str(work) + ".",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
