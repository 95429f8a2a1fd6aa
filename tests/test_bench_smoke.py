"""The benchmark harness must keep working: run ``python -m bench --smoke`` (every scenario once, tiny
sizes) and require success. Outside CI it is skipped when node/npm (the subscriber fleet) are missing;
in CI (``CI`` set) it runs regardless and fails without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, subprocess_env

SMOKE_TIMEOUT = 120.0  # ~35 s on a quiet box; the box is often shared


@pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("node") is None or shutil.which("npm") is None),
    reason="the benchmark fleet needs node and npm",
)
def test_bench_smoke_mode_succeeds(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env=subprocess_env(credentials=False),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"bench --smoke failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert (tmp_path / "smoke-latest.json").exists()
