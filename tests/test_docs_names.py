"""docs/internals.md names only what exists: every file it cites, every ``module.name`` and ``Class.attribute`` in
backticks whose first part is an ssaref module or class (issue 23: the document had drifted from the code)."""
import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "internals.md"


def _classes():
    """``{class name: attribute names}`` of every class defined in ssaref (methods, class-level names, fields and
    ``self.x`` assignments), read from the source."""
    out: dict = {}
    for f in (ROOT / "ssaref").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = out.setdefault(node.name, set())
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(sub.name)
                    elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                        names.add(sub.target.id)
                    elif isinstance(sub, ast.Assign):
                        for t in sub.targets:
                            if isinstance(t, ast.Name):
                                names.add(t.id)
                            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                                names.add(t.attr)
    return out


def _modules():
    """Dotted names of ssaref's modules and packages, also by their last parts (``linalg``, ``rules.base``)."""
    out = {}
    for f in (ROOT / "ssaref").rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        full = ".".join(parts)
        for i in range(len(parts)):
            out.setdefault(".".join(parts[i:]), full)
    return out


def _resolves(name, modules, classes):
    """True / False for a name that starts with an ssaref module or class; None for any other (``np.add``)."""
    parts = name.split(".")
    if parts[0] in classes and len(parts) == 2:
        return parts[1] in classes[parts[0]]
    for i in range(len(parts), 0, -1):
        mod = modules.get(".".join(parts[:i]))
        if mod is None:
            continue
        obj = importlib.import_module(mod)
        for a in parts[i:]:
            if not hasattr(obj, a):
                return isinstance(obj, type) and a in classes.get(obj.__name__, set())
            obj = getattr(obj, a)
        return True
    return None


def test_internals_names_exist():
    text = DOC.read_text(encoding="utf-8")
    ticks = re.findall(r"`([^`\n]+)`", text)
    modules, classes = _modules(), _classes()
    files = {p.name for d in ("ssaref", "validation") for p in (ROOT / d).rglob("*.py")}
    missing = []
    for t in ticks:
        for path in re.findall(r"\b(?:ssaref|tests|validation|docs)/[\w/.-]*\w", t):
            if not (ROOT / path).exists():
                missing.append(path)
        for name in re.findall(r"\b(\w+\.py)\b", t):
            if "/" not in t and name not in files:
                missing.append(name)
        m = re.match(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?(?:\s.*)?$", t.strip())
        if m and not m.group(1).endswith(".py") and _resolves(m.group(1), modules, classes) is False:
            missing.append(m.group(1))
    assert len(ticks) > 100
    assert not missing, f"docs/internals.md cites names that do not exist: {sorted(set(missing))}"


def test_the_check_can_fail():
    modules, classes = _modules(), _classes()
    assert _resolves("linalg.angle_deg", modules, classes) is True
    assert _resolves("linalg.no_such_thing", modules, classes) is False
    assert _resolves("StepResult.loss_value", modules, classes) is True
    assert _resolves("StepResult.no_such_field", modules, classes) is False
    assert _resolves("np.add.at", modules, classes) is None
