"""What the numbers were measured on: machine, versions, the app's commit, how busy the machine was;
and import-time profiles."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

from devtools.stack import REPO_ROOT

from .records import ImportTime, Machine

LOAD_READ_SECONDS = 10.0  # how often the load average is read while a worker runs

PACKAGES = (
    "openai",
    "websockets",
    "azure-storage-blob",
    "azure-identity",
    "azure-core",
    "aiohttp",
    "pydantic",
)


def describe(app: str) -> Machine:
    """The machine and versions; `app` says which version of the app was measured."""
    return Machine(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpus=os.cpu_count(),
        cpu_model=_cpu_model(),
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        kernel=platform.release(),
        python=platform.python_version(),
        node=_output(["node", "--version"]),
        azurite=json.loads((REPO_ROOT / "node_modules/azurite/package.json").read_text())["version"],
        packages={name: version(name) for name in PACKAGES},
        app=app,
    )


def load_average() -> float:
    """The machine's 1-minute load average: processes running or waiting for a CPU, averaged."""
    return round(os.getloadavg()[0], 2)


def import_profile(importtime_stderr: str, top: int = 10) -> list[ImportTime]:
    """Self time of `python -X importtime` summed per top-level package, largest first."""
    totals: dict[str, int] = defaultdict(int)
    for line in importtime_stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        totals[name.split(".")[0]] += int(self_us)
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    return [ImportTime(package=name, ms=us / 1000) for name, us in ranked[:top]]


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def checkout_label(app_root: Path, app_paths: Sequence[str]) -> str:
    """The last commit that changed the app in this checkout, `+changes` when its files differ."""
    git = ["git", "-C", str(app_root)]
    commit = _output([*git, "log", "-1", "--format=%h", "--", *app_paths])
    if not commit:
        return f"{app_root} (not a git checkout)"
    dirty = _output([*git, "status", "--porcelain", "--", *app_paths])
    return f"{commit}+changes" if dirty else commit


def ref_label(ref: str, app_paths: Sequence[str]) -> str:
    """The last commit at `ref` that changed the app."""
    return _output(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h", ref, "--", *app_paths])


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
