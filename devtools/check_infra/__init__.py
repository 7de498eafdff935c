"""Offline checks of the deployment: the Bicep templates under infra/ and the settings around them.

    python -m devtools.check_infra             # parse, check module wiring and the rules, run checkov
    python -m devtools.check_infra --install   # only create/update checkov's virtualenv

- `parsing`: two independent parsers read every file: pycep (the parser checkov itself builds on; gives
  the tree the rules read) and the tree-sitter Bicep grammar (reports syntax errors pycep may let through);
- `wiring`: modules get exactly the parameters they declare, and only outputs they have are read;
- `templates`: the parsed templates and helpers to read them;
- `rules`: settings consistency, security invariants, scale limits and naming, each a function of the
  parsed templates that returns its problems (so a test can show each one failing on a broken template);
- `checkov`: checkov, run from its own virtualenv, `.devstate/iac-venv` (or `$IAC_VENV`), created on first
  use from `infra/requirements-iac.txt`, because its pinned dependencies clash with the app's.
"""
