"""The canary scenario starts three simulators and a gateway and runs two rollouts (~35 s), so it
runs through `make onprem-test` (SERVELAB_ONPREM_TEST=1), not in `make test`."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("SERVELAB_ONPREM_TEST") == "1" else ["test_*.py"]
