"""The air-gapped install path of docs/onprem.md, end to end, with the network really gone.

1. scripts/airgap-wheelhouse.sh builds a wheelhouse here (this step uses the network), or
   SERVELAB_WHEELHOUSE names one built before;
2. inside `unshare -rn` (a new network namespace with only loopback: no route to any index)
   scripts/airgap-install.sh makes a fresh venv and installs from the wheelhouse only;
3. scripts/airgap-smoke.sh, still offline, counts a prompt with Mistral's tokenizer and gets a
   chat completion from the simulator whose usage matches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _offline(cmd: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    assert shutil.which("unshare"), "unshare (util-linux) is needed to take the network away"
    return subprocess.run(
        ["unshare", "-rn", "bash", "-c", f"ip link set lo up && {cmd}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"},
    )


def test_install_from_a_wheelhouse_with_no_network(tmp_path: Path) -> None:
    wheelhouse = os.environ.get("SERVELAB_WHEELHOUSE")
    if wheelhouse is None:
        wheelhouse = str(tmp_path / "wheelhouse")
        built = subprocess.run(
            [str(ROOT / "scripts/airgap-wheelhouse.sh"), wheelhouse],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert built.returncode == 0, built.stdout + built.stderr
        assert "wheelhouse ready" in built.stdout
    assert (Path(wheelhouse) / "SHA256SUMS").is_file()

    # The namespace really has no network: an index would be unreachable.
    probe = _offline(
        "python3 -c \"import socket; socket.create_connection(('pypi.org', 443), timeout=3)\"", 30
    )
    assert probe.returncode != 0

    venv = tmp_path / "venv"
    done = _offline(f"scripts/airgap-install.sh {wheelhouse} {venv} && scripts/airgap-smoke.sh {venv}", 900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "installed: servelab" in out
    assert "air-gapped install OK" in out
    assert (venv / "bin/servelab").exists()
