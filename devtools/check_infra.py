"""Offline checks of the Bicep templates under infra/: syntax, module wiring and checkov.

    python -m devtools.check_infra             # parse every .bicep, check module wiring, run checkov
    python -m devtools.check_infra --install   # only create/update checkov's virtualenv

Two independent parsers read every file: pycep (the parser checkov itself builds on; gives the tree the
tests assert on) and the tree-sitter Bicep grammar (reports syntax errors pycep may let through).
checkov runs from its own virtualenv, `.devstate/iac-venv` (or `$IAC_VENV`), created on first use from
`infra/requirements-iac.txt`, because its pinned dependencies clash with the app's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA_DIR = REPO_ROOT / "infra"
IAC_REQUIREMENTS = INFRA_DIR / "requirements-iac.txt"
IAC_VENV = Path(os.environ.get("IAC_VENV", REPO_ROOT / ".devstate" / "iac-venv"))
INSTALL_TIMEOUT_SECONDS = 600
CHECKOV_TIMEOUT_SECONDS = 300

# `// checkov:skip=CKV_X: reason` inside a resource body; the same pattern checkov reads.
SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+)\s*(?::\s*(.*))?$", re.MULTILINE)
MODULE_OUTPUT_REFERENCE = re.compile(r"\b([A-Za-z_]\w*)\.outputs\.([A-Za-z_]\w*)")

BicepTree = dict[str, Any]


def bicep_files() -> list[Path]:
    return sorted(INFRA_DIR.rglob("*.bicep"))


def relative(path: Path) -> str:
    """The path relative to the repository when inside it, else as given."""
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else str(path)


# --- parsing -------------------------------------------------------------------------------------------


@cache
def parse(path: Path) -> BicepTree:
    """The pycep tree of a Bicep file (raises on a syntax error pycep detects)."""
    return _pycep().parse(text=path.read_text(encoding="utf-8"))


@cache
def _pycep() -> Any:
    from pycep import BicepParser

    return BicepParser()  # building the grammar is the slow part; one parser serves every file


def syntax_errors(path: Path) -> list[str]:
    """Syntax errors the tree-sitter Bicep grammar finds, as 'line:column: text'; empty when clean."""
    import tree_sitter_bicep
    from tree_sitter import Language, Node, Parser

    tree = Parser(Language(tree_sitter_bicep.language())).parse(path.read_bytes())
    errors: list[str] = []

    def visit(node: Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            text = (node.text or b"").decode(errors="replace").splitlines()[:1]
            found = repr(text[0] if text else "")
            what = f"missing {node.type}" if node.is_missing else f"unexpected {found}"
            errors.append(f"{line + 1}:{column + 1}: {what}")
        for child in node.children:
            visit(child)

    visit(tree.root_node)
    return errors


# --- module wiring (what `bicep build` would reject) ---------------------------------------------------


@dataclass(frozen=True)
class WiringProblem:
    file: str
    module: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: module {self.module!r}: {self.problem}"


def module_body(module: dict[str, Any]) -> dict[str, Any]:
    """A module declaration's body, whether or not it has an `if (...)` condition."""
    config = module["config"]
    return config["config"] if "condition" in config else config


def wiring_problems(path: Path) -> Iterator[WiringProblem]:
    """Modules called with unknown or missing parameters, and references to outputs a module lacks."""
    tree = parse(path)
    modules = tree.get("modules", {})
    for symbol, module in modules.items():
        target = (path.parent / module["detail"]["path"]).resolve()
        if not target.is_file():
            yield WiringProblem(relative(path), symbol, f"no file {module['detail']['path']}")
            continue
        declared = parse(target).get("parameters", {})
        passed = set(module_body(module).get("params", {}))
        for name in sorted(passed - set(declared)):
            yield WiringProblem(relative(path), symbol, f"passes {name!r}, undeclared in {target.name}")
        required = {name for name, param in declared.items() if param.get("default") is None}
        for name in sorted(required - passed):
            yield WiringProblem(relative(path), symbol, f"does not pass required parameter {name!r}")
    text = path.read_text(encoding="utf-8")
    for symbol, output in sorted(set(MODULE_OUTPUT_REFERENCE.findall(text))):
        if symbol not in modules:
            continue
        target = (path.parent / modules[symbol]["detail"]["path"]).resolve()
        if target.is_file() and output not in parse(target).get("outputs", {}):
            yield WiringProblem(relative(path), symbol, f"uses output {output!r}, which {target.name} lacks")


def skip_comments() -> dict[tuple[str, str], str]:
    """Every checkov suppression in the templates: (file relative to infra/, check id) -> reason."""
    found: dict[tuple[str, str], str] = {}
    for path in bicep_files():
        name = "/" + path.relative_to(INFRA_DIR).as_posix()  # as checkov reports file paths
        for match in SKIP_COMMENT.finditer(path.read_text(encoding="utf-8")):
            found[(name, match.group(1))] = (match.group(2) or "").strip()
    return found


# --- checkov -------------------------------------------------------------------------------------------


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


# --- command line --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--install", action="store_true", help="only create/update checkov's virtualenv")
    args = parser.parse_args(argv)
    if args.install:
        print(ensure_checkov())
        return 0

    problems: list[str] = []
    for path in bicep_files():
        try:
            parse(path)
        except Exception as exc:  # pycep raises lark's exception types
            problems.append(f"{relative(path)}: pycep: {str(exc).splitlines()[0]}")
        problems += [f"{relative(path)}:{error} (tree-sitter)" for error in syntax_errors(path)]
    if not problems:
        problems += [str(problem) for path in bicep_files() for problem in wiring_problems(path)]
    report = run_checkov()
    summary = report["summary"]
    for check in report["results"].get("failed_checks", []):
        where = f"infra{check['file_path']} ({check['resource']})"
        problems.append(f"{where}: {check['check_id']} {check['check_name']}")
    if summary.get("parsing_errors"):
        problems.append(f"checkov could not parse {summary['parsing_errors']} file(s)")
    counts = ", ".join(f"{key} {summary[key]}" for key in ("passed", "failed", "skipped", "parsing_errors"))
    print(f"{len(bicep_files())} Bicep files; checkov {summary['checkov_version']}: {counts}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
