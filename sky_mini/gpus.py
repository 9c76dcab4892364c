"""Which NVIDIA GPUs this machine has (a leaf module).

``SKY_MINI_GPUS`` overrides detection, for tests and odd hosts: ``H100:2``, ``A100:1,T4:2``,
or ``none``. Otherwise ``nvidia-smi -L`` is asked, then ``/proc/driver/nvidia/gpus/*/
information`` is read. Detection runs only when a task asks for accelerators (the cron
path of a CPU job never pays for it).
"""

from __future__ import annotations

import os
import re

from sky_mini.lazyre import lazy

GPUS_ENV = "SKY_MINI_GPUS"
NVIDIA_SMI_TIMEOUT_SECONDS = 5.0
_OVERRIDE_ITEM_RE = lazy(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?::\s*(\d+))?\s*$")
_SMI_LINE_RE = lazy(r"^GPU\s+(\d+):\s*(.+?)\s*(?:\(UUID:.*\))?\s*$")


class GpuOverrideError(ValueError):
    """SKY_MINI_GPUS cannot be read."""


def detect_gpus() -> tuple[list[str], str]:
    """One device name per GPU index, and where the list came from."""
    raw = os.environ.get(GPUS_ENV)
    if raw is not None:
        return parse_override(raw), GPUS_ENV
    found = _from_nvidia_smi()
    if found is not None:
        return found, "nvidia-smi -L"
    return _from_proc(), "/proc/driver/nvidia/gpus"


def parse_override(raw: str) -> list[str]:
    """``H100:2,T4:1`` -> ``["H100", "H100", "T4"]``; ``none``/``0``/empty -> none."""
    if raw.strip().lower() in ("", "none", "0"):
        return []
    devices: list[str] = []
    for item in raw.split(","):
        match = _OVERRIDE_ITEM_RE.match(item)
        if match is None:
            raise GpuOverrideError(
                f"{GPUS_ENV}={raw!r}: expected NAME:COUNT items such as H100:2,T4:1 (or none)"
            )
        devices += [match.group(1)] * int(match.group(2) or 1)
    return devices


def _from_nvidia_smi() -> list[str] | None:
    import shutil  # lazily: shutil pulls in bz2/lzma, and the cron path imports this module

    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    import subprocess

    try:
        out = subprocess.run(
            [binary, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    devices: dict[int, str] = {}
    for line in out.stdout.splitlines():
        match = _SMI_LINE_RE.match(line.strip())
        if match:
            devices[int(match.group(1))] = match.group(2)
    return [devices[i] for i in sorted(devices)]


def _from_proc() -> list[str]:
    import glob

    devices: list[str] = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        model = "NVIDIA GPU"
        try:
            with open(info, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if line.startswith("Model:"):
                        model = line.split(":", 1)[1].strip()
        except OSError:
            continue
        devices.append(model)
    return devices


def gpu_matches(wanted: str | None, device: str) -> bool:
    """Does a detected device (``NVIDIA A100-SXM4-40GB``) satisfy ``A100``? (None: any.)"""
    if wanted is None:
        return True

    def norm(text: str) -> str:
        return re.sub(r"[^A-Z0-9]", "", text.upper())

    return norm(wanted) in norm(device)
