# servelab: the two commands that matter are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test chaos install lint clean fairness scenarios airgap-test onprem-test compose-smoke compose-up-cpu compose-up-gpu compose-down kind-up kind-down

# uv through `python -m uv`: a freshly pip-installed uv may not be on PATH yet (pyenv shims).
$(BIN)/servelab: pyproject.toml
	@$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install --quiet uv
	@[ -x $(BIN)/python ] || $(PY) -m uv venv --quiet --python $(PY) $(VENV)
	$(PY) -m uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	@touch $@

install: $(BIN)/servelab

## Bring up Redis + simulated Mixtral-8x7B + gateway on 127.0.0.1, load-test it, print the table.
demo: install
	$(BIN)/servelab demo

## Run the test suite against real redis-server and real HTTP servers on 127.0.0.1.
test: install
	$(BIN)/pytest -q

## Fair share under contention: offline + live (2 gateways, 2 sim backends, Redis) -> docs/results/fairness.md.
fairness: install
	$(BIN)/python -m loadtest.bench.fairness

## The longer scenarios (scale-out, cold-start, overload, noisy-neighbour), short form, ~3 minutes.
scenarios: install
	$(BIN)/pytest -q tests/servelab/long_scenarios.py

## Re-run the commands behind the numbers in docs/walkthrough/ and rewrite them (make test checks them).
walkthrough: install
	$(BIN)/cog -r docs/walkthrough/serving.md docs/walkthrough/platform.md

## Faults, long streams, hostile and malformed input against a live local stack (a few minutes;
## not part of `make test`). Exits non-zero on any loss outside the bounds it prints.
chaos: install
	$(BIN)/python -m loadtest.chaos --out runs/chaos/chaos.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy gateway server loadtest servelab

## Deploy paths (need docker / kind / kubectl; each script checks and says what is missing).
PRESET ?= mixtral-8x7b-fp8-h100
compose-up-cpu:
	scripts/compose-up.sh cpu
compose-up-gpu: install
	scripts/compose-up.sh gpu $(PRESET)
compose-down:
	scripts/compose-down.sh
## The cpu stack for real under Docker, offline: starts dockerd if needed (root), builds the images
## (stand-ins from Debian packages when no registry answers), checks it, tears it down, writes
## docs/results/compose-run.md. 2-6 minutes (scripts/compose_smoke.py).
compose-smoke: install
	scripts/compose-smoke.sh
kind-up:
	scripts/kind-up.sh
kind-down:
	scripts/kind-down.sh

## Air-gapped install end to end: build a wheelhouse (network), then install and smoke-test it
## inside a network namespace with no network (scripts/airgap-*.sh, docs/onprem.md). ~1-3 min.
airgap-test: install
	SERVELAB_AIRGAP_TEST=1 $(BIN)/pytest -q tests/airgap

## The on-prem checks too long for `make test`: the canary scenario (~35 s) and the air-gapped install.
onprem-test: install
	SERVELAB_ONPREM_TEST=1 SERVELAB_AIRGAP_TEST=1 $(BIN)/pytest -q tests/onprem tests/airgap

clean:
	rm -rf $(VENV) .pytest_cache runs
