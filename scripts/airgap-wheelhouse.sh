#!/usr/bin/env bash
# Step 1 of the air-gapped install (docs/onprem.md), on a machine WITH network access:
# build servelab's wheel and download every dependency as a wheel into one folder, with a
# SHA256SUMS file so the copy can be checked after it crosses the air gap.
#
#   scripts/airgap-wheelhouse.sh [WHEELHOUSE]            default: dist/wheelhouse
#
# Environment:
#   PYTHON           interpreter whose pip does the work (default python3); use the same minor
#                    version as the offline machine, or set TARGET_PYTHON below
#   SERVELAB_EXTRAS  extras to include, e.g. "dev" for the test tools (default: none)
#   TARGET_PLATFORM  pip platform tag of the offline machine when it differs from this one,
#                    e.g. manylinux2014_x86_64 (then TARGET_PYTHON, e.g. 3.11, is used too)
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DIR=${1:-$ROOT/dist/wheelhouse}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

target=()
if [[ -n "${TARGET_PLATFORM:-}" ]]; then
  target=(--platform "$TARGET_PLATFORM" --python-version "${TARGET_PYTHON:-3.11}" --implementation cp)
fi

echo "==> building the servelab wheel into $DIR"
rm -f "$DIR"/servelab-*.whl
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" "$ROOT"
wheel=$(ls "$DIR"/servelab-*.whl)

spec="$wheel"
if [[ -n "${SERVELAB_EXTRAS:-}" ]]; then
  spec="$wheel[$SERVELAB_EXTRAS]"
fi
echo "==> downloading dependencies (binary wheels only) into $DIR"
"$PY" -m pip download --quiet --dest "$DIR" --only-binary=:all: "${target[@]}" "$spec"

echo "==> writing $DIR/SHA256SUMS"
(cd "$DIR" && rm -f SHA256SUMS && sha256sum -- *.whl > SHA256SUMS)
count=$(ls "$DIR"/*.whl | wc -l)
size=$(du -sh "$DIR" | cut -f1)
echo "wheelhouse ready: $count wheels, $size in $DIR"
echo "copy the folder to the offline machine, then: scripts/airgap-install.sh $DIR VENV"
