"""The rule interface keeps its promise (rules/base.py).

* Outside ``ssaref/rules/`` no module imports a private name from ``ssaref.rules``, touches an underscore
  attribute of a rule, or branches on a rule's name string (an AST scan of ``ssaref/`` and ``validation/``,
  shown to fail on planted violations).
* Every registered rule runs through the training CLI (with alignment logging), the checkpoint round trip
  (a resumed run equals an uninterrupted one), golden export and matrix alignment, through the interface alone.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ssaref import train as train_mod
from ssaref.metrics import matrix_alignment
from ssaref.nn import build_model
from ssaref.rules import RULES, build_rule
from ssaref.rules.base import Rule
from ssaref.run import build_run
from ssaref.runlog import read_run

sys.path.insert(0, os.path.dirname(__file__))

ROOT = Path(__file__).resolve().parents[1]
RULE_NAMES = frozenset(RULES)
# identifiers that hold a rule's or method's name: comparing one of them with a rule name string is branching on
# the rule's identity
_NAMEISH = {"name", "method", "rule", "rule_name", "method_name", "rname", "meth"}


def _strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_strings(e) for e in node.elts)) if node.elts else set()
    return set()


def _ident(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_rule_ref(node):
    """A Name or Attribute whose identifier says it is a rule (``rule``, ``self.rule``, ``run.rule``, ``r_ssa``)."""
    return "rule" in _ident(node).lower()


def interface_violations(source, filename="<src>"):
    """``[(line, what)]``: the ways ``source`` reaches into the rules other than through their interface."""
    tree = ast.parse(source, filename)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if "rules" in parts and (node.level > 0 or parts[0] == "ssaref"):
                private = [p for p in parts[parts.index("rules") + 1:] if p.startswith("_")]
                if private:
                    out.append((node.lineno, f"imports from private module {'.'.join(parts)}"))
                out += [(node.lineno, f"imports private name {a.name}") for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[:2] == ["ssaref", "rules"] and any(p.startswith("_") for p in parts[2:]):
                    out.append((node.lineno, f"imports private module {a.name}"))
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and not node.attr.startswith("__") and _is_rule_ref(node.value):
                out.append((node.lineno, f"private attribute {_ident(node.value)}.{node.attr}"))
        elif isinstance(node, ast.Call) and _ident(node.func) in ("getattr", "hasattr", "setattr") and node.args:
            if (_is_rule_ref(node.args[0]) and len(node.args) > 1
                    and any(s.startswith("_") for s in _strings(node.args[1]))):
                out.append((node.lineno, f"{_ident(node.func)} of a private rule attribute"))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = set().union(*(_strings(o) for o in operands)) & RULE_NAMES
            if named and any(_ident(o) in _NAMEISH or _is_rule_ref(o) for o in operands):
                out.append((node.lineno, f"branches on rule name(s) {sorted(named)}"))
        elif isinstance(node, ast.match_case):
            named = _strings(getattr(node.pattern, "value", None)) & RULE_NAMES
            if named:
                out.append((node.pattern.lineno, f"matches on rule name(s) {sorted(named)}"))
    return out


def _outside_rules():
    files = [p for p in (ROOT / "ssaref").rglob("*.py") if "rules" not in p.relative_to(ROOT / "ssaref").parts[:1]]
    return sorted(files + list((ROOT / "validation").rglob("*.py")))


def test_no_module_outside_rules_reaches_into_a_rule():
    files = _outside_rules()
    assert len(files) > 30 and not any(p.parent.name == "rules" for p in files)
    found = {str(p.relative_to(ROOT)): v for p in files if (v := interface_violations(p.read_text(), str(p)))}
    assert found == {}


@pytest.mark.parametrize("planted, what", [
    ("from ssaref.rules.sign import _init_std\n", "private name"),
    ("from .rules._local import LocalRule\n", "private module"),
    ("import ssaref.rules._local\n", "private module"),
    ("def f(rule, m):\n    return rule._segments(m)\n", "private attribute"),
    ("def f(self):\n    return self.rule._projection\n", "private attribute"),
    ("def f(rule):\n    return getattr(rule, '_last', None)\n", "private rule attribute"),
    ("def f(rule):\n    if rule.name == 'ssa':\n        return 1\n", "branches on rule name"),
    ("def f(args):\n    return args.method in ('fa', 'usf')\n", "branches on rule name"),
    ("def f(name):\n    match name:\n        case 'dfa':\n            return 1\n", "matches on rule name"),
])
def test_the_scan_catches_planted_violations(planted, what):
    v = interface_violations(planted)
    assert v and any(what in msg for _, msg in v), v


def test_the_scan_passes_interface_use():
    ok = ("from ssaref.rules import build_rule\nfrom .rules.base import Rule\n"
          "def f(rule, model, name):\n    if name == 'mlp':\n        pass\n"
          "    return rule.alignment_pairs(model), rule.name, rule.__class__\n")
    assert interface_violations(ok) == []


def test_no_rule_overrides_step():
    """``step`` is the same for every rule: labels reach ``updates`` through ``batch``."""
    assert {n for n, cls in RULES.items() if cls.step is not Rule.step} == set()


def test_every_rule_declares_its_error_transport(monkeypatch):
    """The step cost model reads each rule's declared ``ERROR_TRANSPORT`` (ssaref/cost.py keeps no list of rule
    names); a rule that declares none is refused there rather than costed as some other rule."""
    from ssaref import cost

    mlp = lambda: build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(12, 10), dtype=np.float64)  # noqa: E731
    for name in RULES:
        assert cost.error_transport(name) in cost.TRANSPORTS, name
        run = build_run(mlp(), name, np.random.default_rng(2), optimizer=None)
        assert sum(o["flops"] for o in cost.step_cost(run.model, name, 4, (1, 8, 8), rule=run.rule)) > 0, name

    class Undeclared(Rule):
        name = "undeclared"

    monkeypatch.setitem(RULES, "undeclared", Undeclared)
    with pytest.raises(ValueError, match="declares ERROR_TRANSPORT ''"):
        cost.step_cost(mlp(), "undeclared", 4, (1, 8, 8))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        cost.error_transport("nope")


def test_declared_error_transport_is_what_the_step_does(monkeypatch):
    """A rule's ``ERROR_TRANSPORT`` (which the cost model trusts) matches its step: the outermost error pass a
    step calls is ``chain_updates`` ("chain"), ``direct_updates`` ("direct") or ``local_updates`` with auxiliary
    networks ("local"); "two_forwards" calls none of them and runs the rule's forward pass twice."""
    import importlib
    import pkgutil

    import ssaref.rules as R

    passes = ("chain_updates", "direct_updates", "local_updates")
    outer, depth = [], [0]

    def counted(fn_name, fn):
        def wrapper(*a, **k):
            if depth[0] == 0:
                outer.append(fn_name)
            depth[0] += 1
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1

        return wrapper

    for info in pkgutil.iter_modules(R.__path__):
        mod = importlib.import_module(f"ssaref.rules.{info.name}")
        for fn_name in passes:
            if callable(getattr(mod, fn_name, None)):
                monkeypatch.setattr(mod, fn_name, counted(fn_name, getattr(mod, fn_name)))
    expected = {"chain": ["chain_updates"], "direct": ["direct_updates"], "local": ["local_updates"]}
    expected["two_forwards"] = []
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 8, 8)), rng.integers(0, 10, 4)
    for name, cls in RULES.items():
        model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(12, 10), dtype=np.float64)
        # SSA's eq. (4) angle logging runs BP's chain as a measurement, not as its transport: switched off here
        options = {"angle_every": 0} if "angle_every" in cls.OPTIONS else None
        run = build_run(model, name, np.random.default_rng(2), options=options, optimizer=None)
        forwards = []
        inner_forward = run.rule.forward
        run.rule.forward = lambda m, xx: forwards.append(1) or inner_forward(m, xx)  # type: ignore[method-assign]
        outer.clear()
        run.rule.step(run.model, x, y)
        assert outer == expected[cls.ERROR_TRANSPORT], (name, cls.ERROR_TRANSPORT, outer)
        assert len(forwards) == (2 if cls.ERROR_TRANSPORT == "two_forwards" else 1), (name, len(forwards))
        assert bool(run.rule.aux_networks()) == (cls.ERROR_TRANSPORT == "local"), name


