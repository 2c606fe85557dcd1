"""`make compose-smoke`: build the images and run the compose stack for real, offline, then tear it down.

deploy/ is otherwise only validated (schemas, the compose loader, dashboards against live /metrics of
local processes). This script runs it under a real Docker engine, the way a new user would, on a
machine where no container registry answers:

1. starts dockerd if none runs (and stops it again at the end if it started it);
2. if no registry answers: builds a Debian base with debootstrap (scripts/build-base-image.sh; an
   existing one is reused), and stand-ins for redis, nginx and prometheus from Debian packages
   (deploy/standins/, named by the override deploy/compose.standins.yaml; the real compose files
   are not edited). Grafana has no Debian package and is left out;
3. builds the servelab image from the repo's Dockerfile with the host's extra CA certificates as a
   BuildKit secret, and proves the image does not contain them (every layer of `docker save` is
   searched for each certificate's body, with a certificate the image must contain as a control);
4. brings up the cpu stack (deploy/compose.yaml + compose.cpu.yaml) and waits for every container's
   healthcheck;
5. sends chat completions with the openai SDK through nginx and shows which gateway replica served
   each (nginx's X-Servelab-Upstream header, mapped to container names), requiring both;
6. requires every Prometheus target up (/api/v1/targets);
7. runs a short load test (`servelab loadtest chat`, bounded);
8. crashes one gateway (SIGKILL to its main process from the host): every SDK call must still
   succeed, none served by the dead replica before the engine restarted it;
9. crashes Redis the same way, after AOF's 1 s fsync window: the tenant's usage must read the same
   once the engine has restarted it;
10. tears everything down (containers, network, volumes), prints timings and writes the report
    (docs/results/compose-run.md by default).

Exit status: 0 passed, 1 a check failed, 3 Docker cannot be started here (the reason is printed).
Run as root on Linux; compose v2 (`docker compose`) is used if present, else compose v1
(`docker-compose` 1.29).
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROJECT = "servelab-smoke"
IMAGE = "servelab:0.1.0"
BASE_IMAGE = "servelab-base/debian-python:bookworm"
STANDINS = {
    "redis": "servelab-standin/redis:bookworm",
    "nginx": "servelab-standin/nginx:bookworm",
    "prometheus": "servelab-standin/prometheus:bookworm",
}
CA_DIR = Path("/usr/local/share/ca-certificates")
MODEL = "mixtral-8x7b"
REGISTRY_PROBE = "https://registry-1.docker.io/v2/"
CANNOT_RUN = 3


class SmokeFailed(Exception):
    """A check failed: the stack did not do what deploy/ claims."""


class CannotRun(Exception):
    """Docker cannot be started on this machine; nothing was checked."""


@dataclass
class Report:
    """Everything the results file shows, filled in as the steps run."""

    started_utc: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    ca_check: dict[str, Any] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    per_instance: dict[str, float] = field(default_factory=dict)
    targets: list[dict[str, str]] = field(default_factory=list)
    loadtest_table: str = ""
    loadtest_cmd: str = ""
    kill_gateway: dict[str, Any] = field(default_factory=dict)
    redis_restart: dict[str, Any] = field(default_factory=dict)
    outcome: str = "not finished"


def log(msg: str) -> None:
    print(f"[compose-smoke {time.strftime('%H:%M:%S')}] {msg}", flush=True)


HIDDEN: list[str] = []  # API keys and tokens created by this run, kept out of printed commands


def redact(text: str) -> str:
    for secret in HIDDEN:
        text = text.replace(secret, "<redacted>")
    return text


def sh(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command in the repo; on failure raise SmokeFailed with the end of its output."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout_s, cwd=REPO)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise SmokeFailed(redact(f"`{' '.join(argv)}` exited {proc.returncode}:\n  " + "\n  ".join(tail)))
    return proc


@contextlib.contextmanager
def timed(report: Report, name: str) -> Iterator[None]:
    start = time.monotonic()
    log(f"{name} ...")
    try:
        yield
    finally:
        report.timings[name] = time.monotonic() - start
        log(f"{name}: {report.timings[name]:.1f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------
# The engine


def docker_answers() -> bool:
    return (
        shutil.which("docker") is not None
        and sh(["docker", "info"], check=False, timeout_s=30).returncode == 0
    )


@contextlib.contextmanager
def docker_engine(report: Report, workdir: Path, *, keep: bool = False) -> Iterator[None]:
    """Use the running dockerd, or start one (root only) and stop it again afterwards (not with keep)."""
    if shutil.which("docker") is None:
        raise CannotRun("no docker CLI on PATH (apt-get install docker.io docker-compose)")
    if docker_answers():
        report.facts["dockerd"] = "already running (left running)"
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise CannotRun("no Docker daemon answers and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise CannotRun("no Docker daemon answers and starting dockerd needs root")
    log_path = workdir / "dockerd.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not docker_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
            raise CannotRun("dockerd did not start:\n  " + "\n  ".join(tail))
        time.sleep(0.5)
    log(f"started dockerd (pid {proc.pid})")
    if keep:
        report.facts["dockerd"] = f"started by this script (pid {proc.pid}) and left running (--keep)"
        yield
        log(f"--keep: dockerd (pid {proc.pid}) left running with the stack; stop it with kill {proc.pid}")
        return
    report.facts["dockerd"] = f"started by this script (pid {proc.pid}) and stopped at the end"
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log("stopped dockerd")


def registry_answers() -> bool:
    """Any HTTP answer (Docker Hub says 401 to anonymous /v2/) means images can be pulled."""
    try:
        urllib.request.urlopen(REGISTRY_PROBE, timeout=5)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def compose_cli() -> list[str]:
    """Compose v2 if present, else v1 (1.29); the files load in both (deploy/compose.yaml says how)."""
    if sh(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CannotRun("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


def buildkit_docker() -> tuple[str, dict[str, str]]:
    """A docker CLI that builds with BuildKit (the Dockerfile's CA secret needs it).

    Docker 23+ CLIs build with BuildKit only through the buildx plugin; a 20.10 CLI (Debian's
    docker.io) has BuildKit built in behind DOCKER_BUILDKIT=1.
    """
    candidates = [c for c in (shutil.which("docker"), "/usr/bin/docker") if c and Path(c).exists()]
    for cli in dict.fromkeys(candidates):
        if sh([cli, "buildx", "version"], check=False).returncode == 0:
            return cli, {}
        version = sh([cli, "version", "--format", "{{.Client.Version}}"], check=False).stdout.strip()
        if re.match(r"^(1\d|2[0-2])\.", version):
            return cli, {"DOCKER_BUILDKIT": "1"}
    raise SmokeFailed(
        "no docker CLI here builds with BuildKit: install the buildx plugin, or Debian's docker.io "
        f"(its 20.10 CLI has BuildKit built in); tried {candidates}"
    )


# ---------------------------------------------------------------------------------------------------
# Images


def image_size(ref: str) -> int:
    return int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", ref]).stdout.strip())


def extra_ca_bundle(workdir: Path) -> Path | None:
    """Every *.crt under /usr/local/share/ca-certificates in one PEM file (mode 600), or None."""
    certs = sorted(CA_DIR.rglob("*.crt")) if CA_DIR.is_dir() else []
    if not certs:
        return None
    bundle = workdir / "extra-ca.pem"
    bundle.touch(mode=0o600)
    bundle.write_text("".join(c.read_text() for c in certs))
    return bundle


def pem_markers(pem: str) -> list[bytes]:
    """One full base64 line from inside each certificate: present wherever the certificate is copied."""
    markers = []
    for block in re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", pem, re.S):
        lines = [ln.strip() for ln in block.splitlines() if len(ln.strip()) == 64]
        if len(lines) >= 3:
            markers.append(lines[len(lines) // 2].encode())
    return markers


def scan_saved_image(stream: IO[bytes], markers: dict[str, bytes]) -> tuple[int, int, dict[str, list[str]]]:
    """Search every file of every layer of a `docker save` stream for the markers.

    Returns (layers, files, {marker name: [layer/path, ...]}). Reads the archive once, streaming.
    """
    hits: dict[str, list[str]] = {name: [] for name in markers}
    layers = files = 0
    with tarfile.open(fileobj=stream, mode="r|") as outer:
        for member in outer:
            if not member.isfile():
                continue
            fobj = outer.extractfile(member)
            if fobj is None:
                continue
            is_layer = member.name.endswith("layer.tar") or member.name.startswith("blobs/")
            if not is_layer:
                data = fobj.read()  # manifest, image config (history, env)
                for name, marker in markers.items():
                    if marker in data:
                        hits[name].append(member.name)
                continue
            try:
                inner = tarfile.open(fileobj=fobj, mode="r|")  # noqa: SIM115 (closed by the with below)
            except tarfile.ReadError:  # an OCI blob that is a config, not a layer
                continue
            layers += 1
            with inner:
                for entry in inner:
                    if not entry.isfile():
                        continue
                    files += 1
                    efile = inner.extractfile(entry)
                    content = efile.read() if efile else b""
                    for name, marker in markers.items():
                        if marker in content:
                            hits[name].append(f"{member.name}:{entry.name}")
    return layers, files, hits


def check_image_has_no_extra_ca(report: Report, bundle: Path | None) -> None:
    if bundle is None:
        report.ca_check = {"result": f"no extra CA certificates under {CA_DIR}: nothing to check"}
        return
    extra = pem_markers(bundle.read_text())
    # A control the scan must find, or a miss proves nothing: a certificate from the image's own
    # system bundle.
    system = sh(["docker", "run", "--rm", "--entrypoint", "cat", IMAGE, "/etc/ssl/certs/ca-certificates.crt"])
    control = pem_markers(system.stdout)
    if not extra or not control:
        raise SmokeFailed("could not read certificate markers (extra CA bundle or the image's system bundle)")
    markers = {f"extra-ca-{i + 1}": m for i, m in enumerate(extra)}
    markers["control"] = control[0]
    save = subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE)
    assert save.stdout is not None
    layers, files, hits = scan_saved_image(save.stdout, markers)
    save.stdout.close()
    if save.wait(timeout=120) != 0:
        raise SmokeFailed("docker save failed")
    history = sh(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE]).stdout
    leaked = {k: v for k, v in hits.items() if k != "control" and v}
    report.ca_check = {
        "certificates": len(extra),
        "layers": layers,
        "files": files,
        "control_found_in": hits["control"][:2],
        "leaked": leaked,
        "history_mentions_begin_certificate": "BEGIN CERTIFICATE" in history,
    }
    if not hits["control"]:
        raise SmokeFailed("the CA scan did not find its control certificate: the scan is broken")
    if leaked or "BEGIN CERTIFICATE" in history:
        raise SmokeFailed(f"the image contains the extra CA certificates: {leaked}")
    log(f"image has none of the {len(extra)} extra CA certificates ({layers} layers, {files} files searched)")


def build_context(git_ref: str | None, workdir: Path) -> Path:
    """The repo's working tree, or a clean export of a commit (for a checkout with work in progress)."""
    if git_ref is None:
        return REPO
    ctx = workdir / "context"
    ctx.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", git_ref], capture_output=True, check=True, timeout=120
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(ctx)], input=archive, check=True, timeout=120)
    return ctx


