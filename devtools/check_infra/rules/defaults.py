"""Settings consistency: the Bicep parameters behind the app settings have the code's defaults and bounds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from annotated_types import Ge, Gt, Le
from pydantic.fields import FieldInfo

from realtime_speech.models import VOICES
from realtime_speech.settings import MP3_BITRATES_KBPS, Settings

from ..parsing import BicepTree
from ..templates import MAIN, Problems, Templates, Trees, decorator, param_default, render, variable

# Settings whose values are one of a list: the parameter's @allowed must be that list.
ALLOWED_VALUES: dict[str, tuple[Any, ...]] = {
    "REALTIME_VOICE": tuple(VOICES),
    "AUDIO_MP3_BITRATE_KBPS": MP3_BITRATES_KBPS,
}
# Settings whose deployed default differs from the code's on purpose.
DEPLOYED_DEFAULT_DIFFERS = {
    # Azure's realtime API takes the name of a transcription deployment of the resource, not a model name.
    "REALTIME_TRANSCRIPTION_MODEL": "a deployment name on Azure",
}
# Settings the deployment sets to another default than the code's, and that default: the app opens no
# spare session unless told to; a deployed instance keeps one, so its first caller skips the handshake.
DEPLOYED_DEFAULTS: dict[str, Any] = {"REALTIME_SPARE_SESSIONS": 1}


@dataclass(frozen=True)
class Source:
    """The parameter an app setting is made of: the setting is `param / scale`, unset when optional and 0."""

    param: str
    scale: int = 1
    optional: bool = False


# How main.bicep turns a parameter into a setting string (rendered expressions).
ENCODINGS: list[tuple[re.Pattern[str], dict[str, Any]]] = [
    (re.compile(r"(?:string\()?(\w+)\)?"), {}),
    (re.compile(r"<conditional>\((\w+), true, false\)"), {}),
    (re.compile(r"<conditional>\(<equals>\((\w+), 0\), , string\(\1\)\)"), {"optional": True}),
    (re.compile(r"\$\{(\w+) / 100\}\.\$\{padLeft\(string\(\1 % 100\), 2, '0'\)\}"), {"scale": 100}),
]


def settings_default_problems(trees: Trees) -> Problems:
    main, problems = trees[MAIN], Problems()
    for name, field, source in setting_sources(main):
        if name in DEPLOYED_DEFAULTS:
            problems += deployed_default_problems(main, name, source)
        elif name not in DEPLOYED_DEFAULT_DIFFERS:
            problems += default_problems(main, name, field, source)
        problems += bound_problems(main, field, source)
        if name in ALLOWED_VALUES:
            allowed, expected = decorator(main, source.param, "allowed"), list(ALLOWED_VALUES[name])
            problems.expect(
                allowed == expected, f"{source.param}: @allowed {allowed} differs from the code's {expected}"
            )
    return problems


def setting_sources(main: BicepTree) -> Iterator[tuple[str, FieldInfo, Source]]:
    """(setting, code field, source) for each app setting made of a single parameter of main.bicep."""
    for name, value in variable(main, "appSettings").items():
        field = Settings.model_fields.get(name.lower())
        if field is None:
            continue  # reported by the settings check
        rendered = render(value)
        for pattern, options in ENCODINGS:
            match = pattern.fullmatch(rendered)
            if match and match.group(1) in main["parameters"]:
                yield name, field, Source(match.group(1), **options)
                break


def default_problems(main: BicepTree, name: str, field: FieldInfo, source: Source) -> Problems:
    problems = Problems()
    default = param_default(main, source.param)
    if source.optional:
        problems.expect(
            default == 0 and field.default is None,
            f"{name}: Bicep default {default!r} ({source.param}) must be 0, unset as in the code",
        )
        return problems
    value = default / source.scale if source.scale != 1 else default
    matches = type(value) is bool if isinstance(field.default, bool) else not isinstance(value, bool)
    problems.expect(
        matches and value == field.default,
        f"{name}: Bicep default {value!r} ({source.param}) differs from the code's {field.default!r}",
    )
    return problems


def deployed_default_problems(main: BicepTree, name: str, source: Source) -> Problems:
    problems = Problems()
    default, expected = param_default(main, source.param), DEPLOYED_DEFAULTS[name]
    problems.expect(
        default == expected and type(default) is type(expected),
        f"{name}: Bicep default {default!r} ({source.param}) must be the deployed default {expected!r}",
    )
    return problems


def bound_problems(main: BicepTree, field: FieldInfo, source: Source) -> Problems:
    """The parameter's @minValue/@maxValue keep the setting within the code's bounds."""
    problems = Problems()
    ge = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    gt = next((m.gt for m in field.metadata if isinstance(m, Gt)), None)
    le = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    low, high = decorator(main, source.param, "min_value"), decorator(main, source.param, "max_value")
    low = low / source.scale if low is not None else None
    high = high / source.scale if high is not None else None
    if source.optional:
        problems.expect(low == 0, f"{source.param}: @minValue must be 0 (unset)")
    elif ge is not None:
        problems.expect(low is not None and low >= ge, f"{source.param}: @minValue must be >= {ge}")
    elif gt is not None:
        problems.expect(low is not None and low > gt, f"{source.param}: @minValue must be > {gt}")
    if le is not None:
        problems.expect(high is not None and high <= le, f"{source.param}: @maxValue must be <= {le}")
    return problems


def check_defaults(templates: Templates) -> Problems:
    return settings_default_problems(templates.trees)
