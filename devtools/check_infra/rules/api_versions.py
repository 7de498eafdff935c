"""API versions: resources are declared with versions that have the properties the templates set."""

from __future__ import annotations

from ..templates import Problems, Templates, resources

MINIMUM_API_VERSIONS = {
    "Microsoft.Web/sites": "2024-04-01",
    "Microsoft.Web/serverfarms": "2024-04-01",
    "Microsoft.CognitiveServices/accounts": "2024-10-01",
    "Microsoft.CognitiveServices/accounts/deployments": "2024-10-01",
}


def api_version_problems(templates: Templates) -> Problems:
    problems = Problems()
    for resource in resources(templates.trees):
        minimum = MINIMUM_API_VERSIONS.get(resource.type)
        if minimum:
            problems.expect(
                resource.api_version >= minimum,
                f"{resource.where}: {resource.type}@{resource.api_version} < {minimum}",
            )
    return problems