def build_images(report: Report, args: argparse.Namespace, workdir: Path, standins: bool) -> None:
    if standins:
        with timed(report, "base image (debootstrap)"):
            out = sh([str(REPO / "scripts" / "build-base-image.sh"), BASE_IMAGE], timeout_s=900)
            report.facts["base image"] = out.stdout.strip().splitlines()[-1]
    cli, env = buildkit_docker()
    bundle = extra_ca_bundle(workdir)
    context = build_context(args.git_ref, workdir)
    argv = [cli, "build", "-t", IMAGE]
    if standins:
        argv += ["--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"]
    if os.environ.get("PIP_INDEX_URL", "").startswith(("http://", "https://")):
        argv += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    if bundle is not None:
        argv += ["--secret", f"id=extra-ca,src={bundle}"]
    argv.append(str(context))
    with timed(report, "servelab image build"):
        sh(argv, env=env, timeout_s=900)
    report.image = {
        "tag": IMAGE,
        "base": BASE_IMAGE if standins else "the Dockerfile's default (official Python slim)",
        "size_mb": image_size(IMAGE) / 1e6,
        "build_s": report.timings["servelab image build"],
        "context": f"git archive {args.git_ref}" if args.git_ref else "working tree",
        "builder": f"{cli} {'(DOCKER_BUILDKIT=1)' if env else '(buildx)'}",
        "extra_ca": f"{len(pem_markers(bundle.read_text()))} certificates as a BuildKit secret"
        if bundle
        else "none",
    }
    with timed(report, "CA certificate check"):
        check_image_has_no_extra_ca(report, bundle)
    if standins:
        with timed(report, "stand-in images"):
            for name, tag in STANDINS.items():
                sh(
                    [
                        "docker",
                        "build",
                        "-q",
                        "-t",
                        tag,
                        "--build-arg",
                        f"BASE={BASE_IMAGE}",
                        str(DEPLOY / "standins" / name),
                    ],
                    timeout_s=600,
                )
        report.facts["stand-in sizes"] = ", ".join(
            f"{n} {image_size(t) / 1e6:.0f} MB" for n, t in STANDINS.items()
        )


