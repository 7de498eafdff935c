"""What `make test` needs from the machine itself, checked (and where possible installed) first.

Python and npm packages come from `requirements*.txt` and `package.json` (`make setup`); an MP3
decoder for the tests comes as a wheel (`imageio-ffmpeg`). What only the system provides is listed in
`TOOLS`. On Debian or Ubuntu, as root (as CI runs) or with password-less sudo, the missing ones that
apt provides are installed without asking; whatever is still missing is named in one message, with
the command that installs it, and the exit status is 1.

    python3 -m devtools.prerequisites [--python PYTHON]   # check, install what apt can, report the rest
    python3 -m devtools.prerequisites --check               # check and report only
    python3 -m devtools.prerequisites --which-python        # the Python 3.13 make uses for .venv

Standard library only: it runs with any Python 3, before `.venv` exists; `--python` names the
interpreter `.venv` is made with (`make`'s `PYTHON`, Python 3.13 by default, as deployed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_PYTHON = (3, 11)
DEPLOYED_PYTHON = "python3.13"  # the Bicep's pythonVersion; make's default PYTHON
MIN_NODE_MAJOR = 20
NODE_DOWNLOAD = "https://nodejs.org/en/download"


@dataclass(frozen=True)
class Tool:
    name: str
    needed_for: str
    present: Callable[[], bool]
    apt_packages: tuple[str, ...] = ()  # empty: apt does not provide a suitable version
    manual_install: str = ""  # how to install it when apt cannot


def _on_path(command: str) -> Callable[[], bool]:
    return lambda: shutil.which(command) is not None


def _python_answers(python: str, code: str) -> bool:
    """True when `python` runs and `code` succeeds in it."""
    if shutil.which(python) is None:
        return False
    return subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode == 0


def deployed_python() -> str:
    """The interpreter `.venv` is made with: `python3.13` on the PATH, else a Python 3.13 that pyenv
    has installed (by its path, whichever version pyenv has selected), else the name alone (and the
    report says how to install it)."""
    if _python_answers(DEPLOYED_PYTHON, "pass"):
        return DEPLOYED_PYTHON
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return DEPLOYED_PYTHON
    listed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, timeout=60)
    wanted = DEPLOYED_PYTHON.removeprefix("python")
    versions = [v for v in listed.stdout.split() if re.fullmatch(rf"{re.escape(wanted)}(\.\d+)?", v)]
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=60).stdout.strip()
    for version in reversed(versions):
        candidate = os.path.join(root, "versions", version, "bin", DEPLOYED_PYTHON)
        if _python_answers(candidate, "pass"):
            return candidate
    return DEPLOYED_PYTHON


def _python_is_recent(python: str) -> Callable[[], bool]:
    return lambda: _python_answers(python, f"import sys; sys.exit(sys.version_info < {MIN_PYTHON!r})")


def _python_has_venv(python: str) -> Callable[[], bool]:
    return lambda: _python_answers(python, "import venv, ensurepip")


def _node_major() -> int | None:
    node = shutil.which("node")
    if node is None:
        return None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.match(r"v(\d+)\.", version.strip())
    return int(found.group(1)) if found else None


def _node_is_recent() -> bool:
    major = _node_major()
    return major is not None and major >= MIN_NODE_MAJOR and shutil.which("npm") is not None


def tools(python: str = DEPLOYED_PYTHON) -> tuple[Tool, ...]:
    """What the tests need from the machine, `python` being the interpreter `.venv` is made with."""
    return (
        Tool(
            f"{python} (Python 3.11 or newer; 3.13 as deployed)",
            "the app, its tests and tooling",
            _python_is_recent(python),
            manual_install=(
                "Python 3.13 (e.g. `pyenv install 3.13` or `uv python install 3.13`), or another 3.11+: "
                "`make test PYTHON=python3.11`"
            ),
        ),
        Tool(
            f"{python}'s venv module",
            "`make setup` (.venv) and checkov's own virtualenv",
            _python_has_venv(python),
            apt_packages=("python3-venv",),
        ),
        Tool(
            "Node.js 20+ and npm",
            "Azurite, the storage stand-in",
            _node_is_recent,
            manual_install=f"Node.js {MIN_NODE_MAJOR} or newer with npm from {NODE_DOWNLOAD}",
        ),
        Tool(
            "chromium",
            "tests/test_playground.py (the playground in a real browser)",
            _on_path("chromium"),
            ("chromium",),
        ),
        Tool(
            "chromedriver",
            "tests/test_playground.py (Selenium drives Chromium through it)",
            _on_path("chromedriver"),
            ("chromium-driver",),
        ),
        Tool(
            "espeak-ng",
            "the realtime emulator's spoken answers (`--speech espeak`)",
            _on_path("espeak-ng"),
            ("espeak-ng",),
        ),
    )


def missing(needed: Sequence[Tool]) -> list[Tool]:
    return [tool for tool in needed if not tool.present()]


def _apt_runner() -> list[str] | None:
    """How to run apt-get without asking anyone: as root, or through password-less sudo; else None."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=30).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_with_apt(tools: Sequence[Tool]) -> None:
    """apt-get install the packages of `tools`, when that needs no one's answer; a failure is left to
    the report that follows (it names what is still missing)."""
    packages = sorted({package for tool in tools for package in tool.apt_packages})
    runner = _apt_runner()
    if not packages or runner is None:
        return
    print(f"prerequisites: installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run([*runner, "apt-get", "update", "-qq"], env=env).returncode == 0:
        install = [*runner, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL)


def report(tools: Sequence[Tool]) -> str:
    """One message: each missing tool, what needs it, and the command(s) that install them."""
    lines = ["The tests need these, which are not installed:"]
    lines += [f"  - {tool.name}: {tool.needed_for}" for tool in tools]
    packages = sorted({package for tool in tools for package in tool.apt_packages})
    lines.append("Install them with:")
    if packages:
        lines.append(
            f"  sudo apt-get update && sudo apt-get install -y {' '.join(packages)}   (Debian, Ubuntu)"
        )
    lines += [f"  {tool.manual_install}" for tool in tools if tool.manual_install]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check and report; install nothing")
    parser.add_argument("--python", help="the interpreter .venv is made with (default: Python 3.13)")
    parser.add_argument(
        "--which-python", action="store_true", help="print the Python 3.13 to make .venv with, and stop"
    )
    args = parser.parse_args(argv)
    if args.which_python:
        print(deployed_python())
        return 0
    args.python = args.python or deployed_python()
    needed = tools(args.python)
    absent = missing(needed)
    if absent and not args.check:
        install_with_apt(absent)
        absent = missing(needed)
    if absent:
        print(report(absent), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
