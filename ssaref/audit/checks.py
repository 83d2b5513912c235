"""Check primitives of the audit: shapes, derivatives, claims.

Each primitive is generic and separately tested (tests/test_audit.py): it must flag a deliberately wrong
formula and pass a correct one.

* :func:`shape_check` evaluates a formula written as a Python expression over *symbolic* matrices that carry
  only a shape, and reports every sum, product, difference, inverse and reshape whose operands do not fit;
* :func:`gradient_check` compares a claimed gradient with float64 central finite differences of the loss it
  claims to differentiate (relative error and cosine);
* :func:`claim_search` draws seeded random cases, evaluates a claimed property on each, and reports how often it
  fails and the smallest counterexample (by a size key, then by the margin of the violation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Sym",
    "ShapeResult",
    "shape_check",
    "GradResult",
    "numerical_grad",
    "gradient_check",
    "rel_error",
    "cosine",
    "ClaimResult",
    "claim_search",
]


# ---------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------
class _Ctx:
    def __init__(self):
        self.failures = []
        self.ops = 0

    def fail(self, op, a, b, why):
        self.failures.append(
            {"op": op, "left": _lab(a), "left_shape": _shp(a), "right": _lab(b), "right_shape": _shp(b), "why": why}
        )


def _lab(x):
    if isinstance(x, Sym):
        t = x.label
        return t if len(t) <= 60 else t[:57] + "..."
    return repr(x)


def _shp(x):
    if isinstance(x, Sym):
        return None if x.shape is None else list(x.shape)
    return []


class Sym:
    """A matrix known only by its shape (2-D; write vectors as (d, 1) columns).

    ``shape`` None means "undefined" (an earlier operation failed); operations on it stay undefined without
    reporting again, so every failure is reported once, where it happens.
    """

    __array_priority__ = 1000

    def __init__(self, shape, label, ctx):
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.label = label
        self.ctx = ctx

    def _new(self, shape, label):
        return Sym(shape, label, self.ctx)

    @property
    def T(self):
        return self._new(None if self.shape is None else self.shape[::-1], f"{_wrap(self.label)}^T")

    def __matmul__(self, other):
        self.ctx.ops += 1
        lab = f"{_wrap(self.label)} @ {_wrap(_lab(other))}"
        if not isinstance(other, Sym):
            self.ctx.fail("@", self, other, "matrix product with a scalar")
            return self._new(None, lab)
        if self.shape is None or other.shape is None:
            return self._new(None, lab)
        if self.shape[1] != other.shape[0]:
            self.ctx.fail("@", self, other, f"inner dimensions {self.shape[1]} != {other.shape[0]}")
            return self._new(None, lab)
        return self._new((self.shape[0], other.shape[1]), lab)

    def _same(self, other, op):
        self.ctx.ops += 1
        lab = f"{_wrap(self.label)} {op} {_wrap(_lab(other))}"
        if not isinstance(other, Sym):
            if op in ("+", "-") and other != 0:
                self.ctx.fail(op, self, other, "matrix plus a nonzero scalar")
                return self._new(None, lab)
            return self._new(self.shape, lab)
        if self.shape is None or other.shape is None:
            return self._new(None, lab)
        if self.shape != other.shape:
            self.ctx.fail(op, self, other, f"shapes {self.shape} and {other.shape} differ")
            return self._new(None, lab)
        return self._new(self.shape, lab)

    def __add__(self, other):
        return self._same(other, "+")

    def __radd__(self, other):
        return self._same(other, "+")

    def __sub__(self, other):
        return self._same(other, "-")

    def __rsub__(self, other):
        return self._same(other, "-")

    def __neg__(self):
        return self._new(self.shape, f"-{_wrap(self.label)}")

    def __mul__(self, other):
        """Scalar times matrix, or the Hadamard product of two matrices of one shape."""
        if isinstance(other, Sym):
            return self._same(other, "o")
        return self._new(self.shape, f"{other} {_wrap(self.label)}")

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, Sym):
            return self._same(other, "/")
        return self._new(self.shape, f"{_wrap(self.label)}/{other}")

    def __repr__(self):
        return f"Sym({self.label}: {self.shape})"


def _wrap(t):
    return t if all(c not in t for c in " +-@") else f"({t})"


class ShapeResult:
    """Outcome of :func:`shape_check`.

    Attributes
    ----------
    defined : bool, every operation of the expression is defined.
    shape : tuple or None, the result's shape (None when undefined).
    failures : list of dict, one per failing operation: ``op``, ``left``, ``left_shape``, ``right``,
        ``right_shape``, ``why``.
    ops : int, number of binary operations checked.
    """

    def __init__(self, defined, shape, failures, ops):
        self.defined, self.shape, self.failures, self.ops = defined, shape, failures, ops

    def first_failure(self) -> str:
        if not self.failures:
            return ""
        f = self.failures[0]
        return f"{f['left']} {f['op']} {f['right']}: {f['why']}"

    def __repr__(self):
        return f"ShapeResult(defined={self.defined}, shape={self.shape}, failures={len(self.failures)})"


def shape_check(expr, shapes) -> ShapeResult:
    """Evaluate ``expr`` over symbolic matrices of the given ``shapes`` and report which operations fail.

    Parameters
    ----------
    expr : str
        A Python expression: ``@`` matrix product, ``+``/``-`` sums of equal shapes, ``*`` scalar or Hadamard
        product, ``.T`` transpose, and the functions ``I(k)`` (k x k identity), ``inv(X)`` (needs square X),
        ``diag(X)`` (square X -> (k, 1) vector; vector (k, 1) -> (k, k)), ``sqrt(X)`` (elementwise),
        ``reshape(X, shape)`` (needs equal element counts), ``frob(X)`` (any shape -> scalar (1, 1)),
        ``colspace_angle(A, B)`` (needs the same number of rows).
    shapes : dict[str, tuple of int]
        Shape of every matrix name in ``expr``.  Integers in the dict are bound as plain numbers.

    Returns
    -------
    ShapeResult
    """
    ctx = _Ctx()
    ns: dict[str, object] = {}  # the formula's names: numbers, symbolic matrices, the functions below
    for name, shp in shapes.items():
        if isinstance(shp, (int, np.integer)):
            ns[name] = int(shp)
            continue
        if len(shp) != 2:
            raise ValueError(f"shape_check: shape of {name!r} must be 2-D (write vectors as (d, 1)), got {shp}")
        ns[name] = Sym(shp, name, ctx)

    def I(k):
        return Sym((int(k), int(k)), f"I_{int(k)}", ctx)

    def inv(X):
        ctx.ops += 1
        lab = f"inv({X.label})"
        if X.shape is not None and X.shape[0] != X.shape[1]:
            ctx.fail("inv", X, X, f"inverse of a non-square {X.shape} matrix")
            return Sym(None, lab, ctx)
        return Sym(X.shape, lab, ctx)

    def diag(X):
        ctx.ops += 1
        lab = f"diag({X.label})"
        if X.shape is None:
            return Sym(None, lab, ctx)
        if X.shape[1] == 1:
            return Sym((X.shape[0], X.shape[0]), lab, ctx)
        if X.shape[0] != X.shape[1]:
            ctx.fail("diag", X, X, f"diagonal of a non-square {X.shape} matrix")
            return Sym(None, lab, ctx)
        return Sym((X.shape[0], 1), lab, ctx)

    def sqrt(X):
        return Sym(X.shape, f"sqrt({X.label})", ctx)

    def frob(X):
        return Sym(None if X.shape is None else (1, 1), f"||{X.label}||", ctx)

    def reshape(X, shape):
        ctx.ops += 1
        shape = tuple(int(s) for s in shape)
        lab = f"reshape({X.label}, {shape})"
        if X.shape is None:
            return Sym(None, lab, ctx)
        if math.prod(X.shape) != math.prod(shape):
            ctx.fail(
                "reshape",
                X,
                Sym(shape, str(shape), ctx),
                f"{math.prod(X.shape)} entries cannot fill {shape} ({math.prod(shape)} entries)",
            )
            return Sym(None, lab, ctx)
        return Sym(shape if len(shape) == 2 else (math.prod(shape), 1), lab, ctx)

    def colspace_angle(A, B):
        ctx.ops += 1
        lab = f"angle(col {A.label}, col {B.label})"
        if A.shape is None or B.shape is None:
            return Sym(None, lab, ctx)
        if A.shape[0] != B.shape[0]:
            ctx.fail("colspace_angle", A, B, f"column spaces lie in R^{A.shape[0]} and R^{B.shape[0]}")
            return Sym(None, lab, ctx)
        return Sym((1, 1), lab, ctx)

    ns.update(I=I, inv=inv, diag=diag, sqrt=sqrt, frob=frob, reshape=reshape, colspace_angle=colspace_angle)
    try:
        out = eval(compile(expr, "<formula>", "eval"), {"__builtins__": {}}, ns)  # noqa: S307 (own formulas)
    except NameError as exc:
        raise ValueError(f"shape_check: {exc} in formula {expr!r}; give its shape in `shapes`") from None
    shape = out.shape if isinstance(out, Sym) else ()
    defined = not ctx.failures
    return ShapeResult(defined, shape if defined else None, ctx.failures, ctx.ops)


# ---------------------------------------------------------------------------------------------------
# derivatives
# ---------------------------------------------------------------------------------------------------
def rel_error(a, b) -> float:
    """``||a - b|| / max(||a||, ||b||)`` (0 when both vanish)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    den = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)))
    return 0.0 if den == 0.0 else float(np.linalg.norm(a - b)) / den


