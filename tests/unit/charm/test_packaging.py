"""What packing relies on: requirements.txt up to date, charmcraft.yaml pointing at what exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def test_requirements_txt_is_generated_from_the_lock() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-charm-requirements.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (
        "requirements.txt is stale; run scripts/gen-charm-requirements.py\n" + result.stdout
    )
    pins = {
        line.split("==")[0]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    assert {"ops", "pydantic", "redis", "pygithub", "typer", "flask", "pylxd"} <= pins
    assert not pins & {"pytest", "ruff", "mypy", "hypothesis", "moto", "coverage"}


def test_charmcraft_yaml_names_files_that_exist() -> None:
    charmcraft = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
    for name in charmcraft["parts"]["charm"]["charm-requirements"]:
        assert (ROOT / name).is_file(), name
    for path in charmcraft["parts"]["files"]["prime"]:
        assert (ROOT / path).exists(), path
    assert not {"name", "summary", "description", "config", "actions"} & set(charmcraft)
