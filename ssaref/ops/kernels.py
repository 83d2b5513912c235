"""Elementwise formulas written once, in a C subset: one fused CuPy kernel on a device, ufuncs on NumPy.

On a GPU a training step of a small network is bound by kernel launches, not by arithmetic: Adam alone is
thirteen elementwise passes per parameter when written as ufuncs with ``out=``.  Here every such chain is one
``Kernel``: on a device it is a ``cupy.ElementwiseKernel`` (``launch``), built once per array module and cached
(CuPy compiles it on the first call for each dtype and keeps the binary).

The optimisers' updates (``adam``, ``sgd``) are *the* statement of their arithmetic: on NumPy, ``evaluate`` runs
the same body as a sequence of ufunc calls with ``out=`` (``program``: one call per operation of the body, in the
body's order, into the statement's target or a preallocated scratch array), so the two paths execute one formula
and the NumPy path allocates no temporary.  The other kernels (BatchNorm, retraction, ``sym``, Hoyer) replace a
NumPy sequence kept in their own module (named in each entry) and evaluate *the same operations in the same order*.
On the tests' stand-in, which executes the bodies with NumPy, the paths agree bit for bit; on a GPU they agree to
rounding (the CUDA compiler may contract ``a * b + c`` into an FMA, and CuPy compiles with ``-ftz=true``: float32
denormals are flushed to zero; docs/decisions.md D6).

The bodies are written in a restricted C subset that is also Python once the trailing ``;`` are stripped, so
that ``evaluate`` and ``tests/_strictxp.py`` can execute them:

* statements ``name = expr;`` (an output parameter) or ``T name = expr;`` (a local of a declared type);
* expressions of parameter and local names with ``+ - * /``, unary ``-``, parentheses and ``sqrt(...)``;
* no numeric literals (C would read ``1.5`` as a double and ``1`` as an int, Python neither): every constant is
  a parameter, so it takes the declared type ``T`` (the parameters' dtype, as a NumPy ufunc casts a Python
  float), no integers, no comparisons, no ternaries.

Parameters follow CuPy: ``"T x, T y"`` (``T`` a type placeholder bound by the array arguments; a Python scalar
argument is cast to it), inputs read-only, outputs read-write (an output passed in is updated in place; all
outputs omitted: they are allocated with the broadcast shape).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "Kernel",
    "enabled",
    "launch",
    "Program",
    "program",
    "evaluate",
    "adam",
    "sgd",
    "BN_SQDEV",
    "BN_STATS",
    "BN_NORMALISE",
    "BN_GRAD_INPUT",
    "NEWTON_SCHULZ",
    "EIGEN_SCALE",
    "SYM",
    "HOYER_GRAD",
    "PROBE",
    "catalogue",
]


@dataclass(frozen=True)
class Kernel:
    """One elementwise kernel: CuPy's ``ElementwiseKernel(in_params, out_params, body, name)``."""

    name: str
    in_params: str
    out_params: str
    body: str


def enabled(xp) -> bool:
    """Whether ops on ``xp`` arrays use the fused kernels: a device module with ``ElementwiseKernel`` (CuPy, the
    tests' stand-in).  NumPy runs ufuncs instead (``evaluate`` for the optimiser updates)."""
    return xp is not np and hasattr(xp, "ElementwiseKernel")


_BUILT: dict = {}  # (array module, Kernel) -> xp.ElementwiseKernel


def launch(xp, kernel: Kernel, *args):
    """Run ``kernel`` on ``args`` (inputs, then optionally every output) with ``xp``'s ``ElementwiseKernel``,
    built on first use; returns what CuPy returns (the output, or a tuple of outputs)."""
    k = _BUILT.get((xp, kernel))
    if k is None:
        k = _BUILT[(xp, kernel)] = xp.ElementwiseKernel(kernel.in_params, kernel.out_params, kernel.body, kernel.name)
    return k(*args)


# -------------------------------------------------------------------------------------------- the NumPy path
_UFUNCS = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide"}
_FUNCTIONS = {"sqrt": "sqrt"}
_STATEMENT = re.compile(r"^(?:(?P<type>[A-Za-z_]\w*)\s+)?(?P<name>[A-Za-z_]\w*)\s*=\s*(?P<expr>[^=].*)$", re.S)