def cosine(a, b) -> float:
    """Cosine between two arrays as flat vectors (eq. (4)); nan if either vanishes."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"cosine: arrays have {a.size} and {b.size} entries")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(a @ b) / (na * nb)


def numerical_grad(f, x, eps=1e-6):
    """Central-difference gradient of the scalar function ``f`` at the float64 array ``x`` (any shape)."""
    x = np.array(x, dtype=np.float64, order="C")  # a C-contiguous copy: ``flat`` below is a view of it
    g = np.empty_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(f(x))
        flat[i] = old - eps
        fm = float(f(x))
        flat[i] = old
        gf[i] = (fp - fm) / (2.0 * eps)
    return g


@dataclass
class GradResult:
    """Outcome of :func:`gradient_check`: relative error and cosine of the claimed gradient vs finite differences,
    the ratio of norms ``||claimed|| / ||fd||``, and whether ``rel_err <= tol``."""

    rel_err: float
    cosine: float
    norm_ratio: float
    ok: bool
    fd: np.ndarray = field(repr=False)  # the finite-difference gradient


def gradient_check(f, grad, x, eps=1e-6, tol=1e-6) -> GradResult:
    """Compare ``grad`` (the claimed gradient of ``f`` at ``x``) with central finite differences of ``f``.

    Parameters
    ----------
    f : callable, array of ``x``'s shape -> float (evaluated in float64).
    grad : array of ``x``'s shape, the claimed gradient at ``x``.
    x : array, the (generic) point.
    eps : float, the difference step.
    tol : float, the largest relative error that counts as a match.
    """
    x = np.asarray(x, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if grad.shape != x.shape:
        raise ValueError(f"gradient_check: the claimed gradient has shape {grad.shape}, the variable {x.shape}")
    fd = numerical_grad(f, x, eps)
    r = rel_error(grad, fd)
    nf = float(np.linalg.norm(fd))
    ratio = float(np.linalg.norm(grad)) / nf if nf > 0 else float("inf")
    return GradResult(r, cosine(grad, fd), ratio, bool(r <= tol), fd)


# ---------------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------------
@dataclass
class ClaimResult:
    """Outcome of :func:`claim_search`.

    n : cases drawn; fails : cases where the claim is false; fail_rate : fails / n;
    smallest : the smallest counterexample (the case's numbers plus ``margin``), None if none failed;
    worst_margin : the largest violation margin seen (0 if none).
    """

    n: int
    fails: int
    fail_rate: float
    smallest: dict | None
    worst_margin: float

    @property
    def holds(self) -> bool:
        return self.fails == 0


def claim_search(sample_fn, predicate, n, seed=0, size_fn=None) -> ClaimResult:
    """Seeded random search for counterexamples of a claimed property.

    Parameters
    ----------
    sample_fn : callable, ``rng -> case`` (a dict of numbers and arrays).
    predicate : callable, ``case -> (holds: bool, margin: float)``; ``margin`` > 0 measures how far a failing
        case is from satisfying the claim (a bare bool is accepted, margin 1).
    n : int, cases to draw.
    seed : int
    size_fn : callable, ``case -> number`` (e.g. total dimension); the smallest counterexample minimises
        ``(size, -margin)``.  Default: every case has size 0.

    Returns
    -------
    ClaimResult; ``smallest`` holds the case with arrays turned into nested lists.
    """
    rng = np.random.default_rng(seed)
    fails, best, best_key, worst = 0, None, None, 0.0
    for _ in range(int(n)):
        case = sample_fn(rng)
        res = predicate(case)
        ok, margin = (res, 1.0) if isinstance(res, (bool, np.bool_)) else (bool(res[0]), float(res[1]))
        if ok:
            continue
        fails += 1
        worst = max(worst, abs(margin))
        key = (size_fn(case) if size_fn else 0, -abs(margin))
        if best_key is None or key < best_key:
            best_key, best = key, dict(case, margin=margin)
    if best is not None:
        best = {
            k: (np.round(np.asarray(v, dtype=np.float64), 6).tolist() if isinstance(v, np.ndarray) else v)
            for k, v in best.items()
        }
    return ClaimResult(int(n), fails, fails / max(1, int(n)), best, worst)
