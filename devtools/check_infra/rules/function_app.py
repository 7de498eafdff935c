"""Security invariants of the function app: Flex Consumption, HTTPS only, its identity for everything."""

from __future__ import annotations

from ..templates import (
    FUNCTION_APP,
    MAIN,
    Problems,
    Templates,
    dig,
    modules_using,
    param_default,
    render,
    resources,
    same,
    variable,
)

# The host settings that make the host and the SDKs use the app's identity, and their expected values.
EXPECTED_HOST_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri": "hostStorage.properties.primaryEndpoints.blob",
    "AzureWebJobsStorage__queueServiceUri": "hostStorage.properties.primaryEndpoints.queue",
    "AzureWebJobsStorage__tableServiceUri": "hostStorage.properties.primaryEndpoints.table",
    "AzureWebJobsStorage__credential": "managedidentity",
    "AzureWebJobsStorage__clientId": "identityClientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "applicationInsights.properties.ConnectionString",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=${identityClientId};Authorization=AAD",
    "AZURE_CLIENT_ID": "identityClientId",
}


def function_app_problems(templates: Templates) -> Problems:
    return (
        site_problems(templates) + deployment_storage_problems(templates) + host_settings_problems(templates)
    )


def site_problems(templates: Templates) -> Problems:
    """FC1 Linux plan; HTTPS and TLS 1.2 only; the user-assigned identity only; no basic-auth publishing."""
    app, problems = {FUNCTION_APP: templates.trees[FUNCTION_APP]}, Problems()
    (plan,) = resources(app, "Microsoft.Web/serverfarms")
    problems.expect(
        plan.body.get("sku") == {"name": "FC1", "tier": "FlexConsumption"}, f"{plan.where}: must be FC1 Flex"
    )
    problems.expect(same(plan.properties.get("reserved"), True), f"{plan.where}: must be Linux (reserved)")
    (site,) = resources(app, "Microsoft.Web/sites")
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
    tags = render(site.body.get("tags"))
    problems.expect(tags == 'union(tags, {"\'azd-service-name\'": "serviceName"})', f"{site.where}: azd tag")
    policies = {
        r.body.get("name"): r.properties.get("allow")
        for r in resources(app, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    problems.expect(
        policies == {"ftp": False, "scm": False}, f"{FUNCTION_APP}: basic-auth publishing must be off"
    )
    return problems


def deployment_storage_problems(templates: Templates) -> Problems:
    """The package comes from a container of the host account, read as the app's identity; Python 3.13."""
    app, problems = templates.trees[FUNCTION_APP], Problems()
    (site,) = resources({FUNCTION_APP: app}, "Microsoft.Web/sites")
    config = site.properties.get("functionAppConfig") or {}
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
    problems.expect(param_default(app, "pythonVersion") == "3.13", "pythonVersion must default to 3.13")
    (module,) = modules_using(templates.trees[MAIN], FUNCTION_APP).values()
    problems.expect(module["params"].get("serviceName") == "api", "main.bicep: serviceName must be 'api'")
    return problems


def host_settings_problems(templates: Templates) -> Problems:
    """The host reaches its storage and Application Insights as the app's identity."""
    host, problems = variable(templates.trees[FUNCTION_APP], "hostSettings"), Problems()
    for name, expected in EXPECTED_HOST_SETTINGS.items():
        actual = render(host.get(name))
        problems.expect(actual == expected, f"{FUNCTION_APP}: {name} must be {expected}, is {actual}")
    return problems