@dataclass(frozen=True)
class Program:
    """A kernel body as ufunc calls: ``steps`` are ``(function, argument slots, output slot)``, the function an
    ``xp`` name (``"copyto"``: ``xp.copyto(out, arg)``; any other: ``xp.<name>(*args, out=out)``).  Slots number
    the kernel's inputs, then its outputs, then ``n_scratch`` scratch arrays (each of the outputs' shape)."""

    steps: tuple[tuple[str, tuple[int, ...], int], ...]
    n_scratch: int


def _param_names(spec: str) -> list[str]:
    return [part.split()[-1] for part in spec.split(",") if part.strip()]


class _Compiler:
    """Turns a body into a ``Program``.  Each operation of the body becomes one ufunc call, in the body's order
    (operands left before right), so the values are the body's, elementwise, in the outputs' dtype.  A value goes
    into the statement's target when nothing evaluated after it reads the target's old value, else into a scratch
    array, free again once its value is used; a local ``T x = expr;`` holds a scratch array until its last use (a
    local that names an input is that input's array: inputs are const)."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        ins, outs = _param_names(kernel.in_params), _param_names(kernel.out_params)
        self.slots = {name: k for k, name in enumerate(ins + outs)}
        self.inputs, self.outputs = set(ins), set(outs)
        self.first_scratch = len(self.slots)
        self.free: list[int] = []  # scratch slots free for a temporary
        self.temps: set[int] = set()  # scratch slots holding a temporary now
        self.owned: dict[str, int] = {}  # local -> the scratch slot it holds
        self.n_scratch = 0
        self.steps: list[tuple[str, tuple[int, ...], int]] = []

    def error(self, what: str) -> ValueError:
        return ValueError(f"kernel {self.kernel.name}: {what} (the restricted C subset of ssaref.ops.kernels)")

    def scratch(self) -> int:
        if self.free:
            self.free.sort()
            return self.free.pop(0)
        self.n_scratch += 1
        return self.first_scratch + self.n_scratch - 1

    def release(self, *slots: int) -> None:
        for s in slots:
            if s in self.temps:
                self.temps.discard(s)
                self.free.append(s)

    def reads(self, node: ast.expr) -> set[int]:
        return {self.slots[n.id] for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in self.slots}

    def value(self, node: ast.expr, dest: int | None, live: set[int]) -> int:
        """Emit the calls computing ``node``; the slot holding its value.  ``dest``, if given, may be written (its
        old value is read by nothing in ``live``, the slots read after this value is made, nor by ``node`` after
        the write); ``None``: a scratch array."""
        if isinstance(node, ast.Name):
            if node.id not in self.slots:
                raise self.error(f"{node.id!r} is not a parameter or an earlier local")
            return self.slots[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _UFUNCS:
            later = self.reads(node.right)
            a = self.value(node.left, dest if dest is not None and dest not in later else None, live | later)
            b = self.value(node.right, dest if dest != a else None, live | {a})
            return self.emit(_UFUNCS[type(node.op)], (a, b), dest, live)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return self.emit("negative", (self.value(node.operand, dest, live),), dest, live)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
            and not node.keywords
        ):
            return self.emit(_FUNCTIONS[node.func.id], (self.value(node.args[0], dest, live),), dest, live)
        raise self.error(f"{ast.unparse(node)!r} is outside the subset (names, + - * /, unary -, sqrt(); no literals)")

    def emit(self, function: str, args: tuple[int, ...], dest: int | None, live: set[int]) -> int:
        """One call ``function(*args)`` into ``dest`` or, for ``None``, into an operand's temporary that nothing
        in ``live`` reads, else into a fresh scratch array; operands' temporaries not in ``live`` are freed."""
        if dest is None:
            dest = next((s for s in args if s in self.temps and s not in live), None)
            if dest is None:
                dest = self.scratch()
                self.temps.add(dest)
        self.steps.append((function, args, dest))
        self.release(*(s for s in args if s != dest and s not in live))
        return dest

    def parse(self, raw: str) -> tuple[str | None, str, ast.expr]:
        m = _STATEMENT.match(raw.strip())
        if m is None:
            raise self.error(f"{raw.strip()!r} is not 'name = expr' or 'TYPE name = expr'")
        try:
            expr = ast.parse(m.group("expr").strip(), mode="eval").body
        except SyntaxError as exc:
            raise self.error(f"{raw.strip()!r}: {exc.msg}") from None
        return m.group("type"), m.group("name"), expr

    def statement(self, declared: str | None, target: str, expr: ast.expr) -> None:
        if declared is not None:  # a local
            if target in self.slots:
                raise self.error(f"{target!r} is already declared")
            if isinstance(expr, ast.Name) and expr.id in self.inputs:
                self.slots[target] = self.slots[expr.id]  # a const array under a second name
                return
            slot = self.scratch()  # held until the local's last use
            if isinstance(expr, ast.Name):
                source = self.value(expr, None, set())
                self.steps.append(("copyto", (source,), slot))
                self.release(source)
            else:
                self.value(expr, slot, set())
            self.slots[target] = self.owned[target] = slot
            return
        if target not in self.outputs:
            raise self.error(f"assigns {target!r}, which is not an output or a local (inputs are const)")
        slot = self.slots[target]
        if isinstance(expr, ast.Name):
            source = self.value(expr, None, set())
            if source != slot:
                self.steps.append(("copyto", (source,), slot))
            self.release(source)
        else:
            self.value(expr, slot, set())

    def compile(self) -> Program:
        body = self.kernel.body.strip()
        if body and not body.endswith(";"):
            raise self.error("every statement ends with ';'")
        statements = [self.parse(raw) for raw in body.split(";") if raw.strip()]
        last_use: dict[str, int] = {}  # name -> index of the last statement reading it
        for k, (_, _, expr) in enumerate(statements):
            last_use.update((n.id, k) for n in ast.walk(expr) if isinstance(n, ast.Name))
        for k, (declared, target, expr) in enumerate(statements):
            # a local read for the last time here is a temporary of this statement: used up, its array is free
            self.temps.update(s for name, s in self.owned.items() if last_use.get(name) == k)
            self.statement(declared, target, expr)
            if declared is not None and target in self.owned and last_use.get(target, -1) <= k:
                self.free.append(self.owned[target])  # a local nothing reads
        return Program(tuple(self.steps), self.n_scratch)


