"""Independent PyTorch candidates for the golden vectors (docs/golden-vectors.md).

Written from the published formulas -- eqs. (2), (3), (7) of the SSA paper, Lillicrap et al.'s FA, the
sign-concordant variants, DRTP, PEPITA's Algorithm 1, and SSA's / SVD-BP's update as documented in
docs/decisions.md and the ``ssaref/rules/ssa.py`` docstring -- in float64 with ``torch.nn.functional``.
A candidate reads only a golden file (inputs, layer kinds, geometry, parameters, feedback, options) and never
imports ssaref.  ``write_candidate`` writes the candidate's answer in the golden schema.

Local gradients ("the layer's own weight-gradient op for a given signal at the output of layer k1") are taken
with ``torch.autograd.grad`` through the layers k0..k1 recomputed from the (detached) input of layer k0; the
feedback-alignment transport ``dx = dy B`` replaces autograd's ``dx = dy W`` through a custom Function.

``wrong`` deliberately breaks one coefficient (used by the tests to prove the checker can fail):
``"ssa_align"`` uses ``beta (U - B_U)`` instead of ``2 beta (U - B_U)`` (eq. (8)'s derivative);
``"ortho"`` uses ``2 gamma`` instead of ``4 gamma`` in the orthogonality gradient (eq. (9));
``"dfa_scale"`` forgets the batch mean of the output error (eq. (7)) in the DFA projection.
"""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import torch
import torch.nn.functional as F

SCHEMA = "ssaref-golden/1"
DT = torch.float64
SUPPORTED = ("bp", "fa", "kp", "dfa", "usf", "brsf", "frsf", "drtp", "pepita", "svd-bp", "ssa")


# ------------------------------------------------------------------------------------------------
# reading a golden file
# ------------------------------------------------------------------------------------------------
def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_golden(path):
    """Everything a candidate may read: attrs, options, x, y, layers (kind, geometry, arrays), feedback."""
    with h5py.File(path, "r") as f:
        g = {"attrs": {k: _attr(v) for k, v in f.attrs.items()}}
        g["options"] = json.loads(g["attrs"]["options"])
        g["x"] = torch.tensor(f["input/x"][()], dtype=DT)
        g["y"] = torch.tensor(f["input/y"][()], dtype=torch.int64)
        layers = []
        for k in range(len(f["layers"])):
            grp = f[f"layers/{k}"]
            layers.append({"attrs": {a: _attr(v) for a, v in grp.attrs.items()},
                           "arrays": {n: torch.tensor(grp[n][()], dtype=DT) for n in grp}})
        g["layers"] = layers
        g["feedback"] = ({n: torch.tensor(f[f"feedback/{n}"][()], dtype=DT) for n in f["feedback"]}
                         if "feedback" in f else {})
    return g


PARAMS = ("W", "b", "U", "s", "V")


def make_params(g):
    """Leaf tensors (requires_grad) of every layer's parameters: ``[{name: tensor}]``."""
    return [{n: a.clone().requires_grad_(True) for n, a in L["arrays"].items() if n in PARAMS}
            for L in g["layers"]]


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------
class _FALinear(torch.autograd.Function):
    """``y = x W^T + b``; backward: ``dx = dy B`` (B replaces W), ``dW = dy^T x``, ``db = sum dy``."""

    @staticmethod
    def forward(ctx, x, W, b, B):
        ctx.save_for_backward(x, B)
        return F.linear(x, W, b)

    @staticmethod
    def backward(ctx, dy):
        x, B = ctx.saved_tensors
        return dy @ B, dy.T @ x, dy.sum(0), None


class _FAConv(torch.autograd.Function):
    """Convolution whose input gradient is the transposed convolution with kernel B instead of W."""

    @staticmethod
    def forward(ctx, x, W, b, B, stride, padding):
        ctx.save_for_backward(x, W, B)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, W, b, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        x, W, B = ctx.saved_tensors
        dx = torch.nn.grad.conv2d_input(x.shape, B, dy, ctx.stride, ctx.padding)
        dW = torch.nn.grad.conv2d_weight(x, W.shape, dy, ctx.stride, ctx.padding)
        return dx, dW, dy.sum((0, 2, 3)), None, None, None


