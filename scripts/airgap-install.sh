#!/usr/bin/env bash
# Step 2 of the air-gapped install (docs/onprem.md), on the machine WITHOUT network access:
# check the wheelhouse against its SHA256SUMS, create a virtual environment and install
# servelab from the wheelhouse only. pip is told there is no index (PIP_NO_INDEX, --no-index),
# and any find-links or config from the environment is ignored, so nothing is fetched.
#
#   scripts/airgap-install.sh WHEELHOUSE VENV
#
# Environment: PYTHON (default python3), SERVELAB_EXTRAS (e.g. "dev"; must match step 1).
set -euo pipefail

if [[ $# -ne 2 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -eq 2 ]] && exit 0 || exit 2
fi

DIR=$(cd "$1" && pwd)
VENV=$2
PY=${PYTHON:-python3}

echo "==> checking $DIR against SHA256SUMS"
(cd "$DIR" && sha256sum --quiet -c SHA256SUMS)

echo "==> creating $VENV"
"$PY" -m venv "$VENV"

spec=servelab
if [[ -n "${SERVELAB_EXTRAS:-}" ]]; then
  spec="servelab[$SERVELAB_EXTRAS]"
fi
echo "==> installing $spec from the wheelhouse only"
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
  PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$DIR" "$spec"
echo "installed: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("servelab", m.version("servelab"))')"
echo "check it with: scripts/airgap-smoke.sh $VENV"