_PROGRAMS: dict = {}  # Kernel -> Program


def program(kernel: Kernel) -> Program:
    """``kernel``'s body compiled to ufunc calls (cached); ``ValueError`` for a body outside the subset."""
    p = _PROGRAMS.get(kernel)
    if p is None:
        p = _PROGRAMS[kernel] = _Compiler(kernel).compile()
    return p


_RUNNERS: dict = {}  # (array module, Kernel) -> (number of arguments, Program, [(function, operands, out)])


def evaluate(xp, kernel: Kernel, args, scratch) -> None:
    """Run ``kernel`` on ``args`` (its inputs, then every output, updated in place) with ``xp``'s ufuncs and
    ``out=``: ``program(kernel)``'s calls, with ``scratch`` (at least ``program(kernel).n_scratch`` arrays of the
    outputs' shape and dtype) for the intermediate values, so nothing the size of an output is allocated.  The
    arrays share one dtype, and every operation has an array operand (a Python scalar takes the array's dtype,
    as in the kernel, where it is cast to ``T``)."""
    runner = _RUNNERS.get((xp, kernel))
    if runner is None:
        prog = program(kernel)
        copy = lambda src, *, out: xp.copyto(out, src)
        calls: list[tuple[Callable[..., object], int, int, int]] = [  # (function, operand, operand or -1, out)
            (copy if f == "copyto" else getattr(xp, f), ops[0], ops[1] if len(ops) == 2 else -1, out)
            for f, ops, out in prog.steps
        ]
        n = len(_param_names(kernel.in_params)) + len(_param_names(kernel.out_params))
        runner = _RUNNERS[(xp, kernel)] = (n, prog, calls)
    n, prog, calls = runner
    if len(args) != n or len(scratch) < prog.n_scratch:
        raise ValueError(
            f"kernel {kernel.name}: evaluate takes {n} arguments (every output given) and {prog.n_scratch} "
            f"scratch arrays, got {len(args)} and {len(scratch)}"
        )
    env = [*args, *scratch]
    for function, a, b, out in calls:
        if b < 0:
            function(env[a], out=env[out])
        else:
            function(env[a], env[b], out=env[out])


