"""Security invariants of a keyless deployment: local (key) auth off everywhere, no key in the templates."""

from __future__ import annotations

import re

from ..templates import MAIN, Problems, Templates, decorator, dig, render, resources, same

SECRET_PATTERNS = re.compile(
    r"list(Keys|AccountSas|ServiceSas|ConnectionStrings)\s*\(|AccountKey=|SharedAccessKey|primaryKey|key1\b"
)


def local_auth_problems(templates: Templates) -> Problems:
    return openai_local_auth_problems(templates) + monitoring_local_auth_problems(templates)


def openai_local_auth_problems(templates: Templates) -> Problems:
    """The Azure OpenAI accounts the templates create take Entra tokens only, on a custom subdomain."""
    trees, problems = templates.trees, Problems()
    openai = [r for r in resources(trees, "Microsoft.CognitiveServices/accounts") if not r.existing]
    problems.expect(len(openai) == 1, "expected one Azure OpenAI account resource")
    for account in openai:
        disabled = account.properties.get("disableLocalAuth")
        problems.expect(
            same(disabled, True), f"{account.where}: disableLocalAuth must be true, is {disabled!r}"
        )
        problems.expect(
            bool(account.properties.get("customSubDomainName")), f"{account.where}: needs customSubDomainName"
        )
        kinds = decorator(trees[account.file], "kind", "allowed")
        problems.expect(
            account.body.get("kind") == "kind" and set(kinds or []) <= {"OpenAI", "AIServices"},
            f"{account.where}: kind must be OpenAI or AIServices",
        )
    return problems


def monitoring_local_auth_problems(templates: Templates) -> Problems:
    """Application Insights and its workspace accept telemetry from Entra identities only."""
    trees, problems = templates.trees, Problems()
    insights = [r for r in resources(trees, "Microsoft.Insights/components") if not r.existing]
    problems.expect(len(insights) == 1, "expected one Application Insights component")
    for component in insights:
        disabled = component.properties.get("DisableLocalAuth")
        problems.expect(
            same(disabled, True), f"{component.where}: DisableLocalAuth must be true, is {disabled!r}"
        )
        workspace = render(component.properties.get("WorkspaceResourceId"))
        workspaces = {
            f"{r.symbol}.id"
            for r in resources(trees, "Microsoft.OperationalInsights/workspaces")
            if r.file == component.file
        }
        problems.expect(workspace in workspaces, f"{component.where}: must be on a Log Analytics workspace")
    for workspace in resources(trees, "Microsoft.OperationalInsights/workspaces"):
        disabled = dig(workspace.properties, "features", "disableLocalAuth")
        problems.expect(same(disabled, True), f"{workspace.where}: features.disableLocalAuth must be true")
    return problems


def secret_problems(templates: Templates) -> Problems:
    """No key, SAS or connection string is read or output anywhere."""
    problems = Problems()
    for name, text in templates.texts.items():
        for match in SECRET_PATTERNS.finditer(text):
            problems.append(f"{name}: {match.group(0)!r}: no keys or key-based secrets in the templates")
    for output in templates.trees[MAIN].get("outputs", {}):
        problems.expect(
            not re.search(r"KEY|SECRET|PASSWORD|CONNECTION", output), f"output {output} looks secret"
        )
    return problems
