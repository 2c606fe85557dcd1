"""The simulator's /metrics, under vLLM's own metric names so dashboards and routing work unchanged.

A custom collector on a per-app `CollectorRegistry` (tests run several servers in one process):
gauges are read from the live engine at scrape time, counters from the engine's totals, and the
latency histograms are kept here as bucket arrays with an `observe(value, count)` so one step's
worth of identical inter-token gaps costs one call instead of one per stream. Bucket boundaries are
vLLM V1's (vllm/v1/metrics/loggers.py). The names:

    vllm:num_requests_running, vllm:num_requests_waiting                 gauges
    vllm:gpu_cache_usage_perc, vllm:kv_cache_usage_perc (0..1, same value) gauges
    vllm:prompt_tokens_total, vllm:generation_tokens_total               counters
    vllm:request_success_total{finished_reason}, vllm:num_preemptions_total counters
    vllm:time_to_first_token_seconds, vllm:time_per_output_token_seconds,
    vllm:inter_token_latency_seconds (same data as TPOT, vLLM's newer name),
    vllm:e2e_request_latency_seconds, vllm:request_queue_time_seconds, vllm:request_prefill_time_seconds,
    vllm:request_decode_time_seconds, vllm:request_inference_time_seconds,
    vllm:request_prompt_tokens, vllm:request_generation_tokens            histograms

plus the simulator's own step overhead, `servelab_sim_step_overhead_seconds` (CPU time the engine
loop spends scheduling and updating per step) and `servelab_sim_step_lateness_seconds` (how much
later than the cost model's end time a step really finished), which the speed benchmark reads.
All carry the label model_name.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from server.sim.engine import Engine
from server.sim.request import Request

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
# build_1_2_5_buckets(max_model_len) in vLLM; up to 128k tokens here.
TOKEN_BUCKETS = tuple(m * 10**e for e in range(6) for m in (1, 2, 5) if m * 10**e <= 131072)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Hist:
    """A histogram as bucket counts; `observe(v, n)` adds n observations of v."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def family(self, name: str, doc: str, model: str) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=["model_name"])
        cum = 0
        buckets: list[tuple[str, float]] = []
        for b, c in zip(self.bounds, self.counts, strict=False):
            cum += c
            buckets.append((repr(float(b)), cum))
        buckets.append(("+Inf", self.count))
        fam.add_metric([model], buckets, self.sum)
        return fam


class EngineMetrics(Collector):
    """Everything /metrics shows about one engine."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.ttft = Hist(TTFT_BUCKETS)
        self.tpot = Hist(TPOT_BUCKETS)
        self.e2e = Hist(E2E_BUCKETS)
        self.queue = Hist(E2E_BUCKETS)
        self.prefill = Hist(E2E_BUCKETS)
        self.decode = Hist(E2E_BUCKETS)
        self.inference = Hist(E2E_BUCKETS)
        self.prompt_len = Hist(TOKEN_BUCKETS)
        self.output_len = Hist(TOKEN_BUCKETS)
        self.step_overhead = Hist(OVERHEAD_BUCKETS)
        self.step_lateness = Hist(OVERHEAD_BUCKETS)
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}

    def finished(self, req: Request) -> None:
        """Observe a request that finished normally (stop or length)."""
        self.e2e.observe(req.finish_s - req.arrival_s)
        self.success[req.finish_reason] += 1
        if req.scheduled_s >= 0:
            self.queue.observe(req.scheduled_s - req.arrival_s)
            self.prefill.observe(req.first_token_s - req.scheduled_s)
            self.inference.observe(req.finish_s - req.scheduled_s)
        self.decode.observe(req.finish_s - req.first_token_s)
        self.prompt_len.observe(req.prompt_len)
        self.output_len.observe(req.num_output)

    def registry(self) -> CollectorRegistry:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)
        return reg

    def collect(self) -> Iterator[Metric]:
        e, m = self.engine, [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(m, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(m, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    e.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.num_waiting)
        yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", e.kv.usage)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv.usage)
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "num_gpu_blocks"])
        info.add_metric([str(e.kv.block_size), str(e.kv.num_blocks)], 1.0)
        yield info
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", e.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      e.generation_tokens_total)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      e.num_preemptions)
        succ = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                   labels=["model_name", "finished_reason"])
        for reason, n in self.success.items():
            succ.add_metric([self.model_name, reason], n)
        yield succ
        yield self.ttft.family("vllm:time_to_first_token_seconds",
                               "Histogram of time to first token in seconds.", self.model_name)
        yield self.tpot.family("vllm:time_per_output_token_seconds",
                               "Histogram of time per output token in seconds.", self.model_name)
        yield self.tpot.family("vllm:inter_token_latency_seconds",
                               "Histogram of inter-token latency in seconds.", self.model_name)
        yield self.e2e.family("vllm:e2e_request_latency_seconds",
                              "Histogram of end to end request latency in seconds.", self.model_name)
        for hist, name, doc in (
            (self.queue, "vllm:request_queue_time_seconds", _phase_doc("WAITING")),
            (self.prefill, "vllm:request_prefill_time_seconds", _phase_doc("PREFILL")),
            (self.decode, "vllm:request_decode_time_seconds", _phase_doc("DECODE")),
            (self.inference, "vllm:request_inference_time_seconds", _phase_doc("RUNNING")),
            (self.prompt_len, "vllm:request_prompt_tokens", "Number of prefill tokens processed."),
            (self.output_len, "vllm:request_generation_tokens", "Number of generation tokens processed."),
        ):
            yield hist.family(name, doc, self.model_name)
        yield self.step_overhead.family("servelab_sim_step_overhead_seconds",
                                        "CPU time the simulator spends scheduling and updating per step.",
                                        self.model_name)
        yield self.step_lateness.family("servelab_sim_step_lateness_seconds",
                                        "How much later than its modelled end time each step finished.",
                                        self.model_name)


def _phase_doc(phase: str) -> str:
    return f"Histogram of time spent in {phase} phase for request."
