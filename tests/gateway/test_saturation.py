"""The saturation detector's arithmetic and its reading of vLLM's metric names (pure logic)."""

from __future__ import annotations

from gateway.saturation import BackendLoad, Thresholds, free_slots, parse_metrics

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 12.0
vllm:num_requests_waiting{model_name="m"} 3.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:prompt_tokens_total{model_name="m"} 1234.0
"""


def test_parses_vllm_gauges_including_the_older_kv_name() -> None:
    assert parse_metrics(VLLM_TEXT) == BackendLoad(running=12, waiting=3, kv_usage=0.5)
    newer = VLLM_TEXT.replace("gpu_cache_usage_perc", "kv_cache_usage_perc")
    assert parse_metrics(newer).kv_usage == 0.5
    assert parse_metrics("") == BackendLoad()


def test_free_slots_counts_other_replicas_from_the_scrape_and_own_work_exactly() -> None:
    th = Thresholds(max_num_seqs=16, max_waiting=100)
    loads = [BackendLoad(running=10), BackendLoad(running=6)]  # 16 of 32 busy at the scrape
    # 4 of those were ours at the scrape, 6 ours now: others 12, ours 6 -> 14 free
    assert free_slots(loads, th, own_now=6, own_at_scrape=4, replicas=2) == 14
    # a stale view never takes a replica below its slice of 32 / 2
    full = [BackendLoad(running=16), BackendLoad(running=16)]
    assert free_slots(full, th, own_now=10, own_at_scrape=10, replicas=2) == 6


def test_waiting_or_full_kv_stops_borrowing_beyond_the_slice() -> None:
    th = Thresholds(max_num_seqs=16, max_waiting=0, max_kv_usage=0.9)
    quiet = [BackendLoad(running=4), BackendLoad(running=4)]
    assert free_slots(quiet, th, own_now=4, own_at_scrape=4, replicas=2) == 24  # borrows the idle slots
    queued = [BackendLoad(running=16, waiting=1), BackendLoad(running=4)]
    assert free_slots(queued, th, own_now=4, own_at_scrape=4, replicas=2) == 12  # its slice only
    full_kv = [BackendLoad(running=4, kv_usage=0.95), BackendLoad(running=4)]
    assert free_slots(full_kv, th, own_now=16, own_at_scrape=16, replicas=2) == 0
