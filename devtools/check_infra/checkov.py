"""checkov, offline, from its own virtualenv; and the `checkov:skip` suppressions in the templates."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import venv
from pathlib import Path
from typing import Any

from .parsing import INFRA_DIR, REPO_ROOT, bicep_files

IAC_REQUIREMENTS = INFRA_DIR / "requirements-iac.txt"
IAC_VENV = Path(os.environ.get("IAC_VENV", REPO_ROOT / ".devstate" / "iac-venv"))
INSTALL_TIMEOUT_SECONDS = 600
CHECKOV_TIMEOUT_SECONDS = 300

# `// checkov:skip=CKV_X: reason` inside a resource body; the same pattern checkov reads.
SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+)\s*(?::\s*(.*))?$", re.MULTILINE)


def skip_comments() -> dict[tuple[str, str], str]:
    """Every checkov suppression in the templates: (file relative to infra/, check id) -> reason."""
    found: dict[tuple[str, str], str] = {}
    for path in bicep_files():
        name = "/" + path.relative_to(INFRA_DIR).as_posix()  # as checkov reports file paths
        for match in SKIP_COMMENT.finditer(path.read_text(encoding="utf-8")):
            found[(name, match.group(1))] = (match.group(2) or "").strip()
    return found


def _checkov_bin(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "checkov"


def ensure_checkov(venv_dir: Path = IAC_VENV) -> Path:
    """checkov's executable, installing it into its own virtualenv first when missing or outdated."""
    stamp = venv_dir / ".installed"
    checkov = _checkov_bin(venv_dir)

    def current() -> bool:
        if not (checkov.exists() and stamp.exists()):
            return False
        return stamp.stat().st_mtime >= IAC_REQUIREMENTS.stat().st_mtime

    if current():
        return checkov
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(venv_dir.parent / f"{venv_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time; the others then find it current
        if not current():
            pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
            if not (venv_dir / "bin" / "python").exists():
                venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
                # a current pip resolves checkov's many pins in about half the time of an old bundled one
                subprocess.run([*pip, "install", "-qq", "--upgrade", "pip"], check=True, timeout=120)
            subprocess.run(
                [*pip, "install", "-qq", "-r", str(IAC_REQUIREMENTS)],
                check=True,
                timeout=INSTALL_TIMEOUT_SECONDS,
            )
            stamp.touch()
    return checkov


def run_checkov(directory: Path = INFRA_DIR) -> dict[str, Any]:
    """checkov's JSON report for the Bicep files under `directory` (passed, failed and skipped checks).

    Offline: `--skip-download` keeps it from fetching policies and guidelines from its vendor's API.
    """
    checkov = ensure_checkov()
    env = {**os.environ, "LOG_LEVEL": "ERROR", "BC_SKIP_MAPPING": "TRUE"}
    options = ["--framework", "bicep", "--skip-download", "--output", "json", "--soft-fail"]
    result = subprocess.run(
        [str(checkov), "--directory", str(directory), *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHECKOV_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"checkov exited with {result.returncode}: {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one report per framework; only bicep was asked for
        (report,) = report
    return report


def failed_checks(report: dict[str, Any]) -> list[str]:
    """checkov's failed checks (and unparsed files) as one line each."""
    failed = [
        f"infra{check['file_path']} ({check['resource']}): {check['check_id']} {check['check_name']}"
        for check in report["results"].get("failed_checks", [])
    ]
    if report["summary"].get("parsing_errors"):
        failed.append(f"checkov could not parse {report['summary']['parsing_errors']} file(s)")
    return failed
