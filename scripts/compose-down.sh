#!/usr/bin/env bash
# Stop the compose deployment. --volumes also deletes its data (Redis usage, Prometheus, Grafana,
# and the Hugging Face cache of the GPU flavour: the next GPU start downloads the weights again).
#   scripts/compose-down.sh [--volumes]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
need_docker
need_compose
check_or_exit
[ -f deploy/.env ] && { set -a && source deploy/.env && set +a; }
export SERVELAB_ADMIN_TOKEN=${SERVELAB_ADMIN_TOKEN:-unused} GRAFANA_ADMIN_PASSWORD=${GRAFANA_ADMIN_PASSWORD:-unused}
FILES=(-f deploy/compose.yaml -f deploy/compose.cpu.yaml -f deploy/compose.gpu.yaml)
"${COMPOSE[@]}" "${FILES[@]}" down --remove-orphans "$@"