# -------------------------------------------------------------------------------------------- optimisers
# Adam and AdamW (optim.Adam), torch.optim.Adam / torch.optim.AdamW (single-tensor) term by term: per parameter p
# with update g, its own step count t (the updates p received) and learning rate lr,
#   p = p (1 - lr wd)                                              (AdamW, "decoupled")
#   g = g + wd p                                                   (Adam's L2 term, "l2")
#   m = beta1 m + (1 - beta1) g,  computed as m + (g - m)(1 - beta1)   (torch: m.lerp_(g, 1 - beta1))
#   v = beta2 v + (1 - beta2) g^2
#   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
# with c1 = 1 - beta1, b2 = beta2, c2 = 1 - beta2, bc2 = sqrt(1 - beta2^t), step = lr / (1 - beta1^t) and
# decay = 1 - lr wd.  This body is the update's one statement: NumPy runs it as ufuncs (evaluate), a device as
# one kernel (launch).
_ADAM_MOMENTS = """
m = m + ({g} - m) * c1;
v = v * b2 + {g} * {g} * c2;
p = p - m / (sqrt(v) / bc2 + eps) * step;
"""
_ADAM_IN = "T c1, T b2, T c2, T bc2, T eps, T step"
_ADAM = {
    "none": Kernel("ssaref_adam", "T g, " + _ADAM_IN, "T p, T m, T v", _ADAM_MOMENTS.format(g="g")),
    "l2": Kernel(
        "ssaref_adam_l2", "T g, T wd, " + _ADAM_IN, "T p, T m, T v", "T gw = p * wd + g;" + _ADAM_MOMENTS.format(g="gw")
    ),
    "decoupled": Kernel(
        "ssaref_adamw", "T g, T decay, " + _ADAM_IN, "T p, T m, T v", "p = p * decay;" + _ADAM_MOMENTS.format(g="g")
    ),
}


def adam(decay: str) -> Kernel:
    """The Adam update for weight decay ``decay`` in {"none", "l2", "decoupled"}: arguments
    ``(g, [wd | 1 - lr wd,] 1 - beta1, beta2, 1 - beta2, sqrt(1 - beta2^t), eps, lr / (1 - beta1^t), p, m, v)``."""
    return _ADAM[decay]


# SGD (optim.SGD), torch.optim.SGD term by term -- the update's one statement, as Adam's above:
#   d = g + wd p;  buf = d (first update) or momentum buf + (1 - dampening) d;
#   p = p - lr (d + momentum buf) (Nesterov), p - lr buf (momentum), p - lr d (plain)
_SGD_DECAY = {False: "T d = g;", True: "T d = p * wd + g;"}
_SGD_BUF = {"first": "buf = d;", "later": "buf = buf * mom + d;", "damped": "buf = buf * mom + d * damp;"}
_SGD_APPLY = {
    "plain": "p = p - d * lr;",
    "momentum": "p = p - buf * lr;",
    "nesterov": "p = p - d * lr;\np = p - buf * lrmom;",
}


def sgd(decay: bool, buf: str | None, apply: str) -> Kernel:
    """The SGD update: ``decay`` (weight decay on), ``buf`` in {None, "first", "later", "damped"} (the momentum
    buffer's update this step: none, its initialisation, ``momentum buf + d`` or ``momentum buf + (1 - dampening)
    d``), ``apply`` in {"plain", "momentum", "nesterov"}.  Arguments ``(g, wd, lr, p)`` without momentum, else
    ``(g, wd, mom, 1 - dampening, lr, lr * momentum, p, buf)``.  ``buf=None`` goes with ``"plain"`` only (the
    other two read the buffer; a kernel without it would not compile): any other pairing is a ``ValueError``."""
    if (buf is None) != (apply == "plain"):  # momentum/Nesterov read the buffer; plain SGD has none
        raise ValueError(
            f"kernels.sgd: apply={apply!r} with buf={buf!r}: momentum and nesterov need a buffer "
            "update ('first', 'later' or 'damped'), plain SGD takes none"
        )
    body = _SGD_DECAY[decay] + "\n" + ("" if buf is None else _SGD_BUF[buf] + "\n") + _SGD_APPLY[apply]
    name = f"ssaref_sgd_{'wd_' if decay else ''}{buf or 'nobuf'}_{apply}"
    if buf is None:
        return Kernel(name, "T g, T wd, T lr", "T p", body)
    return Kernel(name, "T g, T wd, T mom, T damp, T lr, T lrmom", "T p, T buf", body)


