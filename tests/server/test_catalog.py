"""Catalog numbers checked against the publishers' figures and by hand."""

from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest

from server.catalog import GPUS, MODELS, gpu, model, tokenizer_file, tokenizer_for


def test_required_keys_present() -> None:
    assert set(MODELS) == {
        "mixtral-8x7b",
        "mixtral-8x22b",
        "mistral-7b",
        "llama-3.1-8b",
        "llama-3.1-70b",
        "mixtral-mini",
    }
    assert set(GPUS) == {"h100", "h200", "a100-80g", "l40s", "l4"}


@pytest.mark.parametrize("key", sorted(MODELS))
def test_computed_params_match_published(key: str) -> None:
    m = MODELS[key]
    total_b, active_b = m.published_params_b
    assert m.params_total / 1e9 == pytest.approx(total_b, rel=0.01)
    assert m.params_active / 1e9 == pytest.approx(active_b, rel=0.01)
    assert m.source


def test_mixtral_8x7b_by_hand() -> None:
    m = model("mixtral-8x7b")
    # attention 4096*4096*2 + 2*4096*1024 = 41,943,040; one expert 3*4096*14336 = 176,160,768
    assert m.attn_params_per_layer == 41_943_040
    assert m.expert_params == 176_160_768
    assert round(m.params_total / 1e8) / 10 == 46.7
    assert round(m.params_active / 1e8) / 10 == 12.9
    assert m.kv_bytes_per_token() == 128 * 1024  # 2 * 32 layers * 8 kv heads * 128 * 2 bytes


def test_mixtral_8x22b_and_mistral_7b_kv() -> None:
    assert model("mixtral-8x22b").kv_bytes_per_token() == 224 * 1024
    assert model("mistral-7b").kv_bytes_per_token() == 128 * 1024


def test_gpu_numbers_from_datasheets() -> None:
    h100 = gpu("h100")
    assert h100.hbm_bandwidth_Bps == 3.35e12
    assert h100.bf16_flops == pytest.approx(989e12, rel=0.001)
    assert h100.fp8_flops == pytest.approx(2 * h100.bf16_flops, rel=0.001)
    assert gpu("h200").hbm_bandwidth_Bps == 4.8e12
    assert gpu("a100-80g").fp8_flops is None
    for g in GPUS.values():
        assert g.source and g.memory_bytes > 20 * 1024**3


def test_unknown_keys_name_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mixtral-8x7b"):
        model("gpt-5")
    with pytest.raises(KeyError, match="h100"):
        gpu("tpu")


def test_tokenizer_for_counts_like_mistral_common() -> None:
    tok = tokenizer_for("mixtral-8x7b")
    assert tokenizer_for("mixtral-8x7b") is tok  # cached
    assert tok.instruct_tokenizer.tokenizer.n_words == model("mixtral-8x7b").vocab_size
    req = ChatCompletionRequest(messages=[UserMessage(content="Hello, how are you?")])
    tokens = tok.encode_chat_completion(req).tokens
    assert tokens[0] == 1 and len(tokens) > 5  # BOS, [INST] ... [/INST]
    assert tokenizer_for("mixtral-8x22b").instruct_tokenizer.tokenizer.n_words == 32768
    assert tokenizer_file("mistral-7b").endswith(".model.v3")
