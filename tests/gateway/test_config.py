"""Each way the YAML config can be wrong gets a message naming the file, the field and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

BAD = Path(__file__).with_name("bad_configs")
DEMO = Path(__file__).parents[2] / "gateway" / "demo.yaml"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("unknown_field", "plans.p.burst: Extra inputs are not permitted"),
        ("missing_field", "plans.p.tokens_per_minute: Field required"),
        (
            "wrong_type",
            "plans.p.requests_per_minute: Input should be a valid integer, unable to parse string",
        ),
        ("negative", "plans.p.requests_per_minute: Input should be greater than 0"),
        ("unknown_plan", "tenants.a.plan: unknown plan 'gold' (known: p)"),
        ("unknown_model", "tenants.a.models.1: unknown model 'gpt-5' (known: m)"),
        (
            "bad_url",
            "models.m.backends: backend URL must start with http:// or https://, got '127.0.0.1:8001'",
        ),
        ("bad_syntax", "line 3, column 8: invalid YAML: expected ',' or '}', but got ':'"),
    ],
)
def test_bad_config_names_file_field_and_problem(name: str, message: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load_config(BAD / "nope.yaml")


def test_demo_config_has_the_demo_tenants() -> None:
    cfg = load_config(DEMO)
    assert {"acme", "tiny", "noisy", "steady"} <= set(cfg.tenants)
    assert "mixtral-8x7b" in cfg.models
    tiny, acme = cfg.effective_plan("tiny"), cfg.effective_plan("acme")
    assert tiny.requests_per_minute < 10 < acme.requests_per_minute
    assert cfg.effective_plan("noisy").fair_share_weight == 1  # override applied over the plan's 2


def test_with_backends_rewrites_one_model() -> None:
    cfg = load_config(DEMO).with_backends("mixtral-8x7b", ["http://127.0.0.1:9999/"])
    assert cfg.models["mixtral-8x7b"].backends == ["http://127.0.0.1:9999"]
    assert "http://127.0.0.1:9999" in cfg.to_yaml()
