"""Security invariants of the role assignments: each role on the one resource it is for, nothing more."""

from __future__ import annotations

import re

from ..templates import (
    FUNCTION_APP,
    MAIN,
    OPENAI_MODEL,
    ROLES,
    STORAGE,
    Problems,
    Resource,
    Templates,
    modules_using,
    render,
    resolve,
    resources,
    same,
)

# Built-in role definition ids.
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
COGNITIVE_SERVICES_OPENAI_USER = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
# Roles far beyond what the app needs; none may appear anywhere in the templates.
PRIVILEGED_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
    "81a9662b-bebf-436f-a333-f67b29880f12": "Storage Account Key Operator Service Role",
    "25fbc0a9-bd7c-42a3-aa1a-3b75d497ee68": "Cognitive Services Contributor",
    "a001fd3d-188f-4b5d-821b-7da978bf7442": "Cognitive Services OpenAI Contributor",
}

STORAGE_ACCOUNT = "Microsoft.Storage/storageAccounts"
HOST_ACCOUNT = (STORAGE_ACCOUNT, "hostStorageAccountName")
AUDIO_ACCOUNT = (STORAGE_ACCOUNT, "audioStorageAccountName")
APP_INSIGHTS = ("Microsoft.Insights/components", "applicationInsightsName")
OPENAI_ACCOUNT = ("Microsoft.CognitiveServices/accounts", "accountName")
# The app identity's roles: (role, (type of the resource in scope, parameter naming that resource)).
EXPECTED_APP_ROLES = {
    (STORAGE_BLOB_DATA_OWNER, HOST_ACCOUNT),
    (STORAGE_QUEUE_DATA_CONTRIBUTOR, HOST_ACCOUNT),
    (STORAGE_TABLE_DATA_CONTRIBUTOR, HOST_ACCOUNT),
    (STORAGE_BLOB_DATA_CONTRIBUTOR, AUDIO_ACCOUNT),
    (MONITORING_METRICS_PUBLISHER, APP_INSIGHTS),
    (COGNITIVE_SERVICES_OPENAI_USER, OPENAI_ACCOUNT),
}
# A developer's roles (principalId parameter), enough to run the app locally against Azure.
EXPECTED_USER_ROLES = {
    (STORAGE_BLOB_DATA_CONTRIBUTOR, AUDIO_ACCOUNT),
    (COGNITIVE_SERVICES_OPENAI_USER, OPENAI_ACCOUNT),
}
APP_PRINCIPAL = "identity.outputs.principalId"  # in main.bicep

Grant = tuple[str, tuple[str, str]]  # (role id, (resource type, parameter naming the resource))


def role_problems(templates: Templates) -> Problems:
    return role_assignment_problems(templates) + role_wiring_problems(templates)


def role_assignment_problems(templates: Templates) -> Problems:
    """The app and a developer get exactly the expected roles, each on its resource; no privileged role."""
    problems = Problems()
    grants: dict[str, set[Grant]] = {"appPrincipalId": set(), "userPrincipalId": set()}
    for assignment in resources(templates.trees, "Microsoft.Authorization/roleAssignments"):
        grant = _grant(templates, assignment, problems)
        if grant is None:
            continue
        principal = assignment.properties.get("principalId")
        if principal == "appPrincipalId":
            problems.expect(
                assignment.condition is None, f"{assignment.where}: the app's roles are unconditional"
            )
            problems.expect(
                same(assignment.properties.get("principalType"), "ServicePrincipal"),
                f"{assignment.where}: principalType must be 'ServicePrincipal'",
            )
        elif principal == "userPrincipalId":
            problems.expect(
                render(assignment.condition) == "<not>(empty(userPrincipalId))",
                f"{assignment.where}: a developer's role must be skipped when userPrincipalId is empty",
            )
        else:
            problems.append(f"{assignment.where}: unexpected principal {principal!r}")
            continue
        grants[principal].add(grant)
    for role, target in sorted(EXPECTED_APP_ROLES - grants["appPrincipalId"]):
        problems.append(f"the app identity lacks role {role} on {target}")
    for role, target in sorted(grants["appPrincipalId"] - EXPECTED_APP_ROLES):
        problems.append(f"the app identity has unexpected role {role} on {target}")
    user_roles = grants["userPrincipalId"]
    problems.expect(user_roles == EXPECTED_USER_ROLES, f"developer roles {sorted(user_roles)}")
    for name, text in templates.texts.items():
        for role_id, role_name in PRIVILEGED_ROLES.items():
            problems.expect(role_id not in text, f"{name}: assigns {role_name}")
    return problems


def _grant(templates: Templates, assignment: Resource, problems: Problems) -> Grant | None:
    """The role and the resource of an assignment; None (with a problem) when it cannot be read."""
    tree = templates.trees[assignment.file]
    properties = assignment.properties
    role_ref = re.fullmatch(
        r"subscription_resource_id\(Microsoft\.Authorization/roleDefinitions, (\S+)\)",
        render(properties.get("roleDefinitionId")),
    )
    if not role_ref:
        problems.append(f"{assignment.where}: roleDefinitionId must be subscriptionResourceId(...)")
        return None
    scope_symbol = assignment.body.get("scope")
    scoped = [r for r in resources({assignment.file: tree}) if r.symbol == scope_symbol]
    if len(scoped) != 1:
        problems.append(f"{assignment.where}: scope {scope_symbol!r} is not a resource of the file")
        return None
    expected_name = f"guid({scope_symbol}.id, {properties.get('principalId')}, {role_ref.group(1)})"
    problems.expect(
        render(assignment.body.get("name")) == expected_name,
        f"{assignment.where}: name must be {expected_name}",
    )
    return resolve(tree, role_ref.group(1)), (scoped[0].type, render(scoped[0].body.get("name")))


def role_wiring_problems(templates: Templates) -> Problems:
    """main.bicep passes the right accounts and the app's identity to the role modules."""
    main, problems = templates.trees[MAIN], Problems()
    symbol_of = {
        container: symbol
        for symbol, body in modules_using(main, STORAGE).items()
        for container in body["params"].get("containers", [])
    }
    host_account = f"{symbol_of.get('deploymentContainerName')}.outputs.name"
    (roles,) = modules_using(main, ROLES).values()
    (openai,) = modules_using(main, OPENAI_MODEL).values()
    (function_app,) = modules_using(main, FUNCTION_APP).values()
    wiring = {
        ("roles", "hostStorageAccountName"): host_account,
        ("roles", "audioStorageAccountName"): f"{symbol_of.get('audioContainerName')}.outputs.name",
        ("roles", "appPrincipalId"): APP_PRINCIPAL,
        ("roles", "userPrincipalId"): "principalId",
        ("openai", "appPrincipalId"): APP_PRINCIPAL,
        ("openai", "accountName"): "openAiName",
        ("openai", "userPrincipalId"): "principalId",
        ("function_app", "identityId"): "identity.outputs.id",
        ("function_app", "identityClientId"): "identity.outputs.clientId",
        ("function_app", "hostStorageAccountName"): host_account,
    }
    bodies = {"roles": roles, "openai": openai, "function_app": function_app}
    for (module, param), expected in wiring.items():
        actual = render(bodies[module]["params"].get(param))
        problems.expect(actual == expected, f"main.bicep: {module}.{param} must be {expected}, is {actual}")
    problems.expect(
        modules_using(main, "modules/identity.bicep").keys() == {"identity"},
        "main.bicep: one identity module",
    )
    return problems
