"""The ``ssaref`` console script: each command is the ``python -m`` form of the same name."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from ssaref import __version__, commands

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_console_script_is_declared_and_points_at_the_dispatcher():
    assert _pyproject()["project"]["scripts"] == {"ssaref": "ssaref.commands:main"}


@pytest.mark.parametrize("name", sorted(commands.COMMANDS))
def test_each_command_runs_the_python_m_modules_main(name, monkeypatch):
    module = importlib.import_module(commands.COMMANDS[name][0])
    seen = []
    monkeypatch.setattr(module, "main", lambda argv=None, **kw: seen.append((list(argv), kw)) or 7)
    assert commands.main([name, "--flag", "x"]) == 7
    assert seen == [(["--flag", "x"], {"prog": "ssaref check"} if name == "check" else {})]


@pytest.mark.parametrize("name", ["train", "audit", "vectors", "bench", "plot"])
def test_each_command_module_is_the_python_m_module(name):
    # ``python -m ssaref.<name>`` runs the same main: the module path (package __main__ for audit) exists
    target = commands.COMMANDS[name][0]
    assert target in (f"ssaref.{name}", f"ssaref.{name}.__main__")


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert commands.main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'trian'" in err[0] and "train" in err[0]


def test_no_command_prints_usage_to_stderr_and_exits_2(capsys):
    assert commands.main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "usage: ssaref COMMAND" in out.err


def test_help_and_version(capsys):
    assert commands.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in commands.COMMANDS)
    assert commands.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ssaref {__version__}"


def test_subcommand_help_through_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "ssaref.commands", "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--method" in proc.stdout
