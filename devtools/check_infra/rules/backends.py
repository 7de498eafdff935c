"""Settings consistency of the model backends: AZURE_OPENAI_BACKENDS is built from the accounts' outputs
(the primary account at priority 1, then the pool's), with the code's fields and no key; every account
has the transcription deployment that REALTIME_TRANSCRIPTION_MODEL names."""

from __future__ import annotations

from typing import Any

from realtime_speech.settings import BackendSettings

from ..templates import (
    MAIN,
    OPENAI_MODEL,
    OPENAI_POOL,
    Problems,
    Templates,
    Trees,
    modules_using,
    render,
    resources,
    same,
    variable,
)

BACKENDS = "AZURE_OPENAI_BACKENDS"
BACKEND_FIELDS = set(BackendSettings.model_fields)  # name, endpoint, deployment, priority, weight


def backend_problems(trees: Trees) -> Problems:
    return primary_backend_problems(trees) + pool_backend_problems(trees)


def primary_backend_problems(trees: Trees) -> Problems:
    """AZURE_OPENAI_BACKENDS = [the primary account at priority 1] + the pool module's `backends` output."""
    main, problems = trees[MAIN], Problems()
    setting = render(variable(main, "appSettings").get(BACKENDS))
    problems.expect(
        setting == "string(openAiBackends)", f"{BACKENDS} must be string(openAiBackends), is {setting}"
    )
    function = variable(main, "openAiBackends").get("function", {})
    arguments = list(function.get("parameters", {}).values())
    pool = next(iter(modules_using(main, OPENAI_POOL)), None)
    problems.expect(
        function.get("type") == "concat"
        and len(arguments) == 2
        and isinstance(arguments[0], list)
        and len(arguments[0]) == 1
        and render(arguments[1]) == f"{pool}.outputs.backends",
        f"openAiBackends must be concat([the primary backend], {pool}.outputs.backends)",
    )
    if not (arguments and isinstance(arguments[0], list) and arguments[0]):
        return problems
    (model_symbol, model), *_ = modules_using(main, OPENAI_MODEL).items()
    expected = {
        "endpoint": f"{model_symbol}.outputs.endpoint",
        "deployment": render(model["params"].get("deploymentName")),
    }
    problems += entry_problems("the primary backend", arguments[0][0], expected)
    problems.expect(
        same(arguments[0][0].get("priority"), 1), f"{BACKENDS}: the primary backend has priority 1"
    )
    return problems


def pool_backend_problems(trees: Trees) -> Problems:
    """The pool's `backends` output has one entry per extra account, from its model module's outputs."""
    pool, problems = trees[OPENAI_POOL], Problems()
    output = pool["outputs"].get("backends", {}).get("value") or {}
    loop = (output.get("loop_type") or {}).get("detail") or {}
    models = next(iter(modules_using(pool, OPENAI_MODEL)), None)
    problems.expect(
        loop.get("array_name") == "backends", f"{OPENAI_POOL}: the backends output must loop over backends"
    )
    expected = {
        "endpoint": f"<index_accessor>({models}, {loop.get('index_name')}).outputs.endpoint",
        "deployment": "deploymentName",
        "priority": f"{loop.get('item_name')}.priority",
    }
    problems += entry_problems(f"{OPENAI_POOL}: an extra backend", output.get("config") or {}, expected)
    return problems


def entry_problems(what: str, entry: dict[str, Any], expected: dict[str, str]) -> Problems:
    """An AZURE_OPENAI_BACKENDS entry has exactly the code's fields (so no key), with the expected values."""
    problems = Problems()
    problems.expect(
        set(entry) == BACKEND_FIELDS,
        f"{BACKENDS}: {what} has fields {sorted(entry)}, not {sorted(BACKEND_FIELDS)}",
    )
    for field, value in expected.items():
        actual = render(entry.get(field))
        problems.expect(actual == value, f"{BACKENDS}: {what}: {field} must be {value}, is {actual}")
    return problems


def transcription_problems(trees: Trees) -> Problems:
    """REALTIME_TRANSCRIPTION_MODEL names the transcription deployment every account gets."""
    main, problems = trees[MAIN], Problems()
    setting = render(variable(main, "appSettings").get("REALTIME_TRANSCRIPTION_MODEL"))
    problems.expect(
        setting == "transcriptionDeploymentName",
        f"REALTIME_TRANSCRIPTION_MODEL must name the deployment, transcriptionDeploymentName, is {setting}",
    )
    for symbol, model in modules_using(main, OPENAI_MODEL).items():
        actual = render(model["params"].get("transcriptionDeploymentName"))
        problems.expect(
            actual == "transcriptionDeploymentName",
            f"main.bicep: {symbol}.transcriptionDeploymentName must be the parameter, is {actual}",
        )
    deployments = {
        render(r.body.get("name")): r
        for r in resources(trees, "Microsoft.CognitiveServices/accounts/deployments")
        if r.file == OPENAI_MODEL
    }
    transcription = deployments.get("transcriptionDeploymentName")
    problems.expect(
        transcription is not None, f"{OPENAI_MODEL}: no deployment named transcriptionDeploymentName"
    )
    if transcription is not None:
        problems.expect(
            render(transcription.condition) == "createTranscriptionDeployment",
            f"{transcription.where}: must be deployed when createTranscriptionDeployment",
        )
    return problems


def check_backends(templates: Templates) -> Problems:
    return backend_problems(templates.trees) + transcription_problems(templates.trees)
