"""Settings consistency: the settings the code reads, local.settings.sample.json and the Bicep app
settings are one set, apart from the settings listed here with the reason they differ."""

from __future__ import annotations

import json
from typing import Any

from realtime_speech import telemetry_setup
from realtime_speech.settings import setting_names

from ..parsing import REPO_ROOT
from ..templates import (
    FUNCTION_APP,
    MAIN,
    Problems,
    Templates,
    Trees,
    modules_using,
    render,
    resources,
    variable,
)

SAMPLE_SETTINGS = REPO_ROOT / "local.settings.sample.json"
HOST_JSON = REPO_ROOT / "host.json"

# Settings that exist only on a developer's machine (Core Tools, the local stand-ins), never in Azure.
LOCAL_ONLY_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "AzureWebJobsStorage",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
}
# Code settings that are never app settings in Azure, and why.
NOT_DEPLOYED_SETTINGS = {
    "AZURE_OPENAI_API_KEY": "keyless deployment: the app uses its managed identity",
    "AZURE_OPENAI_ENDPOINT": "AZURE_OPENAI_BACKENDS replaces it",
    "AZURE_OPENAI_DEPLOYMENT_NAME": "AZURE_OPENAI_BACKENDS replaces it",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "the OTLP exporter is the alternative to Application Insights",
}
# Settings of the Functions host the code does not read, in the Bicep and the sample alike, and their values.
HOST_SETTINGS = {"PYTHON_ENABLE_INIT_INDEXING": "1"}  # the HTTP streams extension on Python 3.11 and 3.12
# With this setting the Python worker exports the app's telemetry itself; the host must then be in
# OpenTelemetry mode, or it sends the worker's logs to Application Insights a second time.
WORKER_TELEMETRY_SETTING = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
# What the worker's azure-monitor-opentelemetry distro then needs, and why (docs/observability.md).
WORKER_TELEMETRY_SETTINGS = {
    # the one logger it collects: the app's (the default, the root logger, also collects the SDKs'
    # records and the exporter's own, so that exporting produces telemetry)
    "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME": telemetry_setup.LOGGER_NAME,
    # whole traces, all of them (the distro's default limits spans per second, not traces)
    "OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage",
    "OTEL_TRACES_SAMPLER_ARG": "1.0",
    # every instrumentation but the Azure SDK's, as the app turns off in its own pipeline
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(telemetry_setup._OTHER_INSTRUMENTATIONS),
}
LIST_SETTINGS = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"}  # compared as sets of names
# Settings of the Functions host and the platform that only the Bicep has.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    WORKER_TELEMETRY_SETTING,
    *WORKER_TELEMETRY_SETTINGS,
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


def bicep_app_settings(trees: Trees) -> dict[str, Any]:
    """Every app setting the templates give the function app: main's `appSettings` + the host's."""
    return {**variable(trees[MAIN], "appSettings"), **variable(trees[FUNCTION_APP], "hostSettings")}


def sample_values() -> dict[str, str]:
    return json.loads(SAMPLE_SETTINGS.read_text(encoding="utf-8"))["Values"]


def settings_problems(trees: Trees, code: set[str], sample: set[str]) -> Problems:
    return setting_name_problems(trees, code, sample) + settings_resource_problems(trees)


