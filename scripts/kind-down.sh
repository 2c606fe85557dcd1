#!/usr/bin/env bash
# Delete the servelab kind cluster (and everything in it).
#   scripts/kind-down.sh            (make kind-down)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
need_cmd kind "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
check_or_exit
if kind get clusters 2>/dev/null | grep -qx servelab; then
  kind delete cluster --name servelab
else
  echo "no kind cluster named servelab; nothing to do"
fi
