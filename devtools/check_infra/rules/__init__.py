"""The rules the templates must keep, by name; each returns its problems (empty when the rule holds)."""

from __future__ import annotations

from collections.abc import Callable

from ..templates import Problems, Templates
from .api_versions import api_version_problems
from .backends import check_backends
from .defaults import check_defaults
from .function_app import function_app_problems
from .keyless import local_auth_problems, secret_problems
from .naming import naming_problems
from .openai_pool import openai_pool_problems
from .roles import role_problems
from .scale import scale_problems
from .settings import check_settings, check_telemetry
from .storage import storage_problems

Rule = Callable[[Templates], Problems]

SETTINGS_RULES: dict[str, Rule] = {
    "settings": check_settings,
    "defaults": check_defaults,
    "backends": check_backends,
    "telemetry": check_telemetry,
}
SECURITY_RULES: dict[str, Rule] = {
    "storage": storage_problems,
    "local_auth": local_auth_problems,
    "roles": role_problems,
    "openai_pool": openai_pool_problems,
    "function_app": function_app_problems,
    "api_versions": api_version_problems,
    "secrets": secret_problems,
}
RULES: dict[str, Rule] = {
    **SETTINGS_RULES,
    **SECURITY_RULES,
    "scale": scale_problems,
    "naming": naming_problems,
}


def rule_problems(templates: Templates) -> list[str]:
    """Every problem of every rule, each prefixed with its rule's name."""
    return [f"[{name}] {problem}" for name, rule in RULES.items() for problem in rule(templates)]