def svd_matrix(p):
    """``U diag(s) V^T`` (eq. (5))."""
    return (p["U"] * p["s"]) @ p["V"].T


def matrix_kernel(M, a):
    """Kernel (N, C, kh, kw) from the SVD conv matrix K' (N*kw, C*kh), K'[n*kw + w, c*kh + h] = K[n, c, h, w]."""
    (kh, kw), N, C = a["kernel"], a["out_channels"], a["in_channels"]
    return M.reshape(N, kw, C, kh).permute(0, 2, 3, 1)


def layer_forward(L, p, h, B=None, M=None):
    """Output of layer ``L`` (dict from ``load_golden``) with parameters ``p`` on input ``h``.

    ``B``: feedback used in place of W in the error transport (FA family); ``M``: a leaf standing for the
    reconstructed matrix of an SVD layer (to take dL/dW of it).
    """
    a = L["attrs"]
    kind = a["kind"]
    if kind == "linear":
        if B is not None:
            return _FALinear.apply(h, p["W"], p["b"], B)
        return F.linear(h, p["W"], p.get("b"))
    if kind == "conv2d":
        st, pd = tuple(a["stride"]), tuple(a["padding"])
        if B is not None:
            return _FAConv.apply(h, p["W"], p["b"], B, st, pd)
        return F.conv2d(h, p["W"], p.get("b"), st, pd)
    if kind == "svd_linear":
        return F.linear(h, svd_matrix(p) if M is None else M, p.get("b"))
    if kind == "svd_conv2d":
        K = matrix_kernel(svd_matrix(p) if M is None else M, a)
        return F.conv2d(h, K, p.get("b"), tuple(a["stride"]), tuple(a["padding"]))
    if kind == "relu":
        return F.relu(h)
    if kind == "maxpool2d":
        return F.max_pool2d(h, tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))
    if kind == "flatten":
        return h.reshape(h.shape[0], -1)
    raise ValueError(f"candidate has no layer kind {kind!r}")


def forward_all(g, P, x, **kw):
    outs, h = [], x
    for L, p in zip(g["layers"], P):
        h = layer_forward(L, p, h, **kw)
        outs.append(h)
    return outs


def cross_entropy(logits, y):
    """Mean softmax cross-entropy."""
    return -F.log_softmax(logits, dim=1).gather(1, y[:, None]).mean()


def output_error(logits, y, mean=True):
    """eq. (7): ``e = softmax(a_N) - onehot(y)``, divided by the batch size (mean reduction)."""
    e = F.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(DT)
    return e / logits.shape[0] if mean else e


def local_grads(g, P, k0, k1, h_in, signal, feedback=None, dense=False):
    """Gradients of the parameters of layers k0..k1 and the signal at each of their outputs, for ``signal``
    delivered at the output of layer k1 and carried back through these layers (autograd, or the FA transport
    for layers in ``feedback``).  ``dense``: also dL/dW of SVD layers' reconstructed matrices (key "M")."""
    feedback = feedback or {}
    h = h_in.detach()
    outs, leaves, Ms = [], [], {}
    for k in range(k0, k1 + 1):
        M = None
        if dense and g["layers"][k]["attrs"]["kind"].startswith("svd_"):
            M = Ms[k] = svd_matrix(P[k]).detach().requires_grad_(True)
        h = layer_forward(g["layers"][k], P[k], h, B=feedback.get(k), M=M)
        outs.append(h)
    for k in range(k0, k1 + 1):
        for n, t in P[k].items():
            leaves.append(((k, n), t))
    leaves += [((k, "M"), M) for k, M in Ms.items()]
    mids = outs[:-1]
    res = torch.autograd.grad(outs[-1], [t for _, t in leaves] + mids, grad_outputs=signal, allow_unused=True)
    grads = {}
    for (key, t), r in zip(leaves, res[:len(leaves)]):
        grads[key] = torch.zeros_like(t) if r is None else r
    signals = {k0 + i: r for i, r in enumerate(res[len(leaves):])}
    signals[k1] = signal
    return grads, signals


