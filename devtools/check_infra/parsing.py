"""Finding and parsing the Bicep files: pycep trees and tree-sitter syntax errors."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO_ROOT / "infra"

BicepTree = dict[str, Any]


def bicep_files() -> list[Path]:
    return sorted(INFRA_DIR.rglob("*.bicep"))


def relative(path: Path) -> str:
    """The path relative to the repository when inside it, else as given."""
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else str(path)


def parse(path: Path) -> BicepTree:
    """The pycep tree of a Bicep file (raises on a syntax error pycep detects)."""
    return parse_text(path.read_text(encoding="utf-8"))


@cache
def parse_text(text: str) -> BicepTree:
    """The pycep tree of Bicep source; shared between callers, so never modify it."""
    return _pycep().parse(text=text)


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
