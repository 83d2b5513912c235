"""Fused elementwise kernels of the device (CuPy) path: one launch where the NumPy path makes several.

On a GPU a training step of a small network is bound by kernel launches, not by arithmetic: Adam alone is
thirteen elementwise passes per parameter when written as ufuncs with ``out=``.  Here every such chain is one
``cupy.ElementwiseKernel``, built once per array module and cached (CuPy compiles it on the first call for each
dtype and keeps the binary).  The NumPy path never uses these kernels: it keeps its ufunc sequences, whose bits
the golden vectors record.  Each kernel below evaluates *the same operations in the same order* as the NumPy
code it replaces (named in its entry), so on the tests' stand-in, which executes the bodies with NumPy, the two
paths agree bit for bit; on a GPU they agree to rounding (the CUDA compiler may contract ``a * b + c`` into an
FMA, and CuPy compiles with ``-ftz=true``: float32 denormals are flushed to zero; docs/decisions.md D6).

The bodies are written in a restricted C subset that is also Python once the trailing ``;`` are stripped, so
that ``tests/_strictxp.py`` can execute them:

* statements ``name = expr;`` (an output parameter) or ``T name = expr;`` (a local of a declared type);
* expressions of parameter and local names with ``+ - * /``, parentheses and ``sqrt(...)``;
* no numeric literals (C would read ``1.5`` as a double and ``1`` as an int, Python neither): every constant is
  a parameter, so it takes the declared type ``T`` (the parameters' dtype, as a NumPy ufunc casts a Python
  float), no integers, no comparisons, no ternaries.

Parameters follow CuPy: ``"T x, T y"`` (``T`` a type placeholder bound by the array arguments; a Python scalar
argument is cast to it), inputs read-only, outputs read-write (an output passed in is updated in place; all
outputs omitted: they are allocated with the broadcast shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Kernel",
    "enabled",
    "launch",
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
    tests' stand-in).  NumPy keeps its ufunc sequences."""
    return xp is not np and hasattr(xp, "ElementwiseKernel")


_BUILT: dict = {}  # (array module, Kernel) -> xp.ElementwiseKernel


def launch(xp, kernel: Kernel, *args):
    """Run ``kernel`` on ``args`` (inputs, then optionally every output) with ``xp``'s ``ElementwiseKernel``,
    built on first use; returns what CuPy returns (the output, or a tuple of outputs)."""
    k = _BUILT.get((xp, kernel))
    if k is None:
        k = _BUILT[(xp, kernel)] = xp.ElementwiseKernel(kernel.in_params, kernel.out_params, kernel.body, kernel.name)
    return k(*args)


# -------------------------------------------------------------------------------------------- optimisers
# Adam (optim.Adam._update):  m = m + (g - m)(1 - beta1);  v = beta2 v + (1 - beta2) g^2;
#                             p = p - lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps)
# with c1 = 1 - beta1, c2 = 1 - beta2, bc2 = sqrt(1 - beta2^t), step = lr / (1 - beta1^t).
_ADAM_MOMENTS = """
m = m + ({g} - m) * c1;
v = v * b2 + {g} * {g} * c2;
p = p - m / (sqrt(v) / bc2 + eps) * step;
"""
_ADAM_IN = "T c1, T b2, T c2, T bc2, T eps, T step"
_ADAM = {
    "none": Kernel("ssaref_adam", "T g, " + _ADAM_IN, "T p, T m, T v", _ADAM_MOMENTS.format(g="g")),
    # Adam's L2 term: the gradient is g + wd p (gw = p * wd; gw = gw + g)
    "l2": Kernel(
        "ssaref_adam_l2", "T g, T wd, " + _ADAM_IN, "T p, T m, T v", "T gw = p * wd + g;" + _ADAM_MOMENTS.format(g="gw")
    ),
    # AdamW: p = p * (1 - lr wd) first, then Adam on g
    "decoupled": Kernel(
        "ssaref_adamw", "T g, T decay, " + _ADAM_IN, "T p, T m, T v", "p = p * decay;" + _ADAM_MOMENTS.format(g="g")
    ),
}


def adam(decay: str) -> Kernel:
    """The Adam kernel for weight decay ``decay`` in {"none", "l2", "decoupled"}: arguments
    ``(g, [wd | 1 - lr wd,] 1 - beta1, beta2, 1 - beta2, sqrt(1 - beta2^t), eps, lr / (1 - beta1^t), p, m, v)``."""
    return _ADAM[decay]


# SGD (optim.SGD._update), torch.optim.SGD term by term:
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
    """The SGD kernel: ``decay`` (weight decay on), ``buf`` in {None, "first", "later", "damped"} (the momentum
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
