"""The known-good versions (constraints.txt) and the README's two commands agree with pyproject.toml and CI."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin"
            pins[_norm(name)] = version
    return pins


def _requirements():
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for name, extra in project["optional-dependencies"].items():
        if name != "gpu-cuda13":   # not locked: its CUDA 13 toolkit wheels conflict with the gpu extra's (.ci/lock)
            reqs += [Requirement(r) for r in extra]
    return reqs


@pytest.mark.parametrize("req", [r for r in _requirements() if r.marker is None], ids=str)
def test_every_declared_dependency_is_pinned_within_its_range(req):
    pins = _pins()
    if _norm(req.name) == "torch":   # pinned exactly in pyproject.toml; a lock must not name a build (+cpu)
        assert str(req.specifier) == "==2.13.0" and "torch" not in pins
        return
    assert _norm(req.name) in pins, f"{req.name} is not in constraints.txt: regenerate it with .ci/lock"
    assert req.specifier.contains(Version(pins[_norm(req.name)]), prereleases=True), \
        f"constraints.txt pins {req.name}=={pins[_norm(req.name)]}, outside pyproject.toml's {req.specifier}"


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_two_commands_and_both_install_the_known_good_versions():
    install, test = _quick_start_commands()[:2]
    assert "pip install -c constraints.txt -e ." in install and install.endswith("python -m ssaref.train")
    assert 'pip install -c constraints.txt -e ".[test]"' in test and test.endswith("python -m pytest -q")


def test_ci_runs_the_readme_commands_in_its_own_venv():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_cmd 0" in ci and "readme_cmd 1" in ci and "rm -rf .venv" in ci
    assert "pip install -e" not in ci.replace("-c constraints.txt -e", "")   # every install uses the lock
