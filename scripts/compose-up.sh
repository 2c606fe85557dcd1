#!/usr/bin/env bash
# Bring servelab up with docker compose on this box.
#   scripts/compose-up.sh cpu                  (make compose-up-cpu)
#   scripts/compose-up.sh gpu [PRESET]         (make compose-up-gpu PRESET=mixtral-8x7b-fp8-h100)
#   scripts/compose-up.sh --check cpu|gpu      only check the prerequisites
#   SERVELAB_STANDINS=1 scripts/compose-up.sh cpu   no registry: build a debootstrap base and stand-in
#                                              images from Debian packages (deploy/compose.standins.yaml)
# Checks prerequisites, writes deploy/.env (random admin token and Grafana password) if absent,
# builds the servelab image, starts the stack and waits for it to be healthy, creates one API key
# per demo tenant and prints URLs and keys. Ports bind 127.0.0.1 unless SERVELAB_BIND is set.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh

CHECK_ONLY=0
if [ "${1:-}" = "--check" ]; then CHECK_ONLY=1; shift; fi
FLAVOUR=${1:-}
PRESET=${2:-${PRESET:-mixtral-8x7b-fp8-h100}}
DEFAULT_PRESET=mixtral-8x7b-fp8-h100
IMAGE=${SERVELAB_IMAGE:-servelab:0.1.0}
case "$FLAVOUR" in
  cpu | gpu) ;;
  *) echo "usage: $0 [--check] cpu|gpu [PRESET]" >&2; exit 64 ;;
esac

need_cmd curl "install curl (apt-get install curl)"
need_cmd python3 "install Python 3 (apt-get install python3)"
need_docker
need_compose
if [ "$FLAVOUR" = gpu ]; then
  need_nvidia_runtime
  [ "$PRESET" = "$DEFAULT_PRESET" ] || need_servelab
fi
if [ "${SERVELAB_STANDINS:-0}" = 1 ]; then
  [ "$FLAVOUR" = cpu ] || missing "SERVELAB_STANDINS=1 with the gpu flavour" "vLLM has no Debian package: stand-ins are for cpu only"
  need_cmd debootstrap "apt-get install debootstrap (the stand-ins' base comes from the Debian mirror)"
fi
if [ "$FLAVOUR" = gpu ] && [ "$PRESET" != "$DEFAULT_PRESET" ] && [ "${COMPOSE_V1:-0}" = 1 ]; then
  missing "Docker Compose v2 for a non-default preset" "the generated override replaces lists with !override, which compose v1 cannot read"
fi
check_or_exit
[ "$CHECK_ONLY" = 1 ] && { echo "prerequisites for compose-up $FLAVOUR: ok"; exit 0; }

if [ ! -f deploy/.env ]; then
  (umask 077 && python3 - >deploy/.env <<'PY'
import secrets
print(f"SERVELAB_ADMIN_TOKEN={secrets.token_urlsafe(32)}")
print(f"GRAFANA_ADMIN_PASSWORD={secrets.token_urlsafe(16)}")
PY
  )
  echo "wrote deploy/.env (admin token, Grafana password; mode 600, git-ignored)"
fi
# shellcheck disable=SC1091
set -a && source deploy/.env && set +a

FILES=(-f deploy/compose.yaml -f "deploy/compose.$FLAVOUR.yaml")
TIMEOUT=300
if [ "$FLAVOUR" = gpu ]; then
  TIMEOUT=2700  # first start downloads the weights
  if [ "$PRESET" != "$DEFAULT_PRESET" ]; then
    "$SERVELAB_PY" deploy/preset_override.py "$PRESET"
    FILES+=(-f deploy/.generated/preset.yaml)
  fi
  [ -n "${HF_TOKEN:-}" ] || echo "note: HF_TOKEN is not set; gated models (Mixtral) need it to download" >&2
fi

echo "building $IMAGE"
# The Dockerfile needs BuildKit (its CA-certificate secret mount): on by default in Docker 23+ (buildx),
# behind DOCKER_BUILDKIT=1 in 20.10. Extra CA certificates (a TLS-intercepting proxy's) reach pip as
# a build secret, never a layer.
BUILD_ARGS=()
if [ "${SERVELAB_STANDINS:-0}" = 1 ]; then
  BASE=servelab-base/debian-python:bookworm
  scripts/build-base-image.sh "$BASE"
  for standin in redis nginx prometheus; do
    echo "building servelab-standin/$standin:bookworm (Debian package)"
    docker build -q -t "servelab-standin/$standin:bookworm" --build-arg "BASE=$BASE" "deploy/standins/$standin" >/dev/null
  done
  BUILD_ARGS+=(--build-arg "PYTHON_IMAGE=$BASE")
  FILES+=(-f deploy/compose.standins.yaml)
fi
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p deploy/.generated
  (umask 077 && cat /usr/local/share/ca-certificates/*.crt >deploy/.generated/extra-ca.pem)
  BUILD_ARGS+=(--secret id=extra-ca,src=deploy/.generated/extra-ca.pem)
fi
pick_buildkit_docker
DOCKER_BUILDKIT=1 "$BUILD_DOCKER" build "${BUILD_ARGS[@]}" -t "$IMAGE" .
if [ "$COMPOSE_V1" = 1 ]; then
  # Compose v1 has no --wait; it waits for the service_healthy dependencies (lb last) by itself.
  echo "starting: ${COMPOSE[*]} ${FILES[*]} up -d"
  "${COMPOSE[@]}" "${FILES[@]}" up -d
else
  echo "starting: ${COMPOSE[*]} ${FILES[*]} up -d --wait (up to $TIMEOUT s)"
  "${COMPOSE[@]}" "${FILES[@]}" up -d --wait --wait-timeout "$TIMEOUT"
fi

URL="http://127.0.0.1:${SERVELAB_PORT:-8080}"
wait_http "$URL/readyz" 60
mkdir -p deploy/.generated
create_demo_keys "$URL" "$SERVELAB_ADMIN_TOKEN" deploy/.generated/keys.json acme tiny noisy steady
DESC="simulator backends"
GRAFANA_LINE="http://127.0.0.1:${SERVELAB_GRAFANA_PORT:-3000}   (anonymous viewer; admin password in deploy/.env)"
[ "${SERVELAB_STANDINS:-0}" = 1 ] && GRAFANA_LINE="not started (no Debian package to stand in for grafana/grafana)"
[ "$FLAVOUR" = gpu ] && DESC="vLLM, preset $PRESET"
cat <<MSG

servelab is up ($DESC):
  gateway     $URL/v1        (2 replicas behind nginx)
  grafana     $GRAFANA_LINE
  prometheus  http://127.0.0.1:${SERVELAB_PROMETHEUS_PORT:-9090}
first request:
  curl $URL/v1/chat/completions -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' \\
    -d '{"model": "<model>", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'
tear down: scripts/compose-down.sh   (add --volumes to delete Redis, Prometheus and Grafana data)
MSG
