"""Scale limits: the platform's bounds on instances and memory, and the pool's weights within the code's."""

from __future__ import annotations

from annotated_types import Ge, Le

from realtime_speech.settings import DEFAULT_MAX_CONCURRENT_SESSIONS, BackendSettings, Settings

from ..templates import (
    FUNCTION_APP,
    MAIN,
    OPENAI_POOL,
    Problems,
    Templates,
    decorator,
    dig,
    modules_using,
    render,
    resources,
    variable,
)

SCALE_PARAMS = ("instanceMemoryMB", "maximumInstanceCount", "httpPerInstanceConcurrency")
FLEX_INSTANCE_COUNT = (40, 1000)
FLEX_INSTANCE_MEMORY_MB = {512, 2048, 4096}
# The code's default MAX_CONCURRENT_SESSIONS is sized for the smallest instance; larger ones get as
# many sessions per MB.
SMALLEST_INSTANCE_MB = min(FLEX_INSTANCE_MEMORY_MB)
MB_PER_SESSION = SMALLEST_INSTANCE_MB // DEFAULT_MAX_CONCURRENT_SESSIONS


def scale_problems(templates: Templates) -> Problems:
    return instance_problems(templates) + session_problems(templates) + weight_problems(templates)


def session_problems(templates: Templates) -> Problems:
    """MAX_CONCURRENT_SESSIONS follows the instance memory the template deploys, at the code default's
    rate, and stays within the code's bounds for every memory size allowed."""
    main, problems = templates.trees[MAIN], Problems()
    setting = render(variable(main, "appSettings").get("MAX_CONCURRENT_SESSIONS"))
    problems.expect(
        setting == "string(maxConcurrentSessions)",
        f"MAX_CONCURRENT_SESSIONS must be string(maxConcurrentSessions), is {setting}",
    )
    expected = f"<divide>(instanceMemoryMB, {MB_PER_SESSION})"
    sessions = render(main["variables"].get("maxConcurrentSessions", {}).get("value"))
    problems.expect(
        sessions == expected,
        f"maxConcurrentSessions must be instanceMemoryMB / {MB_PER_SESSION} "
        f"({DEFAULT_MAX_CONCURRENT_SESSIONS} per {SMALLEST_INSTANCE_MB} MB), is {sessions}",
    )
    metadata = Settings.model_fields["max_concurrent_sessions"].metadata
    (low,) = [m.ge for m in metadata if isinstance(m, Ge)]
    (high,) = [m.le for m in metadata if isinstance(m, Le)]
    for memory in decorator(main, "instanceMemoryMB", "allowed") or []:
        problems.expect(
            low <= memory // MB_PER_SESSION <= high,
            f"MAX_CONCURRENT_SESSIONS at {memory} MB is outside {low} to {high}",
        )
    return problems


def instance_problems(templates: Templates) -> Problems:
    """The scale settings come from main's parameters, within Flex Consumption's limits."""
    trees, problems = templates.trees, Problems()
    main, app = trees[MAIN], trees[FUNCTION_APP]
    (site,) = resources({FUNCTION_APP: app}, "Microsoft.Web/sites")
    scale = dig(site.properties, "functionAppConfig", "scaleAndConcurrency") or {}
    problems.expect(
        scale.get("maximumInstanceCount") == "maximumInstanceCount"
        and scale.get("instanceMemoryMB") == "instanceMemoryMB"
        and dig(scale, "triggers", "http", "perInstanceConcurrency") == "httpPerInstanceConcurrency",
        f"{site.where}: scale settings must come from the parameters",
    )
    (module,) = modules_using(main, FUNCTION_APP).values()
    for param in SCALE_PARAMS:
        problems.expect(module["params"].get(param) == param, f"main.bicep: {param} must be passed through")
        problems.expect(param in main["parameters"], f"main.bicep: {param} must be a parameter")
    lowest, highest = FLEX_INSTANCE_COUNT
    for tree in (main, app):
        low, high = (
            decorator(tree, "maximumInstanceCount", "min_value"),
            decorator(tree, "maximumInstanceCount", "max_value"),
        )
        problems.expect(
            low is not None and high is not None and lowest <= low <= high <= highest,
            f"maximumInstanceCount: {lowest} to {highest}",
        )
        memory = decorator(tree, "instanceMemoryMB", "allowed") or []
        problems.expect(
            bool(memory) and set(memory) <= FLEX_INSTANCE_MEMORY_MB, "instanceMemoryMB: 512, 2048 or 4096"
        )
    return problems


def weight_problems(templates: Templates) -> Problems:
    """Backends weigh their deployment's capacity, capped at the code's largest weight."""
    trees, problems = templates.trees, Problems()
    (cap,) = [m.le for m in BackendSettings.model_fields["weight"].metadata if isinstance(m, Le)]
    primary = variable(trees[MAIN], "openAiBackends")["function"]["parameters"]["arg_1"][0]
    extra = trees[OPENAI_POOL]["outputs"]["backends"]["value"]
    item = extra["loop_type"]["detail"]["item_name"]
    for what, weight, expected in (
        ("the primary backend", primary.get("weight"), f"min(openAiDeploymentCapacity, {cap})"),
        ("an extra backend", extra["config"].get("weight"), f"min({item}.capacity, {cap})"),
    ):
        problems.expect(render(weight) == expected, f"{what}: weight must be {expected}, is {render(weight)}")
    return problems
