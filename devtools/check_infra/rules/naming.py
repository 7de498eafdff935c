"""Naming: the generated resource names fit Azure's rules for their type, for any environment."""

from __future__ import annotations

import re

from ..templates import (
    FUNCTION_APP,
    MAIN,
    OPENAI_ACCOUNT,
    OPENAI_POOL,
    STORAGE,
    Problems,
    Templates,
    modules_using,
    render,
    variable,
)

TOKEN = "a" * 13  # uniqueString() yields 13 lowercase letters and digits
LAST_INDEX = "100"  # the longest `${i + 1}` of a pool of extra accounts (priorities go to 100)
NAME_RULES = {
    STORAGE: r"[a-z0-9]{3,24}",
    OPENAI_ACCOUNT: r"[a-z0-9][a-z0-9-]{1,62}[a-z0-9]",
    FUNCTION_APP: r"[a-z0-9][a-z0-9-]{0,58}[a-z0-9]",
}


def naming_problems(templates: Templates) -> Problems:
    main, pool, problems = templates.trees[MAIN], templates.trees[OPENAI_POOL], Problems()
    problems.expect(
        render(variable(main, "resourceToken")).startswith("to_lower(unique_string("),
        "resourceToken must be toLower(uniqueString(...))",
    )
    names: dict[str, tuple[str, str]] = {}  # where -> (path, generated name)
    for path in NAME_RULES:
        for symbol, module in modules_using(main, path).items():
            name = module["params"]["name"]
            if name == "openAiName":
                name = variable(main, "openAiName")["operator"]["operands"]["false_value"]
            names[f"main.bicep: {symbol}"] = (path, name.replace("${resourceToken}", TOKEN))
    for prefix_module in modules_using(main, OPENAI_POOL).values():
        prefix = prefix_module["params"]["namePrefix"].replace("${resourceToken}", TOKEN)
        for symbol, module in modules_using(pool, OPENAI_ACCOUNT).items():
            name = module["params"]["name"].replace("${namePrefix}", prefix).replace("${i + 1}", LAST_INDEX)
            names[f"{OPENAI_POOL}: {symbol}"] = (OPENAI_ACCOUNT, name)
    for where, (path, name) in names.items():
        rule = NAME_RULES[path]
        problems.expect(bool(re.fullmatch(rule, name)), f"{where}: {name!r} breaks {rule}")
    return problems