def weight_layers(g):
    return [k for k, L in enumerate(g["layers"]) if L["attrs"]["kind"] in ("linear", "conv2d", "svd_linear",
                                                                          "svd_conv2d")]


def hoyer_grad(s):
    """d(||s||_1/||s||_2)/ds = sign(s)/||s||_2 - ||s||_1 s/||s||_2^3 (section 4.4)."""
    n2 = torch.linalg.norm(s)
    return torch.sign(s) / n2 - s.abs().sum() * s / n2 ** 3


# ------------------------------------------------------------------------------------------------
# rules
# ------------------------------------------------------------------------------------------------
def _bp(g, P, outs, e):
    """eq. (2): dW_k = delta_k h_{k-1}^T, delta_{k-1} = (W_k^T delta_k) o f'(a_{k-1}); delta_N = e."""
    N = len(g["layers"]) - 1
    return local_grads(g, P, 0, N, g["x"], e)


def _sign_feedback(g, P, rule):
    """B of every weight layer above the first: FA's fixed B, s sign(W) (uSF), |R| o sign(W) (brSF, frSF)."""
    opts = g["options"]
    fb = {}
    for k in weight_layers(g)[1:]:
        L, W = g["layers"][k], P[k]["W"].detach()
        if rule in ("fa", "kp"):
            fb[k] = L["arrays"]["B"]
        elif rule == "usf":
            shape = W.shape
            rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            fi, fo = shape[1] * rf, shape[0] * rf
            s = 1.0
            if opts["usf_scaled"]:
                s = (1.0 / math.sqrt(3.0 * fi) if opts["sf_init"] == "torch_default"
                     else math.sqrt(2.0 / (fi + fo)))  # std of the init law
            fb[k] = s * torch.sign(W)
        else:
            fb[k] = L["arrays"]["R"] * torch.sign(W)
    return fb


def _kp(g, P, x, e):
    """Kolen-Pollack (Akrout et al. 2019): FA's chain with the current B; dB = dW (B kept in W's shape, so W's
    update is the transpose of Akrout's B update), both plus lambda times the array (kp_decay)."""
    N = len(g["layers"]) - 1
    fb = _sign_feedback(g, P, "kp")
    grads, signals = local_grads(g, P, 0, N, x, e, feedback=fb)
    lam = g["options"]["kp_decay"]
    for k in weight_layers(g):
        gW = grads[(k, "W")]
        if k in fb:
            grads[(k, "B")] = gW + lam * fb[k]
        grads[(k, "W")] = gW + lam * P[k]["W"].detach()
    return grads, signals


def _direct(g, P, outs, e, src, output_trained=True):
    """eq. (3): each hidden segment gets ``B_i src`` at its injection point, carried back to its weight layer;
    the output layer gets ``e``."""
    N = len(g["layers"]) - 1
    grads, signals = {}, {}
    if output_trained:
        gr, sg = local_grads(g, P, N, N, outs[N - 1], e)
        grads.update(gr), signals.update(sg)
    for k, L in enumerate(g["layers"]):
        if "inject" not in L["attrs"]:
            continue
        inj = L["attrs"]["inject"]
        B = L["arrays"]["B"]                                   # (d_i, K)
        sig = (src @ B.T).reshape(outs[inj].shape)             # B_i src per example
        gr, sg = local_grads(g, P, k, inj, outs[k - 1] if k else g["x"], sig)
        grads.update(gr), signals.update(sg)
    return grads, signals


def _pepita(g, P, x, y, logits):
    """Algorithm 1: second pass on x + F e; dW_l = (h_l - h_l^err)(h_{l-1}^err)^T / B, dW_N = e (h_{N-1}^err)^T."""
    Fm = g["feedback"]["F"]                                  # (d_0, K)
    Bsz = x.shape[0]
    e = output_error(logits, y)                              # (softmax - y*)/B
    x_err = x + ((e * Bsz) @ Fm.T).reshape(x.shape)
    with torch.no_grad():
        h = forward_all(g, P, x)
        h_err = forward_all(g, P, x_err)
    lin = weight_layers(g)
    N = len(g["layers"]) - 1
    grads, signals = {}, {}
    for j, k in enumerate(lin):
        inp = h_err[k - 1] if k > 0 else x_err
        d = e if k == N else (h[lin[j + 1] - 1] - h_err[lin[j + 1] - 1]) / Bsz
        signals[k] = d
        grads[(k, "W")] = d.T @ inp
        if "b" in P[k]:
            grads[(k, "b")] = d.sum(0)
    return grads, signals


