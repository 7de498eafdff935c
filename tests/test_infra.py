"""Offline checks of the deployment: infra/*.bicep, infra/main.parameters.json, azure.yaml and
local.settings.sample.json.

- every Bicep file parses (pycep and tree-sitter) and its modules are called with the parameters they
  declare; checkov finds no failed check, and each suppression is justified and still needed;
- the settings the code reads, the sample local settings and the Bicep app settings are one set;
- security invariants: no shared keys, local auth off, HTTPS/TLS 1.2, each role on the right resource.

The invariant checks are functions of the parsed templates that return problems, so the mutation
tests at the end can show each of them failing on a template that breaks it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le
from pycep import BicepParser

from devtools import check_infra
from devtools.check_infra import INFRA_DIR, REPO_ROOT, BicepTree, module_body
from realtime_speech.models import VOICES
from realtime_speech.settings import Settings, setting_names

Trees = dict[str, BicepTree]  # key: path relative to infra/, e.g. "modules/roles.bicep"

SAMPLE_SETTINGS = REPO_ROOT / "local.settings.sample.json"
PARAMETERS_FILE = INFRA_DIR / "main.parameters.json"
AZURE_YAML = REPO_ROOT / "azure.yaml"

MAIN = "main.bicep"
FUNCTION_APP = "modules/function-app.bicep"
STORAGE = "modules/storage-account.bicep"
ROLES = "modules/roles.bicep"
OPENAI_MODEL = "modules/openai-model.bicep"

# Settings that exist only on a developer's machine (Core Tools, the local stand-ins), never in Azure.
LOCAL_ONLY_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "AzureWebJobsStorage",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
}
# Code settings that must never be app settings in Azure: the deployment is keyless.
NEVER_DEPLOYED_SETTINGS = {"AZURE_OPENAI_API_KEY"}
# Settings of the Functions host and the platform that the Bicep adds beside the code's own.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# App settings Flex Consumption rejects or ignores (the runtime comes from functionAppConfig).
FLEX_REJECTED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "AzureWebJobsStorage",
}

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

MINIMUM_API_VERSIONS = {
    "Microsoft.Web/sites": "2024-04-01",
    "Microsoft.Web/serverfarms": "2024-04-01",
    "Microsoft.CognitiveServices/accounts": "2024-10-01",
    "Microsoft.CognitiveServices/accounts/deployments": "2024-10-01",
}

SECRET_PATTERNS = re.compile(
    r"list(Keys|AccountSas|ServiceSas|ConnectionStrings)\s*\(|AccountKey=|SharedAccessKey|primaryKey|key1\b"
)


# --- reading the templates -------------------------------------------------------------------------------


def bicep_paths() -> list[Path]:
    return check_infra.bicep_files()


def template_texts() -> dict[str, str]:
    return {
        path.relative_to(INFRA_DIR).as_posix(): path.read_text(encoding="utf-8") for path in bicep_paths()
    }


@dataclass(frozen=True)
class Templates:
    """The Bicep sources and their pycep trees, keyed by path relative to infra/."""

    texts: dict[str, str]
    trees: Trees

    @classmethod
    def parse(cls, texts: dict[str, str]) -> Templates:
        return cls(texts, {name: bicep_parser().parse(text=text) for name, text in texts.items()})


@cache
def bicep_parser() -> BicepParser:
    return BicepParser()  # building the grammar takes a while; parsing is quick


@cache
def parsed_json() -> str:
    return json.dumps(Templates.parse(template_texts()).trees)


@pytest.fixture
def templates() -> Templates:
    """The templates as they are (a fresh copy of the trees per test)."""
    return Templates(template_texts(), json.loads(parsed_json()))


@pytest.fixture
def trees(templates: Templates) -> Trees:
    return templates.trees


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
    """The modules of a tree that deploy `path` (relative to infra/): symbol -> body."""
    return {
        symbol: module_body(module)
        for symbol, module in tree.get("modules", {}).items()
        if module["detail"]["path"] == path
    }


def param_default(tree: BicepTree, name: str) -> Any:
    return tree["parameters"][name]["default"]


def decorator(tree: BicepTree, param: str, kind: str) -> Any:
    for item in tree["parameters"][param]["decorators"]:
        if item["type"] == kind:
            return item["argument"]
    return None


def variable(tree: BicepTree, name: str) -> Any:
    return tree["variables"][name]["value"]


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


# --- settings consistency --------------------------------------------------------------------------------


def bicep_app_settings(trees: Trees) -> dict[str, Any]:
    """Every app setting the templates give the function app: main's `appSettings` + the host's."""
    return {**variable(trees[MAIN], "appSettings"), **variable(trees[FUNCTION_APP], "hostSettings")}


def sample_values() -> dict[str, str]:
    return json.loads(SAMPLE_SETTINGS.read_text(encoding="utf-8"))["Values"]


def settings_problems(trees: Trees, code: set[str], sample: set[str]) -> Problems:
    problems = Problems()
    bicep = set(bicep_app_settings(trees))
    for name in sorted(code - sample):
        problems.append(f"{name}: read by the code, missing from local.settings.sample.json")
    for name in sorted(sample - code - LOCAL_ONLY_SETTINGS):
        problems.append(f"{name}: in local.settings.sample.json, but the code does not read it")
    for name in sorted(code - NEVER_DEPLOYED_SETTINGS - bicep):
        problems.append(f"{name}: read by the code, missing from the Bicep app settings")
    for name in sorted(bicep - code - PLATFORM_SETTINGS):
        problems.append(f"{name}: a Bicep app setting the code does not read")
    for name in sorted(bicep & NEVER_DEPLOYED_SETTINGS):
        problems.append(f"{name}: must not be an app setting in Azure (keyless deployment)")
    for name in sorted(bicep & FLEX_REJECTED_SETTINGS):
        problems.append(f"{name}: not allowed as an app setting on Flex Consumption")
    # The settings resource must apply both objects.
    (config,) = [r for r in resources(trees, "Microsoft.Web/sites/config") if r.file == FUNCTION_APP]
    problems.expect(config.body.get("name") == "appsettings", f"{config.where}: not the appsettings config")
    problems.expect(
        render(config.properties) == "union(appSettings, hostSettings)",
        f"{config.where}: properties must be union(appSettings, hostSettings)",
    )
    (function_app,) = modules_using(trees[MAIN], FUNCTION_APP).values()
    problems.expect(
        function_app["params"].get("appSettings") == "appSettings",
        "main.bicep: the function app module must get appSettings: appSettings",
    )
    return problems


def settings_default_problems(trees: Trees) -> Problems:
    """Bicep parameter defaults and bounds agree with the code's defaults and bounds."""
    problems = Problems()
    main = trees[MAIN]
    for name, value in variable(main, "appSettings").items():
        rendered = render(value)
        match = re.fullmatch(r"(?:string\()?(\w+)\)?", rendered)
        if not match or match.group(1) not in main["parameters"]:
            continue  # not a plain parameter (e.g. a module output)
        param = match.group(1)
        field = Settings.model_fields.get(name.lower())
        if field is None:
            continue  # reported by settings_problems
        default = param_default(main, param)
        problems.expect(
            default == field.default,
            f"{name}: Bicep default {default!r} ({param}) differs from the code's {field.default!r}",
        )
        lower = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
        lower = (
            lower if lower is not None else next((m.gt for m in field.metadata if isinstance(m, Gt)), None)
        )
        upper = next((m.le for m in field.metadata if isinstance(m, Le)), None)
        min_value, max_value = decorator(main, param, "min_value"), decorator(main, param, "max_value")
        if lower is not None:
            problems.expect(
                min_value is not None and min_value >= lower, f"{param}: @minValue must be >= {lower}"
            )
        if upper is not None:
            problems.expect(
                max_value is not None and max_value <= upper, f"{param}: @maxValue must be <= {upper}"
            )
        if name == "REALTIME_VOICE":
            allowed = decorator(main, param, "allowed")
            problems.expect(
                allowed == list(VOICES), f"{param}: @allowed {allowed} differs from the code's {VOICES}"
            )
    return problems


