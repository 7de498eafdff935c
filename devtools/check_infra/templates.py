"""The parsed templates and helpers to read pycep trees: resources, modules, parameters, expressions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .parsing import INFRA_DIR, BicepTree, bicep_files, parse_text
from .wiring import module_body

# Files, relative to infra/.
MAIN = "main.bicep"
FUNCTION_APP = "modules/function-app.bicep"
STORAGE = "modules/storage-account.bicep"
ROLES = "modules/roles.bicep"
OPENAI_ACCOUNT = "modules/openai-account.bicep"
OPENAI_MODEL = "modules/openai-model.bicep"
OPENAI_POOL = "modules/openai-pool.bicep"
MONITORING = "modules/monitoring.bicep"

Trees = dict[str, BicepTree]  # key: path relative to infra/, e.g. "modules/roles.bicep"


@dataclass(frozen=True)
class Templates:
    """The Bicep sources and their pycep trees, keyed by path relative to infra/."""

    texts: dict[str, str]
    trees: Trees

    @classmethod
    def parse(cls, texts: dict[str, str]) -> Templates:
        return cls(texts, {name: parse_text(text) for name, text in texts.items()})


def template_texts() -> dict[str, str]:
    return {
        path.relative_to(INFRA_DIR).as_posix(): path.read_text(encoding="utf-8") for path in bicep_files()
    }


def load_templates() -> Templates:
    return Templates.parse(template_texts())


def render(expression: Any) -> str:
    """A pycep expression as compact text: `a.b.c`, `guid(x, y)`, `<not>(empty(x))`.

    pycep keeps identifiers and string literals alike as plain strings, so `name` may be either.
    """
    if expression is None:
        return "null"
    if isinstance(expression, bool):
        return "true" if expression else "false"
    if isinstance(expression, int | str):
        return str(expression)
    if isinstance(expression, dict) and "operator" in expression:
        operator = expression["operator"]
        operands = operator["operands"]
        if operator["type"] == "property_accessor":
            return f"{render(operands['operand_1'])}.{render(operands['operand_2'])}"
        return f"<{operator['type']}>({', '.join(render(value) for value in operands.values())})"
    if isinstance(expression, dict) and "function" in expression:
        function = expression["function"]
        arguments = [render(value) for value in function["parameters"].values() if value is not None]
        return f"{function['type']}({', '.join(arguments)})"
    return json.dumps(expression, sort_keys=True)


@dataclass(frozen=True)
class Resource:
    file: str
    symbol: str
    type: str
    api_version: str
    existing: bool
    condition: Any
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}: {self.symbol}"

    @property
    def properties(self) -> dict[str, Any]:
        return self.body.get("properties") or {}


def resources(trees: Trees, type_: str | None = None) -> list[Resource]:
    found = []
    for file, tree in trees.items():
        for symbol, resource in tree.get("resources", {}).items():
            config = resource["config"]
            conditional = "condition" in config or "loop_type" in config
            found.append(
                Resource(
                    file=file,
                    symbol=symbol,
                    type=resource["type"],
                    api_version=resource["api_version"],
                    existing=resource["existing"],
                    condition=config.get("condition") if conditional else None,
                    body=config["config"] if conditional else config,
                )
            )
    return [resource for resource in found if type_ is None or resource.type == type_]


def modules_using(tree: BicepTree, path: str) -> dict[str, dict[str, Any]]:
    """The modules of a tree that deploy `path` (relative to infra/, or to the tree's own folder)."""
    name = path.rpartition("/")[2]
    return {
        symbol: module_body(module)
        for symbol, module in tree.get("modules", {}).items()
        if module["detail"]["path"] in (path, name)
    }


def module_loop(tree: BicepTree, symbol: str) -> dict[str, str] | None:
    """`{item_name, index_name, array_name}` of a module collection (`[for (item, i) in array: ...]`)."""
    loop = tree["modules"][symbol]["config"].get("loop_type")
    return loop["detail"] if loop else None


def param_default(tree: BicepTree, name: str) -> Any:
    return tree["parameters"][name]["default"]


def decorator(tree: BicepTree, param: str, kind: str) -> Any:
    for item in tree["parameters"][param]["decorators"]:
        if item["type"] == kind:
            return item["argument"]
    return None


def variable(tree: BicepTree, name: str) -> Any:
    return tree["variables"][name]["value"]


def resolve(tree: BicepTree, reference: str) -> str:
    """The value of a variable reference such as `roles.storageBlobDataOwner` or `openAiUserRoleId`."""
    head, _, rest = reference.partition(".")
    value = variable(tree, head)
    for key in rest.split(".") if rest else []:
        value = value[key]
    return value


def dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same type (so `false` is not taken for `0`)."""
    return type(actual) is type(expected) and actual == expected


class Problems(list[str]):
    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.append(problem)
