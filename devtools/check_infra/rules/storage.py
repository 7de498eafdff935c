"""Security invariants of storage: hardened accounts, private containers, audio retention."""

from __future__ import annotations

from ..templates import (
    MAIN,
    STORAGE,
    Problems,
    Templates,
    decorator,
    dig,
    modules_using,
    param_default,
    render,
    resources,
    same,
)

STORAGE_ACCOUNT = "Microsoft.Storage/storageAccounts"
STORAGE_INVARIANTS = {
    "allowSharedKeyAccess": False,
    "allowBlobPublicAccess": False,
    "minimumTlsVersion": "TLS1_2",
    "supportsHttpsTrafficOnly": True,
    "defaultToOAuthAuthentication": True,
    "allowCrossTenantReplication": False,
}


def storage_problems(templates: Templates) -> Problems:
    return (
        storage_account_problems(templates)
        + storage_module_problems(templates)
        + lifecycle_policy_problems(templates)
    )


def storage_account_problems(templates: Templates) -> Problems:
    """Every account refuses shared keys, public blobs and old TLS; every container is private."""
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
    return problems


def storage_module_problems(templates: Templates) -> Problems:
    """Both accounts come from the hardened module; only the audio one has a retention rule."""
    main, problems = templates.trees[MAIN], Problems()
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
    return problems


def lifecycle_policy_problems(templates: Templates) -> Problems:
    """The storage module's one lifecycle rule deletes block blobs under the prefixes after N days."""
    problems = Problems()
    policies = [
        r
        for r in resources(templates.trees, "Microsoft.Storage/storageAccounts/managementPolicies")
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