# --- security invariants ---------------------------------------------------------------------------------


STORAGE_INVARIANTS = {
    "allowSharedKeyAccess": False,
    "allowBlobPublicAccess": False,
    "minimumTlsVersion": "TLS1_2",
    "supportsHttpsTrafficOnly": True,
    "defaultToOAuthAuthentication": True,
    "allowCrossTenantReplication": False,
}


def storage_problems(templates: Templates) -> Problems:
    trees, problems = templates.trees, Problems()
    accounts = [r for r in resources(trees, STORAGE_ACCOUNT) if not r.existing]
    problems.expect(bool(accounts), "no storage account is created")
    for account in accounts:
        for key, expected in STORAGE_INVARIANTS.items():
            actual = account.properties.get(key)
            problems.expect(
                same(actual, expected), f"{account.where}: {key} must be {expected!r}, is {actual!r}"
            )
    for container in resources(trees, "Microsoft.Storage/storageAccounts/blobServices/containers"):
        access = container.properties.get("publicAccess")
        problems.expect(access == "None", f"{container.where}: publicAccess must be 'None', is {access!r}")

    # Both accounts come from the hardened module: the audio one with a retention rule, the host one without.
    main = trees[MAIN]
    storage_modules = modules_using(main, STORAGE)
    audio = [m for m in storage_modules.values() if "audioContainerName" in m["params"].get("containers", [])]
    host = [
        m for m in storage_modules.values() if "deploymentContainerName" in m["params"].get("containers", [])
    ]
    problems.expect(
        len(audio) == 1 and len(host) == 1, "main.bicep: expected one host and one audio storage module"
    )
    if audio and host:
        problems.expect(audio[0] is not host[0], "main.bicep: host and audio must be separate accounts")
        params = audio[0]["params"]
        problems.expect(
            params.get("deleteAfterDays") == "audioRetentionDays",
            "audio storage: deleteAfterDays must be audioRetentionDays",
        )
        problems.expect(
            params.get("deletePrefixes") == ["${audioContainerName}/"],
            "audio storage: deletePrefixes must be ['${audioContainerName}/']",
        )
        problems.expect(
            "deleteAfterDays" not in host[0]["params"], "host storage: must have no deletion rule"
        )
    retention = param_default(main, "audioRetentionDays")
    problems.expect(
        isinstance(retention, int) and 1 <= retention <= 30, f"audioRetentionDays default {retention!r}"
    )
    problems.expect(
        (decorator(main, "audioRetentionDays", "min_value") or 0) >= 1, "audioRetentionDays: @minValue(1)"
    )
    ttl = param_default(main, "audioUrlTtlMinutes")
    problems.expect(ttl <= retention * 24 * 60, "the SAS lifetime must not outlive the audio")

    # The lifecycle rule itself.
    policies = [
        r
        for r in resources(trees, "Microsoft.Storage/storageAccounts/managementPolicies")
        if r.file == STORAGE
    ]
    problems.expect(len(policies) == 1, f"{STORAGE}: expected one lifecycle policy")
    for policy in policies:
        problems.expect(
            render(policy.condition) == "<greater_than>(deleteAfterDays, 0)",
            f"{policy.where}: must be deployed when deleteAfterDays > 0",
        )
        rules = dig(policy.properties, "policy", "rules") or []
        problems.expect(len(rules) == 1, f"{policy.where}: expected one rule")
        for rule in rules:
            definition = rule.get("definition", {})
            problems.expect(same(rule.get("enabled"), True), f"{policy.where}: the rule must be enabled")
            problems.expect(
                dig(definition, "filters", "blobTypes") == ["blockBlob"], f"{policy.where}: blockBlob filter"
            )
            problems.expect(
                dig(definition, "filters", "prefixMatch") == "deletePrefixes", f"{policy.where}: prefixMatch"
            )
            problems.expect(
                dig(definition, "actions", "baseBlob", "delete", "daysAfterModificationGreaterThan")
                == "deleteAfterDays",
                f"{policy.where}: must delete base blobs after deleteAfterDays",
            )
    return problems