def test_every_rule_declares_its_summary_and_readme_lists_it():
    """README's table of rules is generated from the registry and each rule's ``SUMMARY`` (``python -m
    tests.gen_tables --docs``), which the rule declares in its own module (KP must not inherit FA's line)."""
    import gen_tables as G

    for name, cls in RULES.items():
        owner = next(k for k in cls.__mro__ if "SUMMARY" in vars(k))
        assert cls.SUMMARY and owner.__module__ == cls.__module__, f"{name}: declare SUMMARY in {cls.__module__}"
    readme = G.README.read_text(encoding="utf-8")
    block = G.committed_block(readme, "rules")
    assert block == G.render_rules(), f"README.md's rules table: run {G.COMMAND} --docs"
    for name in RULES:  # the committed block, not the renderer's own output, names every registered rule
        assert f"`{name}`" in block, name


# -------------------------------------------------------------------------------------- every registered rule
SYN = ["--dataset", "synthetic", "--train-limit", "96", "--test-limit", "48", "--batch-size", "32", "--hidden",
       "12,10", "--no-progress", "--no-download", "--lr", "3e-3", "--align-every", "1"]


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_trains_logs_alignment_and_resumes_exactly(name, tmp_path, capsys):
    common = SYN + ["--method", name]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert train_mod.main(common + ["--epochs", "2", "--out", str(full)]) == 0, capsys.readouterr().err
    assert train_mod.main(common + ["--epochs", "1", "--out", str(part)]) == 0
    assert train_mod.main(common + ["--epochs", "2", "--resume", str(part)]) == 0, capsys.readouterr().err
    config, m_full, ck_full = read_run(full)
    _, m_part, ck_part = read_run(part)
    for k in ("train_loss", "test_acc"):
        np.testing.assert_array_equal(m_full[k], m_part[k], err_msg=k)
    for group in ("params", "rule_state", "optimizer"):
        assert set(ck_full[group]) == set(ck_part[group]), group
        for k, v in ck_full[group].items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(ck_part[group][k]), err_msg=f"{group}/{k}")
    # alignment logging: an eq. (4) angle per weight layer, every epoch
    grad = m_full["align.grad_mean"]
    assert grad.shape == (2, len(config["align_layers"])) and np.isfinite(grad).any()
    # and a signal angle: the training loop has the rule keep its signals on the recording steps (rules/base.py)
    assert np.isfinite(m_full["align.signal_mean"]).any()
    # a rule that declares alignment pairs gets matrix-alignment columns
    rule = build_rule(name)
    model = rule.setup(build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(12, 10)), np.random.default_rng(2))
    ma = matrix_alignment(rule, model)
    assert set(ma) == {f"{v}/{p.key}" for p in rule.alignment_pairs(model) for v in ("flat", "principal")}
    assert bool(rule.alignment_pairs(model)) == np.isfinite(m_full["align.matrix_flat"]).any()


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_exports_golden_vectors(name, tmp_path):
    from ssaref import vectors

    for model in vectors.MODELS:
        if not vectors.supports(name, model):
            continue
        path = tmp_path / f"{name}__{model}.h5"
        vectors.write_case(str(path), vectors.compute_case(name, model, "default"))
        assert vectors.validate_file(path) == [], (name, model)
    assert vectors.supports(name, "mlp")


@pytest.mark.parametrize("name", sorted(RULES))
def test_learnable_arrays_are_optimised_and_restored_in_place(name):
    """A rule's learnables reach the optimiser through build_run, get a direction every step, and a checkpoint
    restore writes into the very arrays the optimiser holds."""
    model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(12, 10), dtype=np.float64)
    run = build_run(model, name, np.random.default_rng(2), optimizer="sgd", lr=0.1, momentum=0.0)
    items = run.rule.learnable(run.model)
    assert set(run.optimizer.keys) == {k for k, _ in run.model.named_params()} | {i.key for i in items}
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8))
    y = np.arange(8) % 10
    before = {i.key: i.array.copy() for i in items}
    res = run.train_step(x, y)
    for i in items:
        assert i.key in res.updates and run.rule.state[i.key] is i.array
        np.testing.assert_allclose(i.array, before[i.key] - 0.1 * res.updates[i.key], rtol=0, atol=1e-15)
    saved = run.rule.state_dict()
    for i in items:
        i.array[...] = 0.0
    run.rule.load_state_dict(saved, np)
    for i in items:
        assert run.optimizer.param(i.key) is run.rule.state[i.key]
        np.testing.assert_array_equal(run.optimizer.param(i.key), saved[i.key])