def _ortho(X, gamma, factor=4.0):
    """d/dX gamma ||X^T X - I||^2 = 4 gamma X (X^T X - I) (eq. (9))."""
    return factor * gamma * X @ (X.T @ X - torch.eye(X.shape[1], dtype=DT))


def _svd_bp(g, P, outs, e, wrong):
    grads, signals = _bp(g, P, outs, e)
    o = g["options"]
    of = 2.0 if wrong == "ortho" else 4.0
    for k in weight_layers(g):
        U, s, V = (P[k][n].detach() for n in ("U", "s", "V"))
        grads[(k, "U")] = grads[(k, "U")] + _ortho(U, o["gamma"], of)
        grads[(k, "V")] = grads[(k, "V")] + _ortho(V, o["gamma"], of)
        if o["hoyer_active"] and o["hoyer"] > 0:
            grads[(k, "s")] = grads[(k, "s")] + o["hoyer"] * hoyer_grad(s)
    return grads, signals


def _project(X, G, how, which):
    if how == "tangent":                       # P_X(G) = G - X sym(X^T G)
        S = X.T @ G
        return G - X @ (0.5 * (S + S.T))
    if how == "complement" or (how == "paper" and which == "U"):
        return G - X @ (X.T @ G)               # (I - X X^T) G, eq. (12)
    if how == "paper":                         # eq. (13) on V^T: dV = G (I_r - V^T V)
        return G @ (torch.eye(X.shape[1], dtype=DT) - X.T @ X)
    if how == "none":
        return G
    raise ValueError(f"candidate has no projection {how!r}")


def _ssa(g, P, outs, e, wrong):
    """SSA: DFA task signal (eq. (3)); per SVD layer the local loss alpha L_CE + beta L_align + gamma L_ortho
    (eqs. (6), (8), (9)).  Default: dU = P_U(alpha G V S + 2 beta (U - B_U)) + 4 gamma U (U^T U - I), likewise
    V; ds = alpha diag(U^T G V) + 2 beta (s - B_S) (+ hoyer); db = alpha db_task.  Paper: eqs. (11)-(13)."""
    o = g["options"]
    paper = o["ssa_variant"] == "paper"
    grads, signals = _direct(g, P, outs, e, e)
    if paper:  # eqs. (11)-(13) need G = dL/dW of the reconstructed matrix
        dense, _ = _direct_dense(g, P, outs, e)
    alpha, beta, gamma = o["alpha"], o["beta"], o["gamma"]
    af = 1.0 if wrong == "ssa_align" else 2.0
    of = 2.0 if wrong == "ortho" else 4.0
    out = dict(grads)
    for k in weight_layers(g):
        A = g["layers"][k]["arrays"]
        U, s, V = (P[k][n].detach() for n in ("U", "s", "V"))
        alU, als, alV = torch.zeros_like(U), torch.zeros_like(s), torch.zeros_like(V)
        if "B_U" in A:                                   # eq. (8) on the first k_U columns
            kU = A["B_U"].shape[1]
            alU[:, :kU] = af * beta * (U[:, :kU] - A["B_U"])
            als[:kU] = af * beta * (s[:kU] - A["B_S"])
        if "B_V" in A:
            kV = A["B_V"].shape[1]
            alV[:, :kV] = af * beta * (V[:, :kV] - A["B_V"])
        oU, oV = _ortho(U, gamma, of), _ortho(V, gamma, of)
        if paper:
            G = dense[k]
            GV, GtU = G @ V, G.T @ U
            gs = (U * GV).sum(0) + als                   # eq. (11)
            gU = GV / s + alU                            # eq. (12)
            gV = GtU / s + alV                           # eq. (13), transposed
        else:
            gs = alpha * grads[(k, "s")] + als
            gU = alpha * grads[(k, "U")] + alU
            gV = alpha * grads[(k, "V")] + alV
        if o["project_ortho"]:
            dU, dV = _project(U, gU + oU, o["projection"], "U"), _project(V, gV + oV, o["projection"], "V")
        else:
            dU, dV = _project(U, gU, o["projection"], "U") + oU, _project(V, gV, o["projection"], "V") + oV
        if o["hoyer_active"] and o["hoyer"] > 0:
            gs = gs + o["hoyer"] * hoyer_grad(s)
        out[(k, "U")], out[(k, "s")], out[(k, "V")] = dU, gs, dV
        if (k, "b") in grads and not paper:
            out[(k, "b")] = alpha * grads[(k, "b")]
    return out, signals


