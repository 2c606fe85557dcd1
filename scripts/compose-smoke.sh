#!/usr/bin/env bash
# make compose-smoke: build the images and run deploy/'s cpu stack for real under Docker, offline
# (stand-in images from Debian packages when no registry answers), check it, tear it down, and
# write docs/results/compose-run.md. What it does, step by step: scripts/compose_smoke.py.
#   scripts/compose-smoke.sh [--git-ref HEAD] [--keep] [--results PATH] [--help]
# Exit status: 0 passed, 1 a check failed, 2 no virtualenv, 3 Docker cannot be started here.
set -euo pipefail
cd "${0%/*}/.."
if ! .venv/bin/python -c 'import openai, servelab' >/dev/null 2>&1; then
  echo "error: the servelab virtualenv is missing (.venv/bin/python cannot import openai, servelab); run 'make install'" >&2
  exit 2
fi
exec .venv/bin/python scripts/compose_smoke.py "$@"
