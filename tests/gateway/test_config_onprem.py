"""The on-prem config fields (versions, regions, pins, prompt-logging opt-in): each way they can be
wrong names the file, the field and the problem; a valid one round-trips through YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config
from gateway.routing import pool_from_config

BAD = Path(__file__).with_name("bad_configs")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("onprem_unknown_region", "tenants.a.regions.0: unknown region 'mars' (known: eu)"),
        ("onprem_region_url", "regions.eu.0: 'http://zz:1' is not a backend of any model"),
        ("onprem_two_regions", "regions.us.0: 'http://a:1' is already in region 'eu'"),
        ("onprem_unknown_version", "tenants.a.versions.m: unknown version 'v9' (known: v1)"),
        ("onprem_zero_weights", "models.m.versions: at least one version needs a weight above 0"),
        ("onprem_backends_and_versions", "models.m: give either backends or versions"),
        ("onprem_retention", "tenants.a.prompt_logging.retention_days: Input should be greater than 0"),
    ],
)
def test_bad_onprem_config_names_file_field_and_problem(name: str, message: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_versions_fill_backends_and_round_trip_with_regions() -> None:
    cfg = parse_config(
        {
            "plans": {"p": {"requests_per_minute": 1, "tokens_per_minute": 1, "tokens_per_month": 1,
                            "max_concurrent_requests": 1}},
            "tenants": {"a": {"plan": "p", "regions": ["eu"], "versions": {"m": "v2"}}},
            "models": {"m": {"versions": {
                "v1": {"backends": ["http://a:1/", "http://b:1"], "weight": 90},
                "v2": {"backends": ["http://c:1"], "weight": 10, "upstream_model": "m2"},
            }}},
            "regions": {"eu": ["http://a:1", "http://c:1"], "us": ["http://b:1"]},
        },
        "test",
    )  # fmt: skip
    m = cfg.models["m"]
    assert m.backends == ["http://a:1", "http://b:1", "http://c:1"]
    assert cfg.tenants["a"].prompt_logging.enabled is False  # the default keeps no text
    assert parse_config(yaml.safe_load(cfg.to_yaml()), "again") == cfg
    pool = pool_from_config(cfg, down_s=1.0)
    assert [b.url for b in pool.by_version[("m", "v1")]] == ["http://a:1", "http://b:1"]
    assert {b.url: b.region for b in pool.all} == {"http://a:1": "eu", "http://b:1": "us", "http://c:1": "eu"}
    # A model without versions has one, 'default', with its backends and upstream id.
    plain = parse_config(
        {**yaml.safe_load(cfg.to_yaml()), "regions": {}, "tenants": {"a": {"plan": "p"}},
         "models": {"m": {"backends": ["http://a:1"], "upstream_model": "x"}}},
        "plain",
    )  # fmt: skip
    table = plain.models["m"].version_table()
    assert list(table) == ["default"] and table["default"].upstream_model == "x"


def test_with_backends_refuses_a_model_with_versions() -> None:
    good = parse_config(
        {
            "plans": {"p": {"requests_per_minute": 1, "tokens_per_minute": 1, "tokens_per_month": 1,
                            "max_concurrent_requests": 1}},
            "tenants": {"a": {"plan": "p"}},
            "models": {"m": {"versions": {"v1": {"backends": ["http://a:1"], "weight": 1}}}},
        },
        "test",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"models\.m: has versions; rewrite each version.s backends"):
        good.with_backends("m", ["http://b:1"])