# ---------------------------------------------------------------------------------------------------
# The stack


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str
    ip: str
    state: str
    health: str


class Stack:
    """The compose project: files, environment, and what its containers are doing."""

    def __init__(self, compose: list[str], standins: bool, workdir: Path) -> None:
        files = ["compose.yaml", "compose.cpu.yaml"] + (["compose.standins.yaml"] if standins else [])
        self.argv = [*compose, "-p", PROJECT, "--project-directory", str(DEPLOY)]
        for f in files:
            self.argv += ["-f", str(DEPLOY / f)]
        self.port = free_port()
        self.prom_port = free_port()
        self.admin_token = secrets.token_urlsafe(24)
        HIDDEN.append(self.admin_token)
        self.env = {
            "SERVELAB_ADMIN_TOKEN": self.admin_token,
            "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(12),
            "SERVELAB_BIND": "127.0.0.1",
            "SERVELAB_PORT": str(self.port),
            "SERVELAB_PROMETHEUS_PORT": str(self.prom_port),
            "SERVELAB_GRAFANA_PORT": str(free_port()),
            "SERVELAB_IMAGE": IMAGE,
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.prom_url = f"http://127.0.0.1:{self.prom_port}"
        self.workdir = workdir

    def compose(
        self, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return sh([*self.argv, *args], env=self.env, timeout_s=timeout_s, check=check)

    def containers(self) -> list[Container]:
        ids = sh(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        ).stdout.split()
        if not ids:
            return []
        out = []
        for c in json.loads(sh(["docker", "inspect", *ids]).stdout):
            nets = c["NetworkSettings"]["Networks"] or {}
            out.append(
                Container(
                    id=c["Id"][:12],
                    name=c["Name"].lstrip("/"),
                    service=c["Config"]["Labels"].get("com.docker.compose.service", "?"),
                    ip=next((n["IPAddress"] for n in nets.values() if n.get("IPAddress")), ""),
                    state=c["State"]["Status"],
                    health=(c["State"].get("Health") or {}).get("Status", "none"),
                )
            )
        return sorted(out, key=lambda c: c.name)

    def wait_healthy(self, timeout_s: float, expect: int) -> list[Container]:
        deadline = time.monotonic() + timeout_s
        while True:
            cs = self.containers()
            if len(cs) >= expect and all(c.state == "running" and c.health == "healthy" for c in cs):
                return cs
            if time.monotonic() > deadline:
                states = ", ".join(f"{c.name} {c.state}/{c.health}" for c in cs)
                raise SmokeFailed(f"stack not healthy after {timeout_s:.0f} s: {states}")
            time.sleep(1)

    def logs_tail(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "15", check=False).stdout[-6000:]


def http_json(
    url: str, *, method: str = "GET", body: Any = None, token: str | None = None, timeout_s: float = 10
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def create_key(stack: Stack, tenant: str) -> str:
    answer = http_json(
        f"{stack.url}/admin/v1/tenants/{tenant}/keys",
        method="POST",
        body={"name": "compose-smoke"},
        token=stack.admin_token,
    )
    HIDDEN.append(str(answer["key"]))
    return str(answer["key"])


class Attempts:
    """Every HTTP response the SDK saw, its own retries included: status and the replica header."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def hook(self, response: Any) -> None:
        self.seen.append((response.status_code, response.headers.get("x-servelab-upstream", "")))


def replica_of(upstream: str, ip_names: dict[str, str]) -> str:
    """nginx lists every address it tried ("a:8080, b:8080"); the last one answered."""
    last = upstream.split(",")[-1].strip()
    return ip_names.get(last.rsplit(":", 1)[0], last or "?")


def sdk_call(
    client: Any, attempts: Attempts, ip_names: dict[str, str], *, stream: bool, note: str = ""
) -> dict[str, Any]:
    """One chat completion through nginx, as a user's openai SDK sends it (default retries).

    Which replica served it comes from nginx's X-Servelab-Upstream header; every attempt the SDK
    made (a retried 502 shows as "502, 200") is recorded beside it.
    """
    from openai import OpenAIError

    messages = [{"role": "user", "content": "Explain expert parallelism in one sentence."}]
    start = time.monotonic()
    first = len(attempts.seen)
    status: int | None = None
    upstream, text, error = "", "", ""
    try:
        if stream:
            with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=messages, max_tokens=16, stream=True
            ) as resp:
                upstream, status = resp.headers.get("x-servelab-upstream", ""), resp.status_code
                text = "".join(
                    (chunk.choices[0].delta.content or "") for chunk in resp.parse() if chunk.choices
                )
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=16
            )
            upstream, status = raw.headers.get("x-servelab-upstream", ""), raw.status_code
            text = raw.parse().choices[0].message.content or ""
    except OpenAIError as exc:
        status, error = getattr(exc, "status_code", None), type(exc).__name__
    tries = attempts.seen[first:]
    return {
        "ok": status == 200 and bool(text),
        "status": status,
        "attempts": ", ".join(str(code) for code, _ in tries) or "none",
        "retried": len(tries) > 1,
        "stream": stream,
        "replica": replica_of(upstream, ip_names) if upstream else "-",
        "upstream": upstream,
        "ms": (time.monotonic() - start) * 1000,
        "note": f"{note} {error}".strip(),
    }


def prometheus_targets(stack: Stack) -> list[dict[str, str]]:
    data = http_json(f"{stack.prom_url}/api/v1/targets")["data"]["activeTargets"]
    return [
        {
            "job": t["labels"]["job"],
            "url": t["scrapeUrl"],
            "health": t["health"],
            "error": t.get("lastError", ""),
        }
        for t in data
    ]


def prometheus_query(stack: Stack, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.quote(query)
    return list(http_json(f"{stack.prom_url}/api/v1/query?query={q}")["data"]["result"])


def usage_of(stack: Stack, key: str) -> dict[str, Any]:
    report = http_json(f"{stack.url}/v1/usage", token=key)
    return {k: v for k, v in report.items() if k != "month"}


def crash(container: Container) -> None:
    """SIGKILL the container's main process from the host, as a crash looks to the engine.

    Not `docker kill`: the engine counts that as a deliberate stop and its restart policy does not
    bring the container back, while a crash is exactly what `restart: unless-stopped` is for.
    """
    pid = int(sh(["docker", "inspect", "-f", "{{.State.Pid}}", container.id]).stdout.strip())
    if pid <= 0:
        raise SmokeFailed(f"{container.name} has no running process to kill")
    os.kill(pid, signal.SIGKILL)


def started_at(container: Container) -> float:
    """When the engine last started the container (Unix seconds; the host's clock)."""
    text = sh(["docker", "inspect", "-f", "{{.State.StartedAt}}", container.id]).stdout.strip()
    stamp = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?", text)
    if stamp is None:
        raise SmokeFailed(f"unreadable StartedAt {text!r} for {container.name}")
    seconds = calendar.timegm(time.strptime(stamp.group(1), "%Y-%m-%dT%H:%M:%S"))
    return seconds + float(stamp.group(2) or 0)


def wait_back_healthy(stack: Stack, container: Container, *, since: float, timeout_s: float) -> float | None:
    """Seconds from `since` until the container runs again with a green healthcheck, or None."""
    deadline = since + timeout_s
    seen_down = False
    while time.monotonic() < deadline:
        state = next((c for c in stack.containers() if c.id == container.id), None)
        if state is not None:
            seen_down = seen_down or state.state != "running" or state.health != "healthy"
            if seen_down and state.state == "running" and state.health == "healthy":
                return time.monotonic() - since
        time.sleep(0.5)
    return None


def run_checks(report: Report, stack: Stack, args: argparse.Namespace, standins: bool) -> None:
    from openai import DefaultHttpxClient, OpenAI

    expect = 7 if standins else 8  # redis, 2 gateways, lb, prometheus, 2 sims (+ grafana)
    if stack.containers():  # left over from an interrupted run: start from nothing
        log(f"removing the containers and volumes a previous {PROJECT} run left")
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
    with timed(report, "stack up (compose up + every healthcheck green)"):
        stack.compose("up", "-d", timeout_s=600)
        containers = stack.wait_healthy(timeout_s=300, expect=expect)
    report.facts["containers"] = ", ".join(f"{c.name} ({c.ip})" for c in containers)
    gateways = [c for c in containers if c.service == "gateway"]
    if len(gateways) != 2:
        raise SmokeFailed(f"expected 2 gateway replicas, found {[c.name for c in gateways]}")
    ip_names = {c.ip: c.name for c in containers}

    with timed(report, "SDK calls through nginx"):
        key = create_key(stack, "acme")
        attempts = Attempts()
        client = OpenAI(
            base_url=f"{stack.url}/v1",
            api_key=key,
            timeout=30,
            http_client=DefaultHttpxClient(timeout=30, event_hooks={"response": [attempts.hook]}),
        )
        for i in range(args.calls):
            report.calls.append(sdk_call(client, attempts, ip_names, stream=i % 3 == 2))
    served = {c["replica"] for c in report.calls if c["ok"]}
    if not all(c["ok"] and not c["retried"] for c in report.calls):
        raise SmokeFailed(f"SDK calls failed or needed retries: {[c for c in report.calls if not c['ok']]}")
    if served != {g.name for g in gateways}:
        raise SmokeFailed(f"requests were served by {sorted(served)}, not by both replicas")

    with timed(report, "Prometheus targets all up"):
        deadline = time.monotonic() + 90
        while True:
            report.targets = prometheus_targets(stack)
            jobs = [t["job"] for t in report.targets]
            all_up = all(t["health"] == "up" for t in report.targets)
            if all_up and jobs.count("gateway") == 2 and jobs.count("backend") == 2:
                break
            if time.monotonic() > deadline:
                raise SmokeFailed(f"Prometheus targets not all up: {report.targets}")
            time.sleep(2)
        # The scraped per-replica counters agree that both replicas served requests.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = prometheus_query(stack, "sum by (instance) (servelab_gateway_requests_total)")
            report.per_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in rows}
            if sum(report.per_instance.values()) >= args.calls:
                break
            time.sleep(2)

    with timed(report, "load test"):
        # The load generator runs from the image itself, on the compose network, through nginx: the
        # image's own `servelab loadtest` is exercised, and the host needs nothing but Docker.
        out = stack.workdir / "loadtest"
        out.mkdir()
        out.chmod(0o777)  # the image runs as UID 10001
        load = [
            "loadtest",
            "chat",
            "--target",
            "http://lb:8080",
            "--api-key",
            f"acme={key}",
            "--model",
            MODEL,
            "--rate",
            str(args.rate),
            "--duration",
            f"{args.duration_s}s",
            "--out",
            "/out/run",
        ]
        argv = ["docker", "run", "--rm", "--network", f"{PROJECT}_default", "-v", f"{out}:/out", IMAGE, *load]
        report.loadtest_cmd = "servelab " + " ".join(load).replace(key, "$KEY")
        sh(argv, timeout_s=args.duration_s + 240)
        out = out / "run"
        summary = json.loads((out / "summary.json").read_text())
        md = (out / "report.md").read_text()
        m = re.search(r"## Client-side.*?\n\n(\|.*?)\n\n(.*?)\n", md, re.S)
        report.loadtest_table = (m.group(1) + "\n\n" + m.group(2)) if m else md[:3000]
        overall = summary["overall"]
        if overall["ok"] == 0 or overall["errors"]:
            raise SmokeFailed(f"load test: {overall['ok']} ok, {overall['errors']} errors")

    with timed(report, "kill a gateway"):
        victim, survivor = gateways
        crash(victim)
        killed_at, killed_wall = time.monotonic(), time.time()
        calls = []
        for i in range(args.calls):
            sent_s = time.monotonic() - killed_at
            call = sdk_call(client, attempts, ip_names, stream=i % 3 == 2, note=f"t+{sent_s:.1f}s")
            calls.append({**call, "sent_s": sent_s})
        back_s = wait_back_healthy(stack, victim, since=killed_at, timeout_s=90)
        # The engine restarts a crashed replica within a second or two, so later calls may reach it
        # again; what must hold is that every call succeeds and that the dead one answered none
        # before it was running again.
        restarted_s = started_at(victim) - killed_wall
        for c in calls:
            if c["replica"] == victim.name:
                c["note"] += " (restarted)"
        report.kill_gateway = {
            "killed": victim.name,
            "survivor": survivor.name,
            "calls": calls,
            "back_healthy_s": back_s,
            "restarted_s": restarted_s,
        }
        bad = [
            c
            for c in calls
            if not c["ok"] or (c["replica"] == victim.name and c["sent_s"] + c["ms"] / 1000 < restarted_s)
        ]
        if bad or not any(c["replica"] == survivor.name for c in calls):
            raise SmokeFailed(f"after killing {victim.name} (restarted after {restarted_s:.1f} s): {calls}")
        if back_s is None:
            raise SmokeFailed(
                f"{victim.name} was not restarted and healthy within 90 s (restart: unless-stopped)"
            )

    with timed(report, "Redis restart (SIGKILL)"):
        before = usage_of(stack, key)
        time.sleep(1.5)  # appendfsync everysec: what was written more than a second ago is on disk
        redis = next(c for c in stack.containers() if c.service == "redis")
        crash(redis)
        killed_at = time.monotonic()
        back_s = wait_back_healthy(stack, redis, since=killed_at, timeout_s=90)
        if back_s is None:
            raise SmokeFailed("Redis was not restarted and healthy within 90 s (restart: unless-stopped)")
        deadline = time.monotonic() + 60
        after: dict[str, Any] | None = None
        while after is None:
            try:
                after = usage_of(stack, key)
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise SmokeFailed(
                        "the gateway did not answer /v1/usage within 60 s of Redis returning"
                    ) from None
                time.sleep(1)
        aof = sh(["docker", "exec", redis.id, "ls", "/data/appendonlydir"]).stdout
        post = sdk_call(client, attempts, ip_names, stream=False, note="after the restart")
        report.redis_restart = {
            "before": before,
            "after": after,
            "back_healthy_s": back_s,
            "aof_files": aof.split(),
            "call_after": post,
        }
        if after != before:
            raise SmokeFailed(f"usage changed across the Redis restart: before {before}, after {after}")
        if not post["ok"]:
            raise SmokeFailed(f"a request after the Redis restart failed: {post}")


# ---------------------------------------------------------------------------------------------------
# The report


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        proc = sh(argv, check=False)
        return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"

    return {
        "docker engine": sh(
            ["docker", "version", "--format", "{{.Server.Version}}"], check=False
        ).stdout.strip(),
        "compose": first_line([*compose_cli(), "version"]),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "load average at the end (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


STANDIN_NOTE = (
    "The cpu stack of deploy/ (`compose.yaml` + `compose.cpu.yaml`): Redis, two gateway replicas behind"
    " nginx, two simulator backends, Prometheus. No registry answered, so the third-party images are"
    " stand-ins built from Debian bookworm packages (`deploy/compose.standins.yaml`) on a debootstrap"
    " base, and Grafana (no Debian package) did not run."
)


def write_report(report: Report, path: Path, argv: list[str]) -> None:
    md = [
        "# compose stack, run for real (make compose-smoke)",
        "",
        f"Written by `scripts/compose_smoke.py` ({' '.join(['scripts/compose-smoke.sh', *argv])}),"
        f" started {report.started_utc}. Outcome: **{report.outcome}**.",
        "",
        STANDIN_NOTE if report.facts.get("registry") == "no" else "A registry answered: official images.",
        "",
        "## Machine and tools",
        "",
        *[f"- {k}: {v}" for k, v in report.facts.items()],
        "",
        "## Timings",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in report.timings.items()],
        "",
    ]
    if report.image:
        i = report.image
        md += [
            "## Image",
            "",
            f"`{i['tag']}` built from the repo's Dockerfile ({i['context']}) on {i['base']}: "
            f"**{i['build_s']:.1f} s**, **{i['size_mb']:.0f} MB**. Builder: {i['builder']}. "
            f"Extra CA certificates: {i['extra_ca']}.",
            "",
        ]
    if report.ca_check:
        c = report.ca_check
        if "leaked" in c:
            md += [
                f"CA check: every file of the image's {c['layers']} layers ({c['files']} files) and its"
                f" config were searched for a base64 line of each of the {c['certificates']} extra"
                f" certificates: found in {len(c['leaked'])} places. Control (a certificate of the image's"
                f" own system bundle) found in {c['control_found_in']}. `docker history` mentions a"
                f" certificate: {c['history_mentions_begin_certificate']}.",
                "",
            ]
        else:
            md += [f"CA check: {c['result']}.", ""]
    if report.calls:
        md += [
            "## SDK calls through nginx (openai SDK, one published port)",
            "",
            "| # | stream | status | served by | ms |",
            "|---|---|---|---|---|",
        ]
        md += [
            f"| {n + 1} | {c['stream']} | {c['status']} | {c['replica']} ({c['upstream']}) | {c['ms']:.0f} |"
            for n, c in enumerate(report.calls)
        ]
        if report.per_instance:
            md += [
                "",
                "Prometheus, `sum by (instance) (servelab_gateway_requests_total)` after the calls: "
                + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(report.per_instance.items()))
                + ".",
            ]
        md.append("")
    if report.targets:
        md += [
            "## Prometheus targets (/api/v1/targets)",
            "",
            "| job | scrape URL | health |",
            "|---|---|---|",
        ]
        md += [f"| {t['job']} | {t['url']} | {t['health']} |" for t in report.targets]
        md.append("")
    if report.loadtest_table:
        md += ["## Load test", "", f"`{report.loadtest_cmd}`", "", report.loadtest_table, ""]
    if report.kill_gateway:
        k = report.kill_gateway
        back = f"{k['back_healthy_s']:.1f} s" if k["back_healthy_s"] is not None else "never (90 s)"
        md += [
            "## A gateway container killed",
            "",
            f"{k['killed']}'s main process SIGKILLed from the host (a crash), then the same calls at once"
            f" through nginx. The engine restarted the crashed replica (`restart: unless-stopped`): running"
            f" again {k['restarted_s']:.1f} s after the kill, healthy after {back}.",
            "",
            "| # | sent | stream | HTTP status of each attempt | served by | addresses nginx tried | ms |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {n + 1} | {c['note']} | {c['stream']} | {c['attempts']} | {c['replica']} |"
                f" {c['upstream']} | {c['ms']:.0f} |"
                for n, c in enumerate(k["calls"])
            ],
            "",
            "The openai SDK retries a 502 by itself (2 retries by default, with a back-off); a status list"
            " such as `502, 200` is one call whose first attempt reached the replica as it died.",
            "",
        ]
    if report.redis_restart:
        r = report.redis_restart
        same = "identical" if r["before"] == r["after"] else "DIFFERENT"
        md += [
            "## Redis killed (SIGKILL) and restarted by the engine",
            "",
            "Usage of tenant `acme` read through the gateway before the kill and after Redis was healthy"
            f" again ({r['back_healthy_s']:.1f} s later): **{same}**."
            " Redis's main process was SIGKILLed from the host 1.5 s after the last write (AOF fsyncs every"
            f" second) and restarted by the engine. /data/appendonlydir: {', '.join(r['aof_files'])}."
            f" A request after the restart: status {r['call_after']['status']},"
            f" served by {r['call_after']['replica']}.",
            "",
            "```json",
            json.dumps(r["after"], indent=1, sort_keys=True)[:2500],
            "```",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md) + "\n")


