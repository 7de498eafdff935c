"""Module wiring, what `bicep build` would reject: unknown or missing parameters, missing outputs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parsing import parse, relative

# `name.outputs.x`, or `name[i].outputs.x` for a module collection.
MODULE_OUTPUT_REFERENCE = re.compile(r"\b([A-Za-z_]\w*)(?:\[[^\]]*\])?\.outputs\.([A-Za-z_]\w*)")


@dataclass(frozen=True)
class WiringProblem:
    file: str
    module: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: module {self.module!r}: {self.problem}"


def module_body(module: dict[str, Any]) -> dict[str, Any]:
    """A module declaration's body, whether or not it has an `if (...)` condition or a loop."""
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