def _direct_dense(g, P, outs, e):
    """dL/dW of every SVD layer's reconstructed matrix under SSA's task signals."""
    N = len(g["layers"]) - 1
    dense = {}
    gr, _ = local_grads(g, P, N, N, outs[N - 1], e, dense=True)
    dense[N] = gr[(N, "M")]
    for k, L in enumerate(g["layers"]):
        if "inject" in L["attrs"]:
            inj = L["attrs"]["inject"]
            sig = (e @ L["arrays"]["B"].T).reshape(outs[inj].shape)
            gr, _ = local_grads(g, P, k, inj, outs[k - 1] if k else g["x"], sig, dense=True)
            dense[k] = gr[(k, "M")]
    return dense, None


def compute(g, wrong=None):
    """The candidate's step: ``(loss, logits, outs, grads {(k, name)}, signals {k})``."""
    rule = g["attrs"]["rule"]
    if rule not in SUPPORTED:
        raise ValueError(f"candidate does not implement rule {rule!r}")
    o = g["options"]
    if o.get("loss_reduction", "mean") != "mean":
        raise ValueError("candidate implements the mean loss reduction only")
    P = make_params(g)
    x, y = g["x"], g["y"]
    with torch.no_grad():
        outs = forward_all(g, P, x)
    logits = outs[-1]
    loss = cross_entropy(logits, y)
    e = output_error(logits, y)                      # eq. (7)
    if rule == "bp":
        grads, signals = _bp(g, P, outs, e)
    elif rule in ("fa", "usf", "brsf", "frsf"):
        N = len(g["layers"]) - 1
        grads, signals = local_grads(g, P, 0, N, x, e, feedback=_sign_feedback(g, P, rule))
    elif rule == "kp":
        grads, signals = _kp(g, P, x, e)
    elif rule == "dfa":
        src = e * x.shape[0] if wrong == "dfa_scale" else e
        grads, signals = _direct(g, P, outs, e, src, o["dfa_output"] == "e")
    elif rule == "drtp":
        t = F.one_hot(y, logits.shape[1]).to(DT)     # +y*, divided by B for the mean reduction
        if o["drtp_reduction"] == "mean":
            t = t / x.shape[0]
        grads, signals = _direct(g, P, outs, e, t, o["drtp_output"] == "e")
    elif rule == "pepita":
        grads, signals = _pepita(g, P, x, y, logits)
    elif rule == "svd-bp":
        grads, signals = _svd_bp(g, P, outs, e, wrong)
    else:
        grads, signals = _ssa(g, P, outs, e, wrong)
    return loss, logits, outs, grads, signals


def write_candidate(golden_path, out_path, wrong=None):
    """Compute the candidate's step for ``golden_path`` and write it in the golden schema to ``out_path``."""
    g = load_golden(golden_path)
    loss, logits, outs, grads, signals = compute(g, wrong)
    with h5py.File(out_path, "w") as f:
        f.attrs["schema"] = SCHEMA
        for k in ("rule", "model", "variant"):
            f.attrs[k] = g["attrs"][k]
        f["forward/loss"] = loss.detach().numpy()
        f["forward/logits"] = logits.detach().numpy()
        for k, o in enumerate(outs):
            f[f"forward/{k}/out"] = o.detach().numpy()
        for k, s in signals.items():
            f[f"signal/{k}"] = s.detach().numpy()
        for (k, n), v in grads.items():
            if n in PARAMS or n == "B":   # KP's learnt feedback has an update too
                f[f"update/{k}/{n}"] = v.detach().numpy()
    return out_path
