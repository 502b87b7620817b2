#!/usr/bin/env python3
# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""Render config.yaml and actions.yaml as the Markdown tables in README.md.

The tables live between `<!-- BEGIN GENERATED CONFIG TABLE -->` / `<!-- END GENERATED CONFIG
TABLE -->` and `<!-- BEGIN GENERATED ACTIONS TABLE -->` / `<!-- END GENERATED ACTIONS TABLE -->`;
everything else in README.md is left alone.

Usage:
    scripts/gen-readme-tables.py            # rewrite the tables in README.md
    scripts/gen-readme-tables.py --check    # exit 1 and print a diff when README.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS_LINE = re.compile(r"^Results: (.+)\.$", re.MULTILINE)


def _cell(text: str) -> str:
    """One table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "" or value is None:
        return "*(empty)*"
    return f"`{value}`"


def config_table(config: dict[str, Any]) -> str:
    """The options of a config.yaml, in file order."""
    lines = ["| Option | Type | Default | Description |", "|---|---|---|---|"]
    for name, spec in config.get("options", {}).items():
        lines.append(
            f"| `{name}` | {spec.get('type', '')} | {_default(spec.get('default'))} "
            f"| {_cell(spec.get('description', ''))} |"
        )
    return "\n".join(lines)


def actions_table(actions: dict[str, Any]) -> str:
    """The actions of an actions.yaml, in file order; results come from "Results: a, b."."""
    lines = ["| Action | Parameters | Results | Description |", "|---|---|---|---|"]
    for name, spec in actions.items():
        description = spec.get("description", "")
        match = RESULTS_LINE.search(description)
        results = ", ".join(f"`{key}`" for key in match.group(1).split(", ")) if match else ""
        description = RESULTS_LINE.sub("", description)
        params = "<br>".join(
            f"`{param}` ({detail.get('type', 'any')}, default {_default(detail.get('default'))}): "
            f"{_cell(detail.get('description', ''))}"
            for param, detail in (spec.get("params") or {}).items()
        )
        lines.append(f"| `{name}` | {params or '—'} | {results} | {_cell(description)} |")
    return "\n".join(lines)


def _replace_between(text: str, name: str, table: str) -> str:
    begin, end = f"<!-- BEGIN GENERATED {name} TABLE -->", f"<!-- END GENERATED {name} TABLE -->"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise LookupError(f"README has no {begin} ... {end} markers")
    return f"{text[: start + len(begin)]}\n{table}\n{text[stop:]}"


def render(readme: str, root: Path = ROOT) -> str:
    """README text with both tables regenerated from the YAML files under `root`."""
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    actions = yaml.safe_load((root / "actions.yaml").read_text()) or {}
    readme = _replace_between(readme, "CONFIG", config_table(config))
    return _replace_between(readme, "ACTIONS", actions_table(actions))


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, verify) the README tables; 1 on drift, 2 on missing markers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail with a diff if README drifts")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)

    current = args.readme.read_text()
    try:
        wanted = render(current)
    except LookupError as err:
        print(f"{args.readme}: {err}", file=sys.stderr)
        return 2
    if current == wanted:
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            fromfile=f"{args.readme} (current)",
            tofile=f"{args.readme} (from config.yaml and actions.yaml)",
        )
        sys.stdout.writelines(diff)
        print("\nREADME tables are stale: run scripts/gen-readme-tables.py", file=sys.stderr)
        return 1
    args.readme.write_text(wanted)
    print(f"{args.readme}: tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
