"""Command line: parse every Bicep file, check module wiring and the rules, run checkov."""

from __future__ import annotations

import argparse
import sys

from . import __doc__ as package_doc
from .checkov import ensure_checkov, failed_checks, run_checkov
from .parsing import bicep_files, parse, relative, syntax_errors
from .rules import RULES, rule_problems
from .templates import load_templates
from .wiring import wiring_problems


def parse_problems() -> list[str]:
    problems: list[str] = []
    for path in bicep_files():
        try:
            parse(path)
        except Exception as exc:  # pycep raises lark's exception types
            problems.append(f"{relative(path)}: pycep: {str(exc).splitlines()[0]}")
        problems += [f"{relative(path)}:{error} (tree-sitter)" for error in syntax_errors(path)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=package_doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--install", action="store_true", help="only create/update checkov's virtualenv")
    args = parser.parse_args(argv)
    if args.install:
        print(ensure_checkov())
        return 0

    problems = parse_problems()
    if not problems:  # the later steps read the trees
        problems += [str(problem) for path in bicep_files() for problem in wiring_problems(path)]
        problems += rule_problems(load_templates())
    report = run_checkov()
    problems += failed_checks(report)
    summary = report["summary"]
    counts = ", ".join(f"{key} {summary[key]}" for key in ("passed", "failed", "skipped", "parsing_errors"))
    print(
        f"{len(bicep_files())} Bicep files, {len(RULES)} rules;",
        f"checkov {summary['checkov_version']}: {counts}",
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


sys.exit(main())
