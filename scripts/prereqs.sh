# Prerequisite checks shared by the deploy scripts (sourced, not run). Each check prints what is
# missing and how to get it, and the caller exits with status 2 after reporting all of them.
# shellcheck shell=bash

MISSING=0

missing() {
  echo "missing: $1" >&2
  echo "         $2" >&2
  MISSING=$((MISSING + 1))
}

need_cmd() {  # need_cmd NAME HOW-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 || missing "$1 (not on PATH)" "$2"
}

need_docker() {
  if ! command -v docker >/dev/null 2>&1; then
    missing "docker (not on PATH)" "install Docker Engine: https://docs.docker.com/engine/install/"
    return
  fi
  if ! docker info >/dev/null 2>&1; then
    missing "a running Docker daemon ('docker info' fails)" \
      "start it (sudo systemctl start docker) and make sure this user may use it (docker group)"
  fi
}

need_compose() {  # sets COMPOSE, and COMPOSE_V1=1 for Debian's docker-compose 1.28/1.29
  COMPOSE_V1=0
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose -p servelab)  # -p, not `name:` in compose.yaml: compose v1 rejects that key
  elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
    COMPOSE=(docker-compose -p servelab)
  elif command -v docker-compose >/dev/null 2>&1 \
       && docker-compose version 2>/dev/null | grep -Eq 'version 1\.(2[89]|[3-9][0-9])\.'; then
    COMPOSE=(docker-compose -p servelab)  # the files load in v1 too; it has no `up --wait`
    COMPOSE_V1=1
  else
    missing "Docker Compose v2 ('docker compose version' fails; Debian's docker-compose 1.29 works too)" \
      "install the compose plugin: https://docs.docker.com/compose/install/linux/"
  fi
}

pick_buildkit_docker() {  # sets BUILD_DOCKER: a docker CLI that builds with BuildKit
  # Docker 23+ builds with BuildKit only through the buildx plugin; a 20.10 CLI (Debian's docker.io)
  # has it built in behind DOCKER_BUILDKIT=1. The Dockerfile's CA-certificate secret needs BuildKit.
  BUILD_DOCKER=docker
  docker buildx version >/dev/null 2>&1 && return
  local cli version
  for cli in docker /usr/bin/docker; do
    version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
    case "$version" in 1[0-9].* | 2[0-2].*) BUILD_DOCKER=$cli; return ;; esac
  done
}

need_nvidia_runtime() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    if ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
       && ! docker info --format '{{json .CDISpecDirs}}' 2>/dev/null | grep -q cdi; then
      missing "the NVIDIA container runtime (docker info lists no 'nvidia' runtime)" \
        "install the NVIDIA Container Toolkit and run 'sudo nvidia-ctk runtime configure --runtime=docker'"
    fi
  fi
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    || missing "an NVIDIA driver with a visible GPU ('nvidia-smi -L' fails)" "install the NVIDIA driver for your GPU"
}

need_servelab() {  # sets SERVELAB_PY to a python that can import the repo's packages
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import server.presets' >/dev/null 2>&1; then
    SERVELAB_PY=.venv/bin/python
  else
    missing "the servelab virtualenv (.venv/bin/python cannot import server.presets)" "run 'make install'"
  fi
}

check_or_exit() {
  if [ "$MISSING" -gt 0 ]; then
    echo "error: $MISSING prerequisite(s) missing; nothing was started." >&2
    exit 2
  fi
}

wait_http() {  # wait_http URL TIMEOUT_S
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: $1 not answering after $2 s" >&2
      return 1
    fi
    sleep 1
  done
}

create_demo_keys() {  # create_demo_keys GATEWAY_URL ADMIN_TOKEN OUT_JSON TENANT...
  local url=$1 token=$2 out=$3
  shift 3
  local json="{"
  local sep=""
  for tenant in "$@"; do
    local answer key
    answer=$(curl -fsS -X POST "$url/admin/v1/tenants/$tenant/keys" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{"name": "deploy"}') || {
      echo "error: could not create a key for tenant $tenant at $url" >&2
      return 1
    }
    key=$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    json="$json$sep\"$tenant\": \"$key\""
    sep=", "
  done
  json="$json}"
  (umask 077 && printf '%s\n' "$json" >"$out")
  echo "demo API keys (also in $out):"
  printf '%s' "$json" | python3 -c 'import json, sys; [print(f"  {t:8s} {k}") for t, k in json.load(sys.stdin).items()]'
}
