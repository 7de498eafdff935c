"""Offline checks of the deployment: infra/*.bicep, infra/main.parameters.json, azure.yaml and
local.settings.sample.json.

- every Bicep file parses (pycep and tree-sitter) and its modules are called with the parameters they
  declare; checkov finds no failed check, and each suppression is justified and still needed;
- every rule of `devtools.check_infra.rules` holds: settings consistency (the code's settings, the
  sample local settings and the Bicep app settings are one set, with the code's defaults and bounds),
  security invariants (no shared keys, local auth off, HTTPS/TLS 1.2, each role on the right resource,
  every account of the model pool hardened and reachable by the app), scale limits and naming;
- the azd wiring: main.parameters.json and azure.yaml.

The mutation tests at the end show each rule failing on a template that breaks it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.check_infra.checkov import run_checkov, skip_comments
from devtools.check_infra.parsing import INFRA_DIR, REPO_ROOT, bicep_files, parse, parse_text, syntax_errors
from devtools.check_infra.rules import RULES, SECURITY_RULES
from devtools.check_infra.rules.settings import (
    HOST_SETTINGS,
    sample_values,
    setting_name_problems,
    settings_problems,
    telemetry_problems,
)
from devtools.check_infra.templates import (
    FUNCTION_APP,
    MAIN,
    OPENAI_MODEL,
    OPENAI_POOL,
    ROLES,
    STORAGE,
    Templates,
    Trees,
    decorator,
    load_templates,
    param_default,
    render,
    resources,
    template_texts,
    variable,
)
from devtools.check_infra.wiring import module_body, wiring_problems
from realtime_speech.settings import Settings, setting_names

SAMPLE_SETTINGS = REPO_ROOT / "local.settings.sample.json"
PARAMETERS_FILE = INFRA_DIR / "main.parameters.json"
AZURE_YAML = REPO_ROOT / "azure.yaml"


@pytest.fixture
def templates() -> Templates:
    return load_templates()


@pytest.fixture
def trees(templates: Templates) -> Trees:
    return templates.trees


# --- parsing, wiring, checkov --------------------------------------------------------------------------


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: path.relative_to(INFRA_DIR).as_posix())
def test_bicep_file_parses(path: Path) -> None:
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name} declares nothing"
    assert syntax_errors(path) == []


def test_bicep_files_exist() -> None:
    names = {path.relative_to(INFRA_DIR).as_posix() for path in bicep_files()}
    assert {MAIN, FUNCTION_APP, STORAGE, ROLES, OPENAI_MODEL, OPENAI_POOL} <= names


def test_tree_sitter_reports_syntax_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bicep"
    broken.write_text("param name string\nresource site 'Microsoft.Web/sites@2024-04-01' = {\n  name: name\n")
    assert syntax_errors(broken)


def test_modules_get_the_parameters_they_declare() -> None:
    assert [str(problem) for path in bicep_files() for problem in wiring_problems(path)] == []


def test_module_wiring_check_finds_an_undeclared_parameter(tmp_path: Path) -> None:
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "m.bicep").write_text("param needed string\noutput out string = needed\n")
    main = tmp_path / "main.bicep"
    main.write_text(
        "module m 'modules/m.bicep' = {\n  name: 'm'\n  params: {\n    typo: 'x'\n  }\n}\n"
        "module ms 'modules/m.bicep' = [for i in range(0, 2): {\n  name: 'm${i}'\n"
        "  params: {\n    needed: 'x'\n  }\n}]\n"
        "output o string = m.outputs.missing\noutput p string = ms[0].outputs.gone\n"
    )
    problems = [problem.problem for problem in wiring_problems(main)]
    assert problems == [
        "passes 'typo', undeclared in m.bicep",
        "does not pass required parameter 'needed'",
        "uses output 'missing', which m.bicep lacks",
        "uses output 'gone', which m.bicep lacks",
    ]


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    return run_checkov()


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
    in_source = skip_comments()
    skipped = {
        (check["file_path"], check["check_id"]): check["check_result"].get("suppress_comment", "")
        for check in checkov_report["results"].get("skipped_checks", [])
    }
    assert set(skipped) == set(in_source), "a checkov:skip comment suppresses nothing, or is not seen"
    for (file, check_id), reason in in_source.items():
        assert len(reason.split()) >= 5, f"infra{file}: {check_id} needs a reason"


# --- the rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_rule_holds(templates: Templates, name: str) -> None:
    assert RULES[name](templates) == []


def test_code_sample_and_bicep_settings_are_one_set(trees: Trees) -> None:
    assert settings_problems(trees, setting_names(), set(sample_values())) == []


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
    assert sample_values()["PYTHON_ENABLE_INIT_INDEXING"] == HOST_SETTINGS["PYTHON_ENABLE_INIT_INDEXING"]


def test_sample_documents_every_setting() -> None:
    sample = json.loads(SAMPLE_SETTINGS.read_text(encoding="utf-8"))
    assert all(isinstance(value, str) for value in sample["Values"].values())
    assert set(sample["Values"]) <= set(sample["_comments"]), "each setting needs a line in _comments"
    for name, value in sample["Values"].items():
        if not value:  # an unset setting's explanation says what a value looks like
            assert "e.g." in sample["_comments"][name] or "Empty" in sample["_comments"][name], name


def test_sample_backends_example_is_a_valid_pool() -> None:
    comment = json.loads(SAMPLE_SETTINGS.read_text(encoding="utf-8"))["_comments"]["AZURE_OPENAI_BACKENDS"]
    example = re.search(r"e\.g\. two emulators: (\[.*?\])\.", comment)
    assert example, "the AZURE_OPENAI_BACKENDS explanation needs an example"
    values = {"azure_openai_backends": example.group(1), "audio_storage_account_url": "https://x"}
    assert [backend.priority for backend in Settings(**values).backends()] == [1, 2]


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
    assert render(outputs["AZURE_OPENAI_BACKENDS"]["value"]) == "string(openAiBackends)"
    assert outputs["AUDIO_STORAGE_ACCOUNT_NAME"]["value"] is not None
    assert outputs["AUDIO_STORAGE_ACCOUNT_URL"]["value"] is not None


def test_existing_openai_account_can_be_used_instead(trees: Trees) -> None:
    main = trees[MAIN]
    assert param_default(main, "existingOpenAiName") == ""
    account = main["modules"]["openAiAccount"]["config"]
    assert render(account["condition"]) == "<not>(useExistingOpenAi)"
    assert render(variable(main, "useExistingOpenAi")) == "<not>(empty(existingOpenAiName))"
    model = module_body(main["modules"]["openAi"])
    assert render(model["scope"]) == "resource_group(openAiResourceGroupName)"
    assert model["params"]["createDeployment"] == "createOpenAiDeployment"
    assert model["params"]["createTranscriptionDeployment"] == "createTranscriptionDeployment"
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
        if not isinstance(entry["value"], str):
            continue  # a literal value, e.g. an array of additionalOpenAiBackends
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
    assert name == "api"  # the function app's azd-service-name tag (test_rule_holds[function_app])


# --- the checks fail on broken templates ------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    file: str
    old: str
    new: str
    check: str  # a rule of RULES
    problem: str  # a fragment of the problem the rule must report


ROGUE_ACCOUNT = """
resource rogue 'Microsoft.CognitiveServices/accounts@2024-10-01' = [for (backend, i) in backends: {
  name: '${namePrefix}-rogue-${i + 1}'
  location: backend.location
  kind: kind
  sku: {
    name: 'S0'
  }
  properties: {
    customSubDomainName: '${namePrefix}-rogue-${i + 1}'
    disableLocalAuth: false
  }
}]
"""
POOL_ACCOUNT_NAME = "    accountName: accounts[i].outputs.name\n"
PRIMARY_BACKEND = "    endpoint: openAi.outputs.endpoint\n    deployment: openAiDeploymentName\n"
EXTRA_BACKEND = "  endpoint: models[i].outputs.endpoint\n  deployment: deploymentName\n"
VOICE = "  REALTIME_VOICE: realtimeVoice\n"
CLIENT_ID = "  AZURE_CLIENT_ID: identityClientId\n"
INIT_INDEXING = "  PYTHON_ENABLE_INIT_INDEXING: '1'\n"
LOGGER_NAME = "  PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'realtime_speech'\n"
DISABLED_INSTRUMENTATIONS = "django,fastapi,flask,httpx,httpx2,psycopg2,requests,urllib,urllib3"

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
    "extra account with local auth on": Mutation(
        OPENAI_POOL,
        "\nmodule models",
        ROGUE_ACCOUNT + "\nmodule models",
        "local_auth",
        "disableLocalAuth must be true",
    ),
    "extra account outside the hardened module": Mutation(
        OPENAI_POOL, "\nmodule models", ROGUE_ACCOUNT + "\nmodule models", "openai_pool", "must come from"
    ),
    "extra account without the role": Mutation(
        OPENAI_POOL,
        POOL_ACCOUNT_NAME,
        "    accountName: 'elsewhere'\n",
        "openai_pool",
        "gives the app its role",
    ),
    "extra account's role for another principal": Mutation(
        OPENAI_POOL,
        "    appPrincipalId: appPrincipalId\n",
        "    appPrincipalId: userPrincipalId\n",
        "openai_pool",
        "the role must go to appPrincipalId",
    ),
    "pool without the app's identity": Mutation(
        MAIN,
        "    appPrincipalId: identity.outputs.principalId\n    userPrincipalId: principalId\n"
        "    userPrincipalType: principalType\n  }\n}\n\nmodule roles",
        "    appPrincipalId: principalId\n    userPrincipalId: principalId\n"
        "    userPrincipalType: principalType\n  }\n}\n\nmodule roles",
        "openai_pool",
        "the pool's appPrincipalId",
    ),
    "extra accounts without the transcription deployment": Mutation(
        OPENAI_POOL,
        "    createTranscriptionDeployment: true\n",
        "    createTranscriptionDeployment: false\n",
        "openai_pool",
        "needs the transcription deployment",
    ),
    "extra accounts with another model": Mutation(
        OPENAI_POOL,
        "    modelName: modelName\n",
        "    modelName: 'gpt-4o'\n",
        "openai_pool",
        "modelName must be",
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
    "scale beyond Flex": Mutation(
        MAIN,
        "@maxValue(1000)\nparam maximumInstanceCount",
        "@maxValue(2000)\nparam maximumInstanceCount",
        "scale",
        "40 to 1000",
    ),
    "weight beyond the code's": Mutation(
        OPENAI_POOL,
        "weight: min(backend.capacity, 1000)",
        "weight: backend.capacity",
        "scale",
        "weight must be",
    ),
    "name too long": Mutation(
        MAIN,
        "namePrefix: 'oai-${resourceToken}'",
        "namePrefix: 'oai-" + "-".join(["${resourceToken}"] * 5) + "'",
        "naming",
        "breaks",
    ),
    # settings consistency
    "setting missing in Bicep": Mutation(
        MAIN, VOICE, "", "settings", "REALTIME_VOICE: read by the code, missing"
    ),
    "API key deployed": Mutation(
        MAIN, VOICE, VOICE + "  AZURE_OPENAI_API_KEY: 'x'\n", "settings", "AZURE_OPENAI_API_KEY: must not"
    ),
    "endpoint deployed beside the pool": Mutation(
        MAIN,
        VOICE,
        VOICE + "  AZURE_OPENAI_ENDPOINT: openAi.outputs.endpoint\n",
        "settings",
        "AZURE_OPENAI_ENDPOINT: must not",
    ),
    "unknown setting": Mutation(
        MAIN,
        VOICE,
        VOICE + "  REALTIME_VOIC: realtimeVoice\n",
        "settings",
        "REALTIME_VOIC: a Bicep app setting",
    ),
    "Flex-rejected setting": Mutation(
        FUNCTION_APP,
        CLIENT_ID,
        CLIENT_ID + "  FUNCTIONS_WORKER_RUNTIME: 'python'\n",
        "settings",
        "FUNCTIONS_WORKER_RUNTIME: not",
    ),
    "init indexing missing": Mutation(
        FUNCTION_APP,
        INIT_INDEXING,
        "",
        "settings",
        "PYTHON_ENABLE_INIT_INDEXING: a host setting the deployment",
    ),
    "init indexing off": Mutation(
        FUNCTION_APP, INIT_INDEXING, "  PYTHON_ENABLE_INIT_INDEXING: '0'\n", "settings", "must be '1'"
    ),
    "default drift": Mutation(
        MAIN,
        "UrlTtlMinutes int = 60",
        "UrlTtlMinutes int = 90",
        "defaults",
        "AUDIO_URL_TTL_MINUTES: Bicep default 90",
    ),
    "voice list drift": Mutation(
        MAIN, "  'cedar'\n])\nparam realtimeVoice", "])\nparam realtimeVoice", "defaults", "@allowed"
    ),
    "bitrate list drift": Mutation(MAIN, "  144\n  160\n", "  144\n  192\n", "defaults", "@allowed"),
    "playground on by default": Mutation(
        MAIN,
        "playgroundEnabled bool = false",
        "playgroundEnabled bool = true",
        "defaults",
        "PLAYGROUND_ENABLED",
    ),
    "speed beyond the code's": Mutation(
        MAIN,
        "@maxValue(150)\nparam realtimeSpeed",
        "@maxValue(200)\nparam realtimeSpeed",
        "defaults",
        "<= 1.5",
    ),
    "no spare session deployed": Mutation(
        MAIN,
        "realtimeSpareSessions int = 1",
        "realtimeSpareSessions int = 0",
        "defaults",
        "REALTIME_SPARE_SESSIONS: Bicep default 0 (realtimeSpareSessions) must be the deployed default 1",
    ),
    "more spares than the code takes": Mutation(
        MAIN,
        "@maxValue(8)\nparam realtimeSpareSessions",
        "@maxValue(16)\nparam realtimeSpareSessions",
        "defaults",
        "realtimeSpareSessions: @maxValue must be <= 8",
    ),
    "spares older than a session lives": Mutation(
        MAIN,
        "@maxValue(1500)\nparam realtimeSpareMaxAgeSeconds",
        "@maxValue(1800)\nparam realtimeSpareMaxAgeSeconds",
        "defaults",
        "realtimeSpareMaxAgeSeconds: @maxValue must be <= 1500",
    ),
    "max tokens always set": Mutation(
        MAIN, "realtimeMaxOutputTokens int = 0", "realtimeMaxOutputTokens int = 4096", "defaults", "must be 0"
    ),
    "grace bound drift": Mutation(
        MAIN,
        "@maxValue(60)\nparam inputTranscriptGraceSeconds",
        "@maxValue(120)\nparam inputTranscriptGraceSeconds",
        "defaults",
        "<= 60",
    ),
    "pool without the primary": Mutation(
        MAIN, "], openAiPool.outputs.backends)", "], [])", "backends", "concat"
    ),
    "primary backend elsewhere": Mutation(
        MAIN,
        PRIMARY_BACKEND,
        "    endpoint: 'https://example.openai.azure.com'\n    deployment: openAiDeploymentName\n",
        "backends",
        "endpoint must be openAi.outputs.endpoint",
    ),
    "extra backend with a key": Mutation(
        OPENAI_POOL, EXTRA_BACKEND, EXTRA_BACKEND + "  key: 'x'\n", "backends", "has fields"
    ),
    "extra backend, other deployment": Mutation(
        OPENAI_POOL,
        EXTRA_BACKEND,
        "  endpoint: models[i].outputs.endpoint\n  deployment: 'other'\n",
        "backends",
        "deployment must be",
    ),
    "transcription by model name": Mutation(
        MAIN,
        "  REALTIME_TRANSCRIPTION_MODEL: transcriptionDeploymentName\n",
        "  REALTIME_TRANSCRIPTION_MODEL: 'whisper-1'\n",
        "backends",
        "REALTIME_TRANSCRIPTION_MODEL must name the deployment",
    ),
    "no transcription deployment": Mutation(
        OPENAI_MODEL,
        "  name: transcriptionDeploymentName\n",
        "  name: 'transcribe'\n",
        "backends",
        "no deployment",
    ),
    # telemetry: exported once, as whole traces, with the app's identity
    "traces rate-limited": Mutation(
        FUNCTION_APP,
        "OTEL_TRACES_SAMPLER: 'microsoft.fixed_percentage'",
        "OTEL_TRACES_SAMPLER: 'microsoft.rate_limited'",
        "telemetry",
        "OTEL_TRACES_SAMPLER: must be 'microsoft.fixed_percentage'",
    ),
    "a tenth of the traces": Mutation(
        FUNCTION_APP,
        "OTEL_TRACES_SAMPLER_ARG: '1.0'",
        "OTEL_TRACES_SAMPLER_ARG: '0.1'",
        "telemetry",
        "OTEL_TRACES_SAMPLER_ARG: must be '1.0'",
    ),
    "web framework spans": Mutation(
        FUNCTION_APP,
        DISABLED_INSTRUMENTATIONS,
        DISABLED_INSTRUMENTATIONS.replace("fastapi,", ""),
        "telemetry",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: must be",
    ),
    "every logger collected": Mutation(
        FUNCTION_APP, LOGGER_NAME, "", "telemetry", "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: must be"
    ),
    "another logger collected": Mutation(
        FUNCTION_APP,
        LOGGER_NAME,
        LOGGER_NAME.replace("realtime_speech", "azure"),
        "telemetry",
        "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: must be 'realtime_speech'",
    ),
    "sessions not from the memory": Mutation(
        MAIN,
        "MAX_CONCURRENT_SESSIONS: string(maxConcurrentSessions)",
        "MAX_CONCURRENT_SESSIONS: '16'",
        "scale",
        "MAX_CONCURRENT_SESSIONS must be string(maxConcurrentSessions)",
    ),
    "more sessions than the memory holds": Mutation(
        MAIN,
        "instanceMemoryMB / 128",
        "instanceMemoryMB / 64",
        "scale",
        "maxConcurrentSessions must be instanceMemoryMB / 128",
    ),
    "exporter without Entra auth": Mutation(
        FUNCTION_APP,
        "'ClientId=${identityClientId};Authorization=AAD'",
        "'ClientId=${identityClientId}'",
        "telemetry",
        "must say Authorization=AAD",
    ),
    "exporter with another identity": Mutation(
        FUNCTION_APP,
        "'ClientId=${identityClientId};Authorization=AAD'",
        "'Authorization=AAD'",
        "telemetry",
        "ClientId must be ${identityClientId}",
    ),
}


def mutated(file: str, old: str, new: str) -> Templates:
    """The templates with one edit; the edited text must occur exactly once."""
    texts = template_texts()
    assert texts[file].count(old) == 1, f"the mutation's text must occur once in {file}: {old!r}"
    texts[file] = texts[file].replace(old, new)
    return Templates.parse(texts)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_rules_catch(name: str) -> None:
    mutation = MUTATIONS[name]
    problems = RULES[mutation.check](mutated(mutation.file, mutation.old, mutation.new))
    assert any(mutation.problem in problem for problem in problems), problems


def test_every_security_rule_has_a_mutation() -> None:
    assert set(SECURITY_RULES) <= {mutation.check for mutation in MUTATIONS.values()}
    assert set(RULES) <= {mutation.check for mutation in MUTATIONS.values()}


def test_settings_check_catches_a_setting_missing_from_the_sample(trees: Trees) -> None:
    sample = set(sample_values()) - {"AUDIO_BLOCK_SIZE_BYTES"}
    problems = settings_problems(trees, setting_names(), sample)
    assert problems == ["AUDIO_BLOCK_SIZE_BYTES: read by the code, missing from local.settings.sample.json"]


def test_settings_check_catches_a_host_setting_missing_from_the_sample(trees: Trees) -> None:
    sample = set(sample_values()) - {"PYTHON_ENABLE_INIT_INDEXING"}
    problems = setting_name_problems(trees, setting_names(), sample)
    assert problems == [
        "PYTHON_ENABLE_INIT_INDEXING: a host setting the app needs, missing from local.settings.sample.json"
    ]


def test_settings_check_reads_new_code_settings(trees: Trees) -> None:
    problems = settings_problems(trees, setting_names() | {"AUDIO_FORMAT"}, set(sample_values()))
    assert problems == [
        "AUDIO_FORMAT: read by the code, missing from local.settings.sample.json",
        "AUDIO_FORMAT: read by the code, missing from the Bicep app settings",
    ]


@pytest.mark.parametrize(
    ("worker_setting", "host", "holds"),
    [
        ("'true'", {"telemetryMode": "OpenTelemetry"}, True),
        ("'true'", {}, False),
        ("'false'", {"telemetryMode": "OpenTelemetry"}, False),
        ("'false'", {}, True),
    ],
)
def test_telemetry_check_needs_the_host_and_the_worker_to_agree(
    worker_setting: str, host: dict[str, str], holds: bool
) -> None:
    setting = "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n"
    texts = template_texts()
    texts[FUNCTION_APP] = texts[FUNCTION_APP].replace(setting, setting.replace("'true'", worker_setting))
    trees = {**load_templates().trees, FUNCTION_APP: parse_text(texts[FUNCTION_APP])}
    assert (telemetry_problems(trees, host) == []) is holds
