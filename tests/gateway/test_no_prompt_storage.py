"""With the default policy no prompt or output text is written anywhere, and no secret (API key,
admin token, Redis password) reaches a log.

A real Redis with an append-only file (every write command it ever received, in plain RESP, so
even text written and deleted again would be found), the simulator and a gateway as separate
processes with their logs in files (the gateway at debug level, to be strict). Requests of every
kind carry a marker in their prompt, `user` field and conversation header; afterwards the
marker, the exact output texts and the secrets are searched for in every Redis
key and value (read by type, and DUMPed), in the AOF files, in both logs and in the spool folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml
from gwkit import ADMIN_TOKEN, GatewayHandle, plan

from servelab.procs import Child
from servelab.redisproc import start_redis


def _redis_texts(client: redis.Redis) -> list[bytes]:
    """Every key name, every value read by type, and every DUMP, as bytes."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key).decode()
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            for k, v in client.hgetall(key).items():
                out += [k, v]
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(client.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, fields in client.xrange(key):
                out.append(entry_id)
                for k, v in fields.items():
                    out += [k, v]
        out.append(client.dump(key) or b"")
    return out


def _files(*roots: Path) -> dict[Path, bytes]:
    found: dict[Path, bytes] = {}
    for root in roots:
        if root.is_file():
            found[root] = root.read_bytes()
        elif root.is_dir():
            for p in root.rglob("*"):
                if p.is_file():
                    found[p] = p.read_bytes()
    return found


def test_default_policy_stores_no_prompt_or_output_and_logs_no_secret(
    tmp_path: Path,
    spawn: Callable[..., Child],
    sim_server: Callable[..., str],
    gateway_proc: Callable[..., tuple[GatewayHandle, Child]],
) -> None:
    server = start_redis(tmp_path / "redis", appendonly=True)
    try:
        password = "pw-" + uuid.uuid4().hex  # a secret in the Redis URL must not reach a log either
        redis.Redis.from_url(server.url).config_set("requirepass", password)
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        store = redis.Redis.from_url(url)
        store.config_set("appendfsync", "always")  # every write on disk before the search
        sim = sim_server("--speedup", "50", "--log-level", "debug")
        cfg = {
            "plans": {"p": plan(default_max_tokens=24)},
            "tenants": {"acme": {"plan": "p"}},  # default policy: no prompt_logging
            "models": {"mixtral-8x7b": {"backends": [sim], "continuous_usage_stats": True}},
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        spool = tmp_path / "spool"
        gw, gw_child = gateway_proc(
            path, redis_url=url, SERVELAB_SPOOL_DIR=str(spool), SERVELAB_LOG_LEVEL="debug"
        )
        key = gw.new_key("acme")
        client = gw.client(key)
        marker = "MARKER-" + uuid.uuid4().hex
        outputs: list[str] = []
        extra: dict[str, Any] = {"x-conversation-id": marker + "-conv"}
        messages = [{"role": "user", "content": f"Please keep this secret: {marker}"}]

        chat = client.chat.completions.create(
            model="mixtral-8x7b", messages=messages, user=marker + "-user", extra_headers=extra
        )
        outputs.append(chat.choices[0].message.content or "")
        text = ""
        for chunk in client.chat.completions.create(
            model="mixtral-8x7b", messages=messages, stream=True, user=marker + "-user", extra_headers=extra
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        outputs.append(text)
        done = client.completions.create(model="mixtral-8x7b", prompt=f"Complete: {marker}", max_tokens=20)
        outputs.append(done.choices[0].text)
        text = ""
        for c in client.completions.create(
            model="mixtral-8x7b", prompt=f"Complete: {marker}", max_tokens=20, stream=True
        ):
            if c.choices:
                text += c.choices[0].text
        outputs.append(text)
        # A client that goes away mid-stream, and a request the backend refuses.
        stream = client.chat.completions.create(
            model="mixtral-8x7b", messages=messages, stream=True, max_tokens=200
        )
        next(iter(stream))
        stream.close()
        assert all(len(o.strip()) >= 20 for o in outputs), outputs
        assert gw.usage("acme")["totals"]["requests"] >= 4  # the run was metered

        gw_child.stop()
        needles = {
            "marker": marker.encode(),
            "api key": key.encode(),
            "admin token": ADMIN_TOKEN.encode(),
            "redis password": password.encode(),
        }
        needles.update({f"output {i}": o.strip().encode() for i, o in enumerate(outputs)})

        redis_blobs = _redis_texts(store)
        assert any(b"events:" in b for b in redis_blobs)  # the usage stream is among what was searched
        files = _files(server.data_dir, spool, *(p for p in tmp_path.glob("*.log")))
        assert any(p.name.startswith("gateway-") for p in files) and any(
            p.name.startswith("sim-") for p in files
        )
        assert any(p.suffix == ".aof" or "appendonly" in str(p) for p in files)
        found = []
        for what, needle in needles.items():
            found += [f"{what} in Redis" for b in redis_blobs if needle in b]
            found += [f"{what} in {p.relative_to(tmp_path)}" for p, data in files.items() if needle in data]
        assert not found, sorted(set(found))
        # Control: the same search does find the marker once something writes it.
        store.set("control", f"x{marker}x")
        assert any(marker.encode() in b for b in _redis_texts(store))
        aof = _files(server.data_dir)
        assert any(marker.encode() in data for data in aof.values())
    finally:
        server.stop()