def local_auth_problems(templates: Templates) -> Problems:
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


def role_problems(templates: Templates) -> Problems:
    trees, problems = templates.trees, Problems()
    app_roles: set[tuple[str, tuple[str, str]]] = set()
    user_roles: set[tuple[str, tuple[str, str]]] = set()
    for assignment in resources(trees, "Microsoft.Authorization/roleAssignments"):
        tree = trees[assignment.file]
        properties = assignment.properties
        role_ref = re.fullmatch(
            r"subscription_resource_id\(Microsoft\.Authorization/roleDefinitions, (\S+)\)",
            render(properties.get("roleDefinitionId")),
        )
        if not role_ref:
            problems.append(f"{assignment.where}: roleDefinitionId must be subscriptionResourceId(...)")
            continue
        role = resolve(tree, role_ref.group(1))
        scope_symbol = assignment.body.get("scope")
        scoped = [r for r in resources({assignment.file: tree}) if r.symbol == scope_symbol]
        if len(scoped) != 1:
            problems.append(f"{assignment.where}: scope {scope_symbol!r} is not a resource of the file")
            continue
        target = (scoped[0].type, render(scoped[0].body.get("name")))
        principal = properties.get("principalId")
        expected_name = f"guid({scope_symbol}.id, {principal}, {role_ref.group(1)})"
        problems.expect(
            render(assignment.body.get("name")) == expected_name,
            f"{assignment.where}: name must be {expected_name}",
        )
        if principal == "appPrincipalId":
            problems.expect(
                assignment.condition is None, f"{assignment.where}: the app's roles are unconditional"
            )
            problems.expect(
                same(properties.get("principalType"), "ServicePrincipal"),
                f"{assignment.where}: principalType must be 'ServicePrincipal'",
            )
            app_roles.add((role, target))
        elif principal == "userPrincipalId":
            problems.expect(
                render(assignment.condition) == "<not>(empty(userPrincipalId))",
                f"{assignment.where}: a developer's role must be skipped when userPrincipalId is empty",
            )
            user_roles.add((role, target))
        else:
            problems.append(f"{assignment.where}: unexpected principal {principal!r}")
    for role, target in sorted(EXPECTED_APP_ROLES - app_roles):
        problems.append(f"the app identity lacks role {role} on {target}")
    for role, target in sorted(app_roles - EXPECTED_APP_ROLES):
        problems.append(f"the app identity has unexpected role {role} on {target}")
    problems.expect(user_roles == EXPECTED_USER_ROLES, f"developer roles {sorted(user_roles)}")
    for name, text in templates.texts.items():
        for role_id, role_name in PRIVILEGED_ROLES.items():
            problems.expect(role_id not in text, f"{name}: assigns {role_name}")

    # main.bicep passes the right accounts and the app's identity to the role modules.
    main = trees[MAIN]
    storage_modules = modules_using(main, STORAGE)
    symbol_of = {
        container: symbol
        for symbol, body in storage_modules.items()
        for container in body["params"].get("containers", [])
    }
    (roles,) = modules_using(main, ROLES).values()
    (openai,) = modules_using(main, OPENAI_MODEL).values()
    (function_app,) = modules_using(main, FUNCTION_APP).values()
    wiring = {
        ("roles", "hostStorageAccountName"): f"{symbol_of.get('deploymentContainerName')}.outputs.name",
        ("roles", "audioStorageAccountName"): f"{symbol_of.get('audioContainerName')}.outputs.name",
        ("roles", "appPrincipalId"): "identity.outputs.principalId",
        ("roles", "userPrincipalId"): "principalId",
        ("openai", "appPrincipalId"): "identity.outputs.principalId",
        ("openai", "accountName"): "openAiName",
        ("openai", "userPrincipalId"): "principalId",
        ("function_app", "identityId"): "identity.outputs.id",
        ("function_app", "identityClientId"): "identity.outputs.clientId",
        (
            "function_app",
            "hostStorageAccountName",
        ): f"{symbol_of.get('deploymentContainerName')}.outputs.name",
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


def resolve(tree: BicepTree, reference: str) -> str:
    """The value of a variable reference such as `roles.storageBlobDataOwner` or `openAiUserRoleId`."""
    head, _, rest = reference.partition(".")
    value = variable(tree, head)
    for key in rest.split(".") if rest else []:
        value = value[key]
    return value


def function_app_problems(templates: Templates) -> Problems:
    trees, problems = templates.trees, Problems()
    app = trees[FUNCTION_APP]
    (plan,) = resources({FUNCTION_APP: app}, "Microsoft.Web/serverfarms")
    problems.expect(
        plan.body.get("sku") == {"name": "FC1", "tier": "FlexConsumption"}, f"{plan.where}: must be FC1 Flex"
    )
    problems.expect(same(plan.properties.get("reserved"), True), f"{plan.where}: must be Linux (reserved)")
    (site,) = resources({FUNCTION_APP: app}, "Microsoft.Web/sites")
    properties = site.properties
    problems.expect(
        site.body.get("kind") == "functionapp,linux", f"{site.where}: kind must be functionapp,linux"
    )
    problems.expect(
        site.body.get("identity")
        == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}},
        f"{site.where}: must run as the user-assigned identity only",
    )
    problems.expect(same(properties.get("httpsOnly"), True), f"{site.where}: httpsOnly must be true")
    problems.expect(
        dig(properties, "siteConfig", "minTlsVersion") == "1.2", f"{site.where}: minTlsVersion 1.2"
    )
    problems.expect(
        dig(properties, "siteConfig", "ftpsState") == "Disabled", f"{site.where}: ftpsState Disabled"
    )
    problems.expect(
        render(properties.get("serverFarmId")) == f"{plan.symbol}.id", f"{site.where}: on the plan"
    )
    config = properties.get("functionAppConfig") or {}
    storage = dig(config, "deployment", "storage") or {}
    problems.expect(
        storage.get("type") == "blobContainer", f"{site.where}: deployment storage is a container"
    )
    problems.expect(
        storage.get("value") == "${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}",
        f"{site.where}: deployment container in the host account",
    )
    problems.expect(
        storage.get("authentication")
        == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"},
        f"{site.where}: deployment storage must use the user-assigned identity",
    )
    problems.expect(
        dig(config, "runtime") == {"name": "python", "version": "pythonVersion"},
        f"{site.where}: python runtime",
    )
    problems.expect(param_default(app, "pythonVersion") == "3.11", "pythonVersion must default to 3.11")
    scale = dig(config, "scaleAndConcurrency") or {}
    problems.expect(
        scale.get("maximumInstanceCount") == "maximumInstanceCount"
        and scale.get("instanceMemoryMB") == "instanceMemoryMB"
        and dig(scale, "triggers", "http", "perInstanceConcurrency") == "httpPerInstanceConcurrency",
        f"{site.where}: scale settings must come from the parameters",
    )
    tags = render(site.body.get("tags"))
    problems.expect(tags == 'union(tags, {"\'azd-service-name\'": "serviceName"})', f"{site.where}: azd tag")
    policies = {
        r.body.get("name"): r.properties.get("allow")
        for r in resources({FUNCTION_APP: app}, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    problems.expect(
        policies == {"ftp": False, "scm": False}, f"{FUNCTION_APP}: basic-auth publishing must be off"
    )

    host = variable(app, "hostSettings")
    expected_host = {
        "AzureWebJobsStorage__blobServiceUri": "hostStorage.properties.primaryEndpoints.blob",
        "AzureWebJobsStorage__queueServiceUri": "hostStorage.properties.primaryEndpoints.queue",
        "AzureWebJobsStorage__tableServiceUri": "hostStorage.properties.primaryEndpoints.table",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": "identityClientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "applicationInsights.properties.ConnectionString",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=${identityClientId};Authorization=AAD",
        "AZURE_CLIENT_ID": "identityClientId",
    }
    for name, expected in expected_host.items():
        actual = render(host.get(name))
        problems.expect(actual == expected, f"{FUNCTION_APP}: {name} must be {expected}, is {actual}")

    main = trees[MAIN]
    (module,) = modules_using(main, FUNCTION_APP).values()
    for param in ("instanceMemoryMB", "maximumInstanceCount", "httpPerInstanceConcurrency"):
        problems.expect(module["params"].get(param) == param, f"main.bicep: {param} must be passed through")
        problems.expect(param in main["parameters"], f"main.bicep: {param} must be a parameter")
    problems.expect(module["params"].get("serviceName") == "api", "main.bicep: serviceName must be 'api'")
    for tree in (main, app):  # the platform's limits
        low, high = (
            decorator(tree, "maximumInstanceCount", "min_value"),
            decorator(tree, "maximumInstanceCount", "max_value"),
        )
        problems.expect(
            low is not None and high is not None and 40 <= low <= high <= 1000,
            "maximumInstanceCount: 40 to 1000",
        )
        memory = decorator(tree, "instanceMemoryMB", "allowed") or []
        problems.expect(
            bool(memory) and set(memory) <= {512, 2048, 4096}, "instanceMemoryMB: 512, 2048 or 4096"
        )
    return problems


def api_version_problems(templates: Templates) -> Problems:
    trees, problems = templates.trees, Problems()
    for resource in resources(trees):
        minimum = MINIMUM_API_VERSIONS.get(resource.type)
        if minimum:
            problems.expect(
                resource.api_version >= minimum,
                f"{resource.where}: {resource.type}@{resource.api_version} < {minimum}",
            )
    return problems


def secret_problems(templates: Templates) -> Problems:
    trees, problems = templates.trees, Problems()
    for name, text in templates.texts.items():
        for match in SECRET_PATTERNS.finditer(text):
            problems.append(f"{name}: {match.group(0)!r}: no keys or key-based secrets in the templates")
    for output in trees[MAIN].get("outputs", {}):
        problems.expect(
            not re.search(r"KEY|SECRET|PASSWORD|CONNECTION", output), f"output {output} looks secret"
        )
    return problems


INVARIANTS: dict[str, Callable[[Templates], Problems]] = {
    "storage": storage_problems,
    "local_auth": local_auth_problems,
    "roles": role_problems,
    "function_app": function_app_problems,
    "api_versions": api_version_problems,
    "secrets": secret_problems,
}


# --- parsing, wiring, checkov --------------------------------------------------------------------------


@pytest.mark.parametrize("path", bicep_paths(), ids=lambda path: path.relative_to(INFRA_DIR).as_posix())
def test_bicep_file_parses(path: Path) -> None:
    tree = check_infra.parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name} declares nothing"
    assert check_infra.syntax_errors(path) == []


def test_bicep_files_exist() -> None:
    names = {path.relative_to(INFRA_DIR).as_posix() for path in bicep_paths()}
    assert {MAIN, FUNCTION_APP, STORAGE, ROLES, OPENAI_MODEL} <= names


def test_tree_sitter_reports_syntax_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bicep"
    broken.write_text("param name string\nresource site 'Microsoft.Web/sites@2024-04-01' = {\n  name: name\n")
    assert check_infra.syntax_errors(broken)


def test_modules_get_the_parameters_they_declare() -> None:
    assert [str(problem) for path in bicep_paths() for problem in check_infra.wiring_problems(path)] == []


def test_module_wiring_check_finds_an_undeclared_parameter(tmp_path: Path) -> None:
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "m.bicep").write_text("param needed string\noutput out string = needed\n")
    main = tmp_path / "main.bicep"
    main.write_text(
        "module m 'modules/m.bicep' = {\n  name: 'm'\n  params: {\n    typo: 'x'\n  }\n}\n"
        "output o string = m.outputs.missing\n"
    )
    problems = [problem.problem for problem in check_infra.wiring_problems(main)]
    assert problems == [
        "passes 'typo', undeclared in m.bicep",
        "does not pass required parameter 'needed'",
        "uses output 'missing', which m.bicep lacks",
    ]


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    return check_infra.run_checkov()


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"infra{check['file_path']} {check['resource']}: {check['check_id']} {check['check_name']}"
        for check in checkov_report["results"].get("failed_checks", [])
    ]
    assert failed == []
    assert summary["failed"] == 0
    assert summary["parsing_errors"] == 0, "checkov skipped a file it could not parse"
    assert summary["passed"] > 0


