"""The deployment examples are true: the systemd unit passes ``systemd-analyze verify``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "sky-mini.service"


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Verify the unit with ExecStart pointed at this checkout's real ``sky-mini``."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    sky_mini = Path(sys.executable).with_name("sky-mini")
    assert sky_mini.exists(), f"{sky_mini}: install the package (./scripts/test does)"
    text = unit_text.replace("/opt/sky-mini/.venv/bin/sky-mini", str(sky_mini))
    path = tmp_path / "sky-mini.service"
    path.write_text(text)
    return subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"),
    )


def test_systemd_unit_verifies_and_says_what_the_readme_says(tmp_path: Path) -> None:
    text = UNIT.read_text()
    done = verify(text, tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done
    lines = {line.strip() for line in text.splitlines()}
    assert "ExecStart=/opt/sky-mini/.venv/bin/sky-mini serve --foreground" in lines
    assert {"Type=simple", "KillMode=mixed", "Restart=on-failure"} <= lines
    readme = (ROOT / "README.md").read_text()
    assert "deploy/sky-mini.service" in readme and "KillMode=mixed" in readme


def test_negative_control_a_broken_unit_fails_verify(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=sometimes")
    broken = broken.replace("serve --foreground", "serve --foreground\nExecStart=relative")
    done = verify(broken, tmp_path)
    assert done.returncode != 0 or done.stderr.strip(), done
