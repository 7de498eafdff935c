"""The function app of a dev host that the benchmarks start (`python -m devtools.devhost --app
benchmarks.hosted_app`): `function_app` imported from the app root being measured (the setting
`BENCH_APP_ROOT`), not from the checkout the host runs in, so `--app-ref` and `--app-root` apply to
the host-based benchmarks as well."""

from __future__ import annotations

import importlib
import os
import sys

sys.path.insert(0, os.environ["BENCH_APP_ROOT"])  # benchmarks.run.APP_ROOT_SETTING
app = importlib.import_module("function_app").app
