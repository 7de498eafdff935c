"""Security invariants of the Azure OpenAI accounts, the primary one and the extra ones of the pool.

Every account the templates create comes from the hardened module (openai-account.bicep) and has an
openai-model.bicep beside it that gives the app's identity its role there; the extra accounts get the
same deployments and principals as the primary one. An extra account is always new, so it always gets
both deployments: `createDeployment` and `createTranscriptionDeployment` only concern an existing
primary account that may already have them.
"""

from __future__ import annotations

from typing import Any

from ..parsing import BicepTree
from ..templates import (
    MAIN,
    OPENAI_ACCOUNT,
    OPENAI_MODEL,
    OPENAI_POOL,
    Problems,
    Templates,
    module_loop,
    modules_using,
    param_default,
    render,
    resources,
    same,
)
from .roles import APP_PRINCIPAL

# openai-model.bicep parameters that differ per account; every other one is the same on every account.
PER_ACCOUNT_PARAMS = {
    "accountName",
    "createDeployment",
    "createTranscriptionDeployment",
    "skuName",
    "capacity",
}
# What every extra (new) account must create, by openai-model.bicep parameter.
NEW_ACCOUNT_DEPLOYMENTS = {
    "createDeployment": "the realtime deployment",
    "createTranscriptionDeployment": "the transcription deployment",
}


def openai_pool_problems(templates: Templates) -> Problems:
    return account_role_problems(templates) + pool_wiring_problems(templates)


def account_role_problems(templates: Templates) -> Problems:
    """Accounts come only from openai-account.bicep, and each gets the app's role (openai-model.bicep)."""
    trees, problems = templates.trees, Problems()
    for account in resources(trees, "Microsoft.CognitiveServices/accounts"):
        problems.expect(
            account.existing or account.file == OPENAI_ACCOUNT,
            f"{account.where}: Azure OpenAI accounts must come from {OPENAI_ACCOUNT}",
        )
    for file, tree in trees.items():
        models = modules_using(tree, OPENAI_MODEL)
        for symbol, account in modules_using(tree, OPENAI_ACCOUNT).items():
            partners = [
                body for name, body in models.items() if _on_account(tree, symbol, account, name, body)
            ]
            problems.expect(
                bool(partners),
                f"{file}: {symbol}: no {OPENAI_MODEL} gives the app its role on these accounts",
            )
            for partner in partners:
                principal = render(partner["params"].get("appPrincipalId"))
                expected = APP_PRINCIPAL if file == MAIN else "appPrincipalId"
                problems.expect(
                    principal == expected, f"{file}: {symbol}: the role must go to {expected}, is {principal}"
                )
    return problems


def _on_account(
    tree: BicepTree, account_symbol: str, account: dict[str, Any], model_symbol: str, model: dict[str, Any]
) -> bool:
    """Whether a model module works on the account(s) an account module creates."""
    account_name = render(model["params"].get("accountName"))
    account_loop, model_loop = module_loop(tree, account_symbol), module_loop(tree, model_symbol)
    if account_loop is None:
        return model_loop is None and account_name == render(account["params"].get("name"))
    return (
        model_loop is not None
        and model_loop["array_name"] == account_loop["array_name"]
        and account_name == f"<index_accessor>({account_symbol}, {model_loop['index_name']}).outputs.name"
    )


def pool_wiring_problems(templates: Templates) -> Problems:
    """main.bicep gives the pool the extra accounts, the primary's deployments and the app's identity."""
    trees, problems = templates.trees, Problems()
    main, pool_tree = trees[MAIN], trees[OPENAI_POOL]
    pools = modules_using(main, OPENAI_POOL)
    problems.expect(len(pools) == 1, f"main.bicep: expected one {OPENAI_POOL} module")
    (primary,) = modules_using(main, OPENAI_MODEL).values()
    problems.expect(
        main["parameters"]["additionalOpenAiBackends"]["type"] == "array"
        and param_default(main, "additionalOpenAiBackends") == [],
        "main.bicep: additionalOpenAiBackends must be an array, empty by default",
    )
    for pool in pools.values():
        params = pool["params"]
        problems.expect(
            params.get("backends") == "additionalOpenAiBackends",
            "main.bicep: the pool must get backends: additionalOpenAiBackends",
        )
        for name in sorted(set(primary["params"]) & set(params) - PER_ACCOUNT_PARAMS):
            actual, expected = render(params[name]), render(primary["params"][name])
            problems.expect(
                actual == expected,
                f"main.bicep: the pool's {name} must be the primary's {expected}, is {actual}",
            )
    for symbol, model in modules_using(pool_tree, OPENAI_MODEL).items():
        for flag, deployment in NEW_ACCOUNT_DEPLOYMENTS.items():
            problems.expect(
                same(model["params"].get(flag), True),
                f"{OPENAI_POOL}: {symbol}: every extra account needs {deployment} ({flag}: true)",
            )
        for name in sorted(set(pool_tree["parameters"]) & set(model["params"]) - PER_ACCOUNT_PARAMS):
            actual = render(model["params"][name])
            problems.expect(actual == name, f"{OPENAI_POOL}: {symbol}: {name} must be {name}, is {actual}")
    return problems