def setting_name_problems(trees: Trees, code: set[str], sample: set[str]) -> Problems:
    """Each setting is where it belongs: the code's in the sample and (unless not deployed) the Bicep."""
    problems = Problems()
    bicep = set(bicep_app_settings(trees))
    for name in sorted(code - sample):
        problems.append(f"{name}: read by the code, missing from local.settings.sample.json")
    for name in sorted(sample - code - LOCAL_ONLY_SETTINGS - set(HOST_SETTINGS)):
        problems.append(f"{name}: in local.settings.sample.json, but the code does not read it")
    for name in sorted(code - set(NOT_DEPLOYED_SETTINGS) - bicep):
        problems.append(f"{name}: read by the code, missing from the Bicep app settings")
    for name in sorted(bicep - code - PLATFORM_SETTINGS - set(HOST_SETTINGS)):
        problems.append(f"{name}: a Bicep app setting the code does not read")
    for name in sorted(bicep & set(NOT_DEPLOYED_SETTINGS)):
        problems.append(f"{name}: must not be an app setting in Azure ({NOT_DEPLOYED_SETTINGS[name]})")
    for name in sorted(bicep & FLEX_REJECTED_SETTINGS):
        problems.append(f"{name}: not allowed as an app setting on Flex Consumption")
    for name in sorted(set(HOST_SETTINGS) - bicep):
        problems.append(f"{name}: a host setting the deployment needs, missing from the Bicep app settings")
    for name in sorted(set(HOST_SETTINGS) - sample):
        problems.append(f"{name}: a host setting the app needs, missing from local.settings.sample.json")
    return problems


def settings_resource_problems(trees: Trees) -> Problems:
    """The function app's appsettings resource applies both objects, and main passes its settings."""
    problems = Problems()
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


def host_setting_problems(trees: Trees, sample: dict[str, str]) -> Problems:
    """The host settings have their required values in the Bicep and in the sample."""
    problems = Problems()
    bicep = bicep_app_settings(trees)
    for name, expected in HOST_SETTINGS.items():
        for where, value in (("the Bicep app settings", bicep.get(name)), ("the sample", sample.get(name))):
            problems.expect(
                value is None or value == expected, f"{name}: must be {expected!r} in {where}, is {value!r}"
            )
    return problems


def telemetry_problems(trees: Trees, host: dict[str, Any]) -> Problems:
    """The worker exports the app's telemetry only with the host in OpenTelemetry mode (host.json), and
    then exports it once, as whole traces, with the managed identity."""
    problems = Problems()
    bicep = bicep_app_settings(trees)
    worker_exports = bicep.get(WORKER_TELEMETRY_SETTING) == "true"
    mode = str(host.get("telemetryMode", "")).lower()
    problems.expect(
        worker_exports == (mode == "opentelemetry"),
        f"{WORKER_TELEMETRY_SETTING} is {bicep.get(WORKER_TELEMETRY_SETTING)!r} but host.json's telemetryMode"
        f" is {host.get('telemetryMode')!r}: both or neither must select OpenTelemetry",
    )
    problems.expect(
        "PYTHON_ENABLE_OPENTELEMETRY" not in bicep,
        "PYTHON_ENABLE_OPENTELEMETRY selects the OTLP exporter, which the deployment does not use",
    )
    if worker_exports:
        problems += worker_telemetry_problems(bicep)
    return problems


def worker_telemetry_problems(bicep: dict[str, Any]) -> Problems:
    """The distro's settings have their values, and its exporter authenticates with the app's identity
    (the worker passes it no credential: the exporter reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING)."""
    problems = Problems()
    for name, expected in WORKER_TELEMETRY_SETTINGS.items():
        value = bicep.get(name)
        same = (
            isinstance(value, str) and _names(value) == _names(expected)
            if name in LIST_SETTINGS
            else value == expected
        )
        problems.expect(same, f"{name}: must be {expected!r} when the worker exports, is {value!r}")
    authentication = bicep.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    try:
        client_id = telemetry_setup.EntraAuthentication.parse(str(authentication)).client_id
    except ValueError as exc:
        problems.append(f"APPLICATIONINSIGHTS_AUTHENTICATION_STRING is {authentication!r}: {exc}")
    else:
        problems.expect(
            client_id == "${identityClientId}",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING: ClientId must be ${identityClientId}"
            " (the app's identity)",
        )
    return problems


def _names(value: str) -> set[str]:
    return {name.strip() for name in value.split(",") if name.strip()}


def check_settings(templates: Templates) -> Problems:
    sample = sample_values()
    return settings_problems(templates.trees, setting_names(), set(sample)) + host_setting_problems(
        templates.trees, sample
    )


def check_telemetry(templates: Templates) -> Problems:
    return telemetry_problems(templates.trees, json.loads(HOST_JSON.read_text(encoding="utf-8")))
