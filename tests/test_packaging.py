"""Packaging: pyproject.toml declares ranges (xmr installs into a researcher's own CUDA
environment); the exact torch/torchvision pair of the project's machines lives in
constraints.txt, which ``make install`` applies (``pip install -c constraints.txt``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from setuptools import find_namespace_packages

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
PAIR = ("torch", "torchvision")


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower(): r for r in reqs}


def _constraints() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[req.name.lower()] = spec.version
    return out


PINNED = _constraints()


def test_pyproject_declares_ranges_not_exact_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = _requirements(project["dependencies"])
    for name in PAIR:
        assert name in deps, name
        spec = deps[name].specifier
        assert not any(s.operator in ("==", "===") for s in spec), f"{name}: exact pin {spec}"
        assert any(s.operator == ">=" for s in spec), f"{name}: no lower bound ({spec})"
        assert spec.contains(PINNED[name]), f"{name} {spec} excludes the pinned {PINNED[name]}"
    # No exact pin on any runtime dependency: each must be installable next to others' choices.
    pinned = [n for n, r in deps.items() if any(s.operator == "==" for s in r.specifier)]
    assert not pinned, pinned


def test_constraints_pin_the_machines_pair() -> None:
    assert PINNED == {"torch": "2.14.1", "torchvision": "0.29.1"}


def test_make_install_applies_the_constraints() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^CONSTRAINTS := constraints\.txt$", makefile, re.M)
    recipe = makefile.split("$(BIN)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "$(CONSTRAINTS)" in recipe.splitlines()[0]  # editing the pins reinstalls
    installs = [ln.strip() for ln in recipe.splitlines() if "pip install" in ln]
    xmr_install = [ln for ln in installs if "-e " in ln]
    assert xmr_install and all("-c $(CONSTRAINTS)" in ln for ln in xmr_install), installs
    # .ci/run installs only through make (make demo / make test depend on make install).
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install" not in ci and "make test" in ci


def test_the_launcher_plugin_is_packaged_in_the_hydra_plugins_namespace() -> None:
    """hydra/launcher=local is built by Hydra from hydra_plugins.xmr_launcher: the package must
    ship it, and hydra_plugins must stay a namespace package (an __init__.py there would hide the
    other installed plugins)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    include = tool["setuptools"]["packages"]["find"]["include"]
    packages = find_namespace_packages(where=str(REPO), include=include)
    assert "hydra_plugins.xmr_launcher" in packages and "xmr.utils" in packages
    assert not (REPO / "hydra_plugins" / "__init__.py").exists()
    assert (REPO / "hydra_plugins" / "xmr_launcher" / "__init__.py").is_file()
