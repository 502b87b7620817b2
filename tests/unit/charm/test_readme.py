"""README.md's config and actions tables are generated from config.yaml and actions.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.charm.helpers import ACTIONS, CONFIG_OPTIONS, ROOT

SCRIPT = ROOT / "scripts" / "gen-readme-tables.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_readme_tables_match_the_yaml_files() -> None:
    result = _run("--check")
    assert result.returncode == 0, (
        "README.md tables drifted from config.yaml/actions.yaml; run "
        f"scripts/gen-readme-tables.py\n{result.stdout}{result.stderr}"
    )
    readme = (ROOT / "README.md").read_text()
    for name in (*CONFIG_OPTIONS, *ACTIONS):
        assert f"| `{name}` |" in readme


def test_drift_is_reported_with_a_diff(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = (
        (ROOT / "README.md")
        .read_text()
        .replace("| `vm-cpu` | int | `2` |", "| `vm-cpu` | int | `4` |")
    )
    readme.write_text(text)
    result = _run("--check", "--readme", str(readme))
    assert result.returncode == 1
    assert "-| `vm-cpu` | int | `4` |" in result.stdout
    assert "+| `vm-cpu` | int | `2` |" in result.stdout
    # Without --check the tables are rewritten, the rest left as it was.
    assert _run("--readme", str(readme)).returncode == 0
    assert readme.read_text() == (ROOT / "README.md").read_text()


def test_missing_markers_fail(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# nothing generated here\n")
    result = _run("--check", "--readme", str(readme))
    assert result.returncode == 2
    assert "BEGIN GENERATED CONFIG TABLE" in result.stderr