# ------------------------------------------------------------------------------------------ batch norm
# norm.batchnorm_forward: the squared deviations (x - mean)^2, the biased variance's summands
BN_SQDEV = Kernel("ssaref_bn_sqdev", "T x, T mean", "T sq", "T xc = x - mean;\nsq = xc * xc;")
# the running statistics and 1/sqrt(var + eps), per channel:
#   new_mean = (1 - momentum) running_mean + momentum mean
#   new_var  = (1 - momentum) running_var + momentum var n/(n - 1);   inv_std = 1 / sqrt(var + eps)
BN_STATS = Kernel(
    "ssaref_bn_stats",
    "T rm, T rv, T mean, T var, T keep, T mom, T unbias, T eps, T one",
    "T new_mean, T new_var, T inv_std",
    "new_mean = keep * rm + mom * mean;\nnew_var = keep * rv + mom * (var * unbias);\ninv_std = one / sqrt(var + eps);",
)
# xhat = (x - mean) inv_std;  y = gamma xhat + beta
BN_NORMALISE = Kernel(
    "ssaref_bn_normalise",
    "T x, T mean, T inv_std, T gamma, T beta",
    "T xhat, T y",
    "xhat = (x - mean) * inv_std;\ny = xhat * gamma + beta;",
)
# norm.batchnorm_backward_input (train): dx = gamma inv_std (dy - mean(dy) - xhat mean(dy xhat)), the means
# taken from the per-channel sums dbeta = sum(dy), dgamma = sum(dy xhat) over the count values of a channel
# (``n`` and ``i`` are reserved names in CuPy kernels)
BN_GRAD_INPUT = Kernel(
    "ssaref_bn_grad_input",
    "T dy, T xhat, T dbeta, T dgamma, T count, T scale",
    "T dx",
    "dx = (dy - dbeta / count - xhat * (dgamma / count)) * scale;",
)

# ------------------------------------------------------------------------------------------ linear algebra
# linalg.retract, one Newton-Schulz step towards the polar factor, Y <- Y (a I - b G) with a = 3/2, b = 1/2,
# G = Y^T Y, written as Y <- a Y - b (Y G) (no identity matrix; the same product up to rounding)
NEWTON_SCHULZ = Kernel("ssaref_newton_schulz", "T Y, T YG, T a, T b", "T Z", "Z = a * Y - b * YG;")
# linalg.retract's exact step far from the manifold, Y <- Y Q diag(1/sqrt(w)) Q^T (eigh of the Gram matrix):
# the scaled eigenvectors Q diag(1/sqrt(w))
EIGEN_SCALE = Kernel("ssaref_eigen_scale", "T Q, T w, T one", "T Z", "Z = Q * (one / sqrt(w));")
# linalg.sym: (M + M^T) / 2, with Mt = M.T (a strided view)
SYM = Kernel("ssaref_sym", "T M, T Mt, T half", "T S", "S = half * (M + Mt);")
# linalg.hoyer_grad: d(||s||_1 / ||s||_2)/ds = sign(s) / ||s||_2 - ||s||_1 s / ||s||_2^3, from sg = sign(s),
# n1 = ||s||_1 = sign(s) . s and n2sq = ||s||_2^2 = s . s
HOYER_GRAD = Kernel(
    "ssaref_hoyer_grad", "T sg, T s, T n1, T n2sq", "T h", "T n2 = sqrt(n2sq);\nh = sg / n2 - n1 / (n2 * n2 * n2) * s;"
)

# ------------------------------------------------------------------------------------------ backend probe
# backend.resolve_backend: before choosing CuPy, compile and run this (NVRTC, the CUDA headers and a launch work)
PROBE = Kernel("ssaref_probe", "T x", "T y", "y = x * x;")


def catalogue() -> list:
    """Every kernel the engine can build: the three Adam kernels, every valid SGD combination and the module's
    constants (BatchNorm, retraction, Hoyer, the backend's probe).  ``tests/test_kernels_nvrtc.py`` compiles each
    one with CuPy's code generator and NVRTC, and checks that the engine's call sites reach each one."""
    out = [adam(d) for d in _ADAM]
    for decay in (False, True):
        out.append(sgd(decay, None, "plain"))
        out += [sgd(decay, buf, apply) for buf in _SGD_BUF for apply in ("momentum", "nesterov")]
    out += [BN_SQDEV, BN_STATS, BN_NORMALISE, BN_GRAD_INPUT, NEWTON_SCHULZ, EIGEN_SCALE, SYM, HOYER_GRAD, PROBE]
    return out
