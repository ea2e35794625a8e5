"""The distribution installs one top-level import name, `antifraud`, holding the three folders."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("engine", "features", "training")


def test_every_package_folder_is_declared() -> None:
    """A new subpackage left out of pyproject.toml would be missing from the wheel."""
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "antifraud." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert declared == on_disk


def test_the_wheel_adds_only_antifraud(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("antifraud-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"antifraud"}
    assert {"antifraud/features/spec.yaml", "antifraud/features/score.lua"} <= set(names)
    console = "antifraud/engine/console/"  # the console's templates and static files are package data
    assert {
        console + "templates/base.html",
        console + "templates/partials/_csrf.html",
        console + "static/console.css",
        console + "static/console.js",
    } <= set(names)
    assert "antifraud/engine/cli.py" in names and "antifraud/training/train.py" in names