def test_every_checkov_suppression_is_justified_and_still_needed(checkov_report: dict[str, Any]) -> None:
    in_source = check_infra.skip_comments()
    skipped = {
        (check["file_path"], check["check_id"]): check["check_result"].get("suppress_comment", "")
        for check in checkov_report["results"].get("skipped_checks", [])
    }
    assert set(skipped) == set(in_source), "a checkov:skip comment suppresses nothing, or is not seen"
    for (file, check_id), reason in in_source.items():
        assert len(reason.split()) >= 5, f"infra{file}: {check_id} needs a reason"


# --- settings --------------------------------------------------------------------------------------------


def test_code_sample_and_bicep_settings_are_one_set(trees: Trees) -> None:
    assert settings_problems(trees, setting_names(), set(sample_values())) == []


def test_bicep_setting_defaults_and_bounds_match_the_code(trees: Trees) -> None:
    assert settings_default_problems(trees) == []


def test_sample_settings_are_valid_settings() -> None:
    values = {
        name.lower(): value for name, value in sample_values().items() if name in setting_names() and value
    }
    settings = Settings(**values)
    assert settings.azure_openai_api_key is None  # the sample is keyless, like the deployment
    assert str(settings.audio_storage_account_url).startswith("https://127.0.0.1:10000/devstoreaccount1")
    assert sample_values()["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert sample_values()["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert sample_values()["SSL_CERT_FILE"] == sample_values()["REQUESTS_CA_BUNDLE"] == ".devstate/ca.pem"


def test_sample_documents_every_setting() -> None:
    sample = json.loads(SAMPLE_SETTINGS.read_text(encoding="utf-8"))
    assert all(isinstance(value, str) for value in sample["Values"].values())
    assert set(sample["Values"]) <= set(sample["_comments"]), "each setting needs a line in _comments"


# --- security invariants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(INVARIANTS))
def test_security_invariant(templates: Templates, name: str) -> None:
    assert INVARIANTS[name](templates) == []


# --- azd: main.bicep, main.parameters.json, azure.yaml -----------------------------------------------------


def test_main_is_an_azd_subscription_deployment(trees: Trees) -> None:
    main = trees[MAIN]
    assert main["globals"]["scope"]["value"] == "subscription"
    assert param_default(main, "environmentName") is None
    assert decorator(main, "location", "metadata") == {"azd": {"type": "location"}}
    (group,) = resources({MAIN: main}, "Microsoft.Resources/resourceGroups")
    assert group.body["tags"] == "tags"
    assert variable(main, "tags") == {"'azd-env-name'": "environmentName"}
    for module in main["modules"].values():
        assert module_body(module).get("params", {}).get("tags", "tags") == "tags"
    outputs = main["outputs"]
    assert render(outputs["AZURE_FUNCTION_APP_NAME"]["value"]) == "functionApp.outputs.name"
    assert outputs["SPEECH_API_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/api/speech"
    assert render(outputs["AZURE_OPENAI_ENDPOINT"]["value"]) == "openAi.outputs.endpoint"
    assert outputs["AUDIO_STORAGE_ACCOUNT_NAME"]["value"] is not None
    assert outputs["AUDIO_STORAGE_ACCOUNT_URL"]["value"] is not None


def test_generated_names_fit_azure_rules(trees: Trees) -> None:
    main = trees[MAIN]
    token = "a" * 13  # uniqueString() yields 13 lowercase letters and digits
    assert render(variable(main, "resourceToken")).startswith("to_lower(unique_string(")
    rules = {
        STORAGE: r"[a-z0-9]{3,24}",
        "modules/openai-account.bicep": r"[a-z0-9][a-z0-9-]{1,62}",
        FUNCTION_APP: r"[a-z0-9][a-z0-9-]{0,58}[a-z0-9]",
    }
    for path, rule in rules.items():
        for symbol, module in modules_using(main, path).items():
            name = module["params"]["name"]
            if name == "openAiName":
                name = variable(main, "openAiName")["operator"]["operands"]["false_value"]
            resolved = name.replace("${resourceToken}", token)
            assert re.fullmatch(rule, resolved), f"{symbol}: {resolved!r} breaks {rule}"


def test_existing_openai_account_can_be_used_instead(trees: Trees) -> None:
    main = trees[MAIN]
    assert param_default(main, "existingOpenAiName") == ""
    account = main["modules"]["openAiAccount"]["config"]
    assert render(account["condition"]) == "<not>(useExistingOpenAi)"
    assert render(variable(main, "useExistingOpenAi")) == "<not>(empty(existingOpenAiName))"
    model = module_body(main["modules"]["openAi"])
    assert render(model["scope"]) == "resource_group(openAiResourceGroupName)"
    assert model["params"]["createDeployment"] == "createOpenAiDeployment"
    assert param_default(main, "openAiModelName") == "gpt-realtime"
    assert (
        param_default(main, "openAiDeploymentName")
        == Settings.model_fields["azure_openai_deployment_name"].default
    )


PLACEHOLDER = re.compile(r"^\$\{(\w+)(?:=(.*))?\}$")


def test_parameters_file_matches_main_bicep(trees: Trees) -> None:
    main = trees[MAIN]
    parameters = json.loads(PARAMETERS_FILE.read_text(encoding="utf-8"))["parameters"]
    assert set(parameters) <= set(main["parameters"]), "main.parameters.json sets unknown parameters"
    required = {name for name, param in main["parameters"].items() if param["default"] is None}
    assert required <= set(parameters), "azd must supply every required parameter"
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    for name, entry in parameters.items():
        match = PLACEHOLDER.match(entry["value"])
        assert match, f"{name}: expected a ${{VAR}} or ${{VAR=default}} placeholder"
        if match.group(2) is None:
            continue
        default = param_default(main, name)
        assert match.group(2) == render(default), (
            f"{name}: default {match.group(2)} differs from main.bicep's"
        )


def test_azure_yaml_deploys_the_function_app() -> None:
    lines = AZURE_YAML.read_text(encoding="utf-8").splitlines(keepends=True)
    text = "".join(line for line in lines if not line.lstrip().startswith("#"))
    service = re.search(r"^services:\n  (\w+):\n((?:    .*\n)+)", text, re.MULTILINE)
    assert service, "azure.yaml needs one service under services:"
    name, body = service.group(1), service.group(2)
    fields = dict(re.findall(r"^    (\w+): (\S+)", body, re.MULTILINE))
    assert fields == {"project": ".", "language": "python", "host": "function"}
    assert name == "api"  # the function app's azd-service-name tag (test_security_invariant[function_app])


# --- the checks fail on broken templates ------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    file: str
    old: str
    new: str
    check: str
    problem: str  # a fragment of the problem the check must report


MUTATIONS = {
    "shared keys on": Mutation(
        STORAGE,
        "allowSharedKeyAccess: false",
        "allowSharedKeyAccess: true",
        "storage",
        "allowSharedKeyAccess",
    ),
    "public blobs": Mutation(
        STORAGE,
        "  allowBlobPublicAccess: false\n",
        "  allowBlobPublicAccess: true\n",
        "storage",
        "PublicAccess",
    ),
    "TLS 1.0": Mutation(STORAGE, "'TLS1_2'", "'TLS1_0'", "storage", "minimumTlsVersion"),
    "no retention": Mutation(
        MAIN, "deleteAfterDays: audioRetentionDays", "deleteAfterDays: 0", "storage", "deleteAfterDays"
    ),
    "OpenAI keys on": Mutation(
        "modules/openai-account.bicep",
        "disableLocalAuth: true",
        "disableLocalAuth: false",
        "local_auth",
        "disable",
    ),
    "App Insights keys on": Mutation(
        "modules/monitoring.bicep",
        "DisableLocalAuth: true",
        "DisableLocalAuth: false",
        "local_auth",
        "Disable",
    ),
    "audio role on host": Mutation(
        ROLES,
        "appPrincipalId, roles.storageBlobDataContributor)\n  scope: audioStorage",
        "appPrincipalId, roles.storageBlobDataContributor)\n  scope: hostStorage",
        "roles",
        "lacks role",
    ),
    "owner on audio": Mutation(
        ROLES,
        "storageBlobDataContributor: 'ba92f5b4",
        "storageBlobDataContributor: 'b7e6dc6d",
        "roles",
        "unexpected",
    ),
    "user principal type": Mutation(
        OPENAI_MODEL,
        "appPrincipalId\n    principalType: 'ServicePrincipal'",
        "appPrincipalId\n    principalType: 'User'",
        "roles",
        "principalType",
    ),
    "subscription owner": Mutation(
        ROLES,
        "var roles = {",
        "var owner = '8e3af657-a8ff-443c-a75c-2fe8c4bcb635'\nvar roles = {",
        "roles",
        "Owner",
    ),
    "wrong account to roles": Mutation(
        MAIN,
        "Name: audioStorage.outputs.name",
        "Name: hostStorage.outputs.name",
        "roles",
        "audioStorageAccountName",
    ),
    "http allowed": Mutation(
        FUNCTION_APP, "httpsOnly: true", "httpsOnly: false", "function_app", "httpsOnly"
    ),
    "not flex": Mutation(FUNCTION_APP, "name: 'FC1'", "name: 'Y1'", "function_app", "FC1"),
    "host storage by key": Mutation(
        FUNCTION_APP, "__credential: 'managedidentity'", "__credential: 'key'", "function_app", "__credential"
    ),
    "scm basic auth": Mutation(
        FUNCTION_APP,
        "'scm'\n  properties: {\n    allow: false",
        "'scm'\n  properties: {\n    allow: true",
        "function_app",
        "basic-auth",
    ),
    "account key": Mutation(
        MAIN, "var tags = {", "var leaked = listKeys('x', '2023-05-01')\nvar tags = {", "secrets", "listKeys"
    ),
    "old API": Mutation(
        FUNCTION_APP, "sites@2024-04-01' = {", "sites@2023-01-01' = {", "api_versions", "2023-01-01"
    ),
}

VOICE = "  REALTIME_VOICE: realtimeVoice\n"
CLIENT_ID = "  AZURE_CLIENT_ID: identityClientId\n"
SETTINGS_MUTATIONS = {
    "setting missing in Bicep": (MAIN, VOICE, "", "REALTIME_VOICE: read by the code, missing"),
    "API key deployed": (
        MAIN,
        VOICE,
        VOICE + "  AZURE_OPENAI_API_KEY: 'x'\n",
        "AZURE_OPENAI_API_KEY: must not",
    ),
    "unknown setting": (
        MAIN,
        VOICE,
        VOICE + "  REALTIME_VOIC: realtimeVoice\n",
        "REALTIME_VOIC: a Bicep app setting",
    ),
    "Flex-rejected setting": (
        FUNCTION_APP,
        CLIENT_ID,
        CLIENT_ID + "  FUNCTIONS_WORKER_RUNTIME: 'python'\n",
        "FUNCTIONS_WORKER_RUNTIME: not",
    ),
    "default drift": (
        MAIN,
        "UrlTtlMinutes int = 60",
        "UrlTtlMinutes int = 90",
        "AUDIO_URL_TTL_MINUTES: Bicep default 90",
    ),
    "voice list drift": (MAIN, "  'cedar'\n])\nparam realtimeVoice", "])\nparam realtimeVoice", "@allowed"),
}


def mutated(file: str, old: str, new: str) -> Templates:
    """The templates with one edit; the edited text must occur exactly once."""
    texts = template_texts()
    assert texts[file].count(old) == 1, f"the mutation's text must occur once in {file}: {old!r}"
    texts[file] = texts[file].replace(old, new)
    trees = json.loads(parsed_json())
    trees[file] = bicep_parser().parse(text=texts[file])
    return Templates(texts, trees)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_security_invariants_catch(name: str) -> None:
    mutation = MUTATIONS[name]
    problems = INVARIANTS[mutation.check](mutated(mutation.file, mutation.old, mutation.new))
    assert any(mutation.problem in problem for problem in problems), problems


@pytest.mark.parametrize("name", list(SETTINGS_MUTATIONS))
def test_settings_checks_catch(name: str) -> None:
    file, old, new, expected = SETTINGS_MUTATIONS[name]
    trees = mutated(file, old, new).trees
    problems = settings_problems(trees, setting_names(), set(sample_values())) + settings_default_problems(
        trees
    )
    assert any(expected in problem for problem in problems), problems


def test_settings_check_catches_a_setting_missing_from_the_sample(trees: Trees) -> None:
    sample = set(sample_values()) - {"AUDIO_BLOCK_SIZE_BYTES"}
    problems = settings_problems(trees, setting_names(), sample)
    assert problems == ["AUDIO_BLOCK_SIZE_BYTES: read by the code, missing from local.settings.sample.json"]


def test_settings_check_reads_new_code_settings(trees: Trees) -> None:
    problems = settings_problems(trees, setting_names() | {"AUDIO_FORMAT"}, set(sample_values()))
    assert problems == [
        "AUDIO_FORMAT: read by the code, missing from local.settings.sample.json",
        "AUDIO_FORMAT: read by the code, missing from the Bicep app settings",
    ]