# ---------------------------------------------------------------------------------------------------


def keep_env_file(stack: Stack) -> Path:
    """The kept stack's environment (mode 600, git-ignored), to use it and to tear it down."""
    path = DEPLOY / ".generated" / "smoke.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in stack.env.items()))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/compose-smoke.sh",
        description="Build the images and run deploy/'s cpu stack for real under Docker, offline; check it; "
        "tear it down. Exit 0 passed, 1 failed, 3 Docker cannot be started here.",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "docs" / "results" / "compose-run.md",
        help="where to write the report (default docs/results/compose-run.md)",
    )
    parser.add_argument(
        "--standins",
        choices=["auto", "always", "never"],
        default="auto",
        help="build stand-ins for the third-party images: auto = when no registry answers",
    )
    parser.add_argument(
        "--git-ref",
        default=None,
        help="build the image from this commit (git archive) instead of the working tree",
    )
    parser.add_argument(
        "--calls", type=int, default=6, help="SDK calls through nginx (and again after the kill)"
    )
    parser.add_argument("--rate", type=float, default=4.0, help="load test: requests/s")
    parser.add_argument("--duration-s", type=int, default=20, help="load test: seconds of sending")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (tear down by hand)")
    args = parser.parse_args(argv)
    shown_args = [a for a in (argv if argv is not None else sys.argv[1:])]

    report = Report()
    t0 = time.monotonic()
    rc = 1
    with tempfile.TemporaryDirectory(prefix="compose-smoke-") as tmp:
        workdir = Path(tmp)
        try:
            if platform.system() != "Linux":
                raise CannotRun(f"dockerd runs on Linux only, this is {platform.system()}")
            with docker_engine(report, workdir, keep=args.keep):
                compose = compose_cli()
                standins = args.standins == "always" or (args.standins == "auto" and not registry_answers())
                report.facts["registry"] = "no" if standins else "yes"
                log(
                    "no registry answers: stand-in images from Debian packages"
                    if standins
                    else "using the official images"
                )
                report.facts.update(versions())
                build_images(report, args, workdir, standins)
                stack = Stack(compose, standins, workdir)
                try:
                    run_checks(report, stack, args, standins)
                    rc = 0
                    report.outcome = "passed"
                except Exception:
                    print(stack.logs_tail(), file=sys.stderr)
                    raise
                finally:
                    if args.keep:
                        env_file = keep_env_file(stack)
                        log(
                            f"--keep: stack left running: gateway {stack.url}, Prometheus {stack.prom_url};"
                            f" its environment (admin token included) is in {env_file}. Tear down with:\n"
                            f"  set -a; . {env_file}; set +a; {' '.join(stack.argv)} down -v"
                        )
                    else:
                        with timed(report, "tear down"):
                            stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
                        left = stack.containers()
                        if left:
                            rc, report.outcome = 1, f"failed: containers left after down: {left}"
        except CannotRun as exc:
            print(f"compose-smoke: cannot run here: {exc}", file=sys.stderr)
            return CANNOT_RUN
        except (SmokeFailed, subprocess.TimeoutExpired) as exc:
            report.outcome = f"failed: {str(exc).splitlines()[0]}"
            print(f"compose-smoke: FAILED: {exc}", file=sys.stderr)
            rc = 1
        report.timings["total"] = time.monotonic() - t0
        write_report(report, args.results, shown_args)
    print("\ntimings:")
    for k, v in report.timings.items():
        print(f"  {k:<50} {v:7.1f} s")
    print(f"report: {args.results}\ncompose-smoke: {report.outcome}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
