"""Independent PyTorch candidates for the golden vectors (docs/golden-vectors.md).

Written from the published formulas -- eqs. (2), (3), (7) of the SSA paper, Lillicrap et al.'s FA, the
sign-concordant variants, DRTP, PEPITA's Algorithm 1, and SSA's / SVD-BP's update as documented in
docs/decisions.md and docs/golden-vectors.md -- in float64 with ``torch.nn.functional`` and ``torch.optim``.
A candidate reads only a golden file (inputs, layer kinds, geometry, parameters, feedback, options, optimiser)
and never imports ssaref.  ``candidate_fields`` computes the answer, ``write_candidate`` writes it in the golden
schema.

Local gradients ("the layer's own weight-gradient op for a given signal at the output of layer k1") are taken
with ``torch.autograd.grad`` through the layers k0..k1 recomputed from the (detached) input of layer k0; the
feedback-alignment transport ``dx = dy B`` replaces autograd's ``dx = dy W`` through a custom Function.
Multi-step cases (schema 2, root attributes ``optimizer`` and ``steps``) hand each step's directions to
``torch.optim.SGD`` / ``torch.optim.Adam`` as ``.grad`` and, for SSA with a retraction, replace ``U`` and ``V`` by
their polar factor after every optimiser step.

``wrong`` deliberately makes one mistake (the tests use it to prove the checker and the coverage claims):
every term of ``TERMS`` (the coverage vocabulary of docs/golden-vectors.md) names one mistake, e.g.
``"gamma"``: ``2 gamma`` instead of ``4 gamma`` in the orthogonality gradient (eq. (9)); ``"s_inverse"``: S and
S^-1 swapped in SSA's task term.  Older names: ``"ssa_align"`` = ``"beta"``, ``"ortho"`` = ``"gamma"``, and
``"dfa_scale"``: DFA's projection (only) without the batch mean of eq. (7).
"""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import torch
import torch.nn.functional as F

DT = torch.float64
PARAMS = ("W", "b", "U", "s", "V")
# the mistakes ``wrong`` can make; the names are the coverage terms of docs/golden-vectors.md
TERMS = ("batch_mean", "inject", "feedback", "usf_scale", "drtp_target", "pepita_error", "kp_decay", "alpha",
         "alpha_bias", "alpha_paper", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier",
         "hoyer_paper", "projection", "s_inverse", "momentum", "adam_bias", "retraction", "retract_every",
         "predsim_beta", "similarity_std", "last_module", "feedback_conv", "paper_no_retract", "paper_retract_every")
ALIASES = {"ssa_align": "beta", "ortho": "gamma"}
CONSULTED: set = set()   # the terms whose mistake the last computations could have made (see consulted_terms)


def _w(wrong, term):
    """Whether the mistake ``term`` is to be made; records that the computation reached the point where it
    would change something (a term never reached cannot change the answer)."""
    CONSULTED.add(term)
    return wrong == term


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


def _load_layer(grp):
    L = {"attrs": {a: _attr(v) for a, v in grp.attrs.items()},
         "arrays": {n: torch.tensor(grp[n][()], dtype=DT) for n in grp if isinstance(grp[n], h5py.Dataset)}}
    if L["attrs"]["kind"] == "residual":   # y = relu(main(x) + shortcut(x)); no shortcut group: identity
        for br in ("main", "shortcut"):
            L[br] = [_load_layer(grp[f"{br}/{j}"]) for j in range(len(grp[br]))] if br in grp else []
    if "aux" in grp:   # a local-loss rule's auxiliary networks attached to this layer
        L["aux"] = {name: [_load_layer(grp[f"aux/{name}/{j}"]) for j in range(len(grp[f"aux/{name}"]))]
                    for name in grp["aux"]}
    return L


def load_golden(path):
    """Everything a candidate may read: attrs, options, x, y, layers (kind, geometry, arrays), feedback."""
    with h5py.File(path, "r") as f:
        g = {"attrs": {k: _attr(v) for k, v in f.attrs.items()}}
        g["options"] = json.loads(g["attrs"]["options"])
        g["optimizer"] = json.loads(g["attrs"]["optimizer"]) if "optimizer" in g["attrs"] else None
        g["steps"] = int(g["attrs"].get("steps", 0))
        g["x"] = torch.tensor(f["input/x"][()], dtype=DT)
        g["y"] = torch.tensor(f["input/y"][()], dtype=torch.int64)
        g["layers"] = [_load_layer(f[f"layers/{k}"]) for k in range(len(f["layers"]))]
        g["feedback"] = ({n: torch.tensor(f[f"feedback/{n}"][()], dtype=DT) for n in f["feedback"]}
                         if "feedback" in f else {})
    return g


def _flat_params(L, prefix=""):
    """``{dotted name: array}`` of a layer's parameters (a residual block's: ``main.0.W``, ...)."""
    out = {prefix + n: a for n, a in L["arrays"].items() if n in PARAMS}
    for br in ("main", "shortcut"):
        for j, sub in enumerate(L.get(br, [])):
            out.update(_flat_params(sub, f"{prefix}{br}.{j}."))
    for name, layers in L.get("aux", {}).items():
        for j, sub in enumerate(layers):
            out.update(_flat_params(sub, f"{prefix}aux.{name}.{j}."))
    return out


def make_params(g):
    """Leaf tensors (requires_grad) of every layer's parameters: ``[{name: tensor}]``, a residual block's
    names dotted (``main.0.W``)."""
    return [{n: a.clone().requires_grad_(True) for n, a in _flat_params(L).items()} for L in g["layers"]]


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


def _branch(layers, p, prefix, h):
    for j, L in enumerate(layers):
        pre = f"{prefix}.{j}."
        h = layer_forward(L, {n[len(pre):]: t for n, t in p.items() if n.startswith(pre)}, h)
    return h


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
    if kind == "avgpool2d":
        return F.avg_pool2d(h, tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))
    if kind == "residual":
        main = _branch(L["main"], p, "main", h)
        short = _branch(L["shortcut"], p, "shortcut", h) if L["shortcut"] else h
        return F.relu(main + short)
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


def per_example_error(logits, y):
    """``softmax(a_N) - onehot(y)`` per example."""
    return F.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(DT)


def output_error(logits, y, mean=True):
    """eq. (7): ``e = softmax(a_N) - onehot(y)``, divided by the batch size (mean reduction)."""
    e = per_example_error(logits, y)
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
                                                                          "svd_conv2d", "residual")]


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


def _sign_feedback(g, P, rule, wrong):
    """B of every weight layer above the first: FA's fixed B, s sign(W) (uSF), |R| o sign(W) (brSF, frSF)."""
    if _w(wrong, "feedback"):
        return {}
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
            if opts["usf_scaled"] and not _w(wrong, "usf_scale"):
                s = (1.0 / math.sqrt(3.0 * fi) if opts["sf_init"] == "torch_default"
                     else math.sqrt(2.0 / (fi + fo)))  # std of the init law
            fb[k] = s * torch.sign(W)
        else:
            fb[k] = L["arrays"]["R"] * torch.sign(W)
    return _conv_feedback(g, fb, wrong)


def _conv_feedback(g, fb, wrong):
    """The mistake ``feedback_conv``: a conv layer carries the error with its own W (linear layers keep B)."""
    return {k: B for k, B in fb.items() if not (g["layers"][k]["attrs"]["kind"] == "conv2d"
                                                and _w(wrong, "feedback_conv"))}


def _kp(g, P, x, e, wrong):
    """Kolen-Pollack (Akrout et al. 2019): FA's chain with the current B; dB = dW (B kept in W's shape, so W's
    update is the transpose of Akrout's B update), both plus lambda times the array (kp_decay)."""
    N = len(g["layers"]) - 1
    fb = _sign_feedback(g, P, "kp", None)
    carry = {} if _w(wrong, "feedback") else _conv_feedback(g, fb, wrong)   # B's own update is dW either way
    grads, signals = local_grads(g, P, 0, N, x, e, feedback=carry)
    lam = 0.0 if _w(wrong, "kp_decay") else g["options"]["kp_decay"]
    for k in weight_layers(g):
        gW = grads[(k, "W")]
        if k in fb:
            grads[(k, "B")] = gW + lam * fb[k]
        grads[(k, "W")] = gW + lam * P[k]["W"].detach()
    return grads, signals


def _inject_point(g, outs, k, inj, rows, wrong):
    """Where segment ``k``'s signal enters: layer ``inj``; mistake ``inject``: the last earlier layer of the
    segment whose output has the same size (the signal then skips the layers in between)."""
    if not _w(wrong, "inject"):
        return inj
    for j in range(inj - 1, k - 1, -1):
        if outs[j][0].numel() == rows:
            return j
    return inj


def _direct(g, P, outs, e, src, output_trained=True, wrong=None):
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
        B = L["arrays"]["B"]                                   # (d_i, K)
        inj = _inject_point(g, outs, k, L["attrs"]["inject"], B.shape[0], wrong)
        sig = (src @ B.T).reshape(outs[inj].shape)             # B_i src per example
        gr, sg = local_grads(g, P, k, inj, outs[k - 1] if k else g["x"], sig)
        grads.update(gr), signals.update(sg)
    return grads, signals


def _pepita(g, P, x, y, logits, wrong):
    """Algorithm 1: second pass on x + F (softmax - y*) (per example); dW_l = (h_l - h_l^err)(h_{l-1}^err)^T / B,
    dW_N = e (h_{N-1}^err)^T with the batch-mean e."""
    Fm = g["feedback"]["F"]                                  # (d_0, K)
    Bsz = x.shape[0]
    e_pe = per_example_error(logits, y)                      # softmax - y*
    e = e_pe if _w(wrong, "batch_mean") else e_pe / Bsz       # eq. (7)
    mod = e_pe / Bsz if _w(wrong, "pepita_error") else e_pe
    x_err = x + (mod @ Fm.T).reshape(x.shape)
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


def _hoyer_on(g, k, paper, wrong):
    """Whether layer k's ds gets the Hoyer term: every SVD layer, the classifier and the paper variant included,
    while ``hoyer_active``."""
    o = g["options"]
    if not (o["hoyer_active"] and o["hoyer"] > 0) or _w(wrong, "hoyer"):
        return False
    if _w(wrong, "hoyer_classifier") and k == len(g["layers"]) - 1:
        return False
    return not (_w(wrong, "hoyer_paper") and paper)


def _svd_bp(g, P, outs, e, wrong):
    grads, signals = _bp(g, P, outs, e)
    o = g["options"]
    of = 2.0 if _w(wrong, "gamma") else 4.0
    for k in weight_layers(g):
        U, s, V = (P[k][n].detach() for n in ("U", "s", "V"))
        grads[(k, "U")] = grads[(k, "U")] + _ortho(U, o["gamma"], of)
        grads[(k, "V")] = grads[(k, "V")] + _ortho(V, o["gamma"], of)
        if _hoyer_on(g, k, False, wrong):
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


_WRONG_PROJECTION = {"tangent": "complement", "paper": "tangent", "complement": "tangent", "none": "tangent"}


def _ssa(g, P, outs, e, wrong):
    """SSA: DFA task signal (eq. (3)); per SVD layer the local loss alpha L_CE + beta L_align + gamma L_ortho
    (eqs. (6), (8), (9)).  Default: dU = P_U(alpha G V S + 2 beta (U - B_U)) + 4 gamma U (U^T U - I), likewise
    V; ds = alpha diag(U^T G V) + 2 beta (s - B_S) (+ hoyer); db = alpha db_task.  Paper: eqs. (11)-(13), G the
    gradient w.r.t. the layer's matrix (a conv layer's K' in the (N kw, C kh) layout), no alpha."""
    o = g["options"]
    orthogonality = o.get("orthogonality", "retract")   # absent: 0.1.0's retract (docs/golden-vectors.md)
    if orthogonality not in ("penalty", "retract", "retract-every") or o["projection"] not in _WRONG_PROJECTION:
        raise ValueError("candidate implements SSA's penalty, retract and retract-every orthogonality and the "
                         f"projections {sorted(_WRONG_PROJECTION)} only")
    paper = o["ssa_variant"] == "paper"
    grads, signals = _direct(g, P, outs, e, e, wrong=wrong)
    if paper or _w(wrong, "s_inverse"):  # eqs. (11)-(13) need G = dL/dW of the reconstructed matrix
        dense = _direct_dense(g, P, outs, e, wrong)
    alpha, beta, gamma = o["alpha"], o["beta"], o["gamma"]
    af = 1.0 if _w(wrong, "beta") else 2.0
    of = 2.0 if _w(wrong, "gamma") else 4.0
    how = _WRONG_PROJECTION[o["projection"]] if _w(wrong, "projection") else o["projection"]
    project_ortho = (not o["project_ortho"]) if _w(wrong, "gamma_placement") else o["project_ortho"]
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
            sc, inv = (alpha if _w(wrong, "alpha_paper") else 1.0), (s if _w(wrong, "s_inverse") else 1.0 / s)
            gs = sc * (U * GV).sum(0) + als              # eq. (11)
            gU = sc * GV * inv + alU                     # eq. (12)
            gV = sc * GtU * inv + alV                    # eq. (13), transposed
        else:
            a = 1.0 if _w(wrong, "alpha") else alpha
            if _w(wrong, "s_inverse"):
                G = dense[k]
                tU, tV = G @ V / s, G.T @ U / s
            else:
                tU, tV = grads[(k, "U")], grads[(k, "V")]
            gs = a * grads[(k, "s")] + als
            gU = a * tU + alU
            gV = a * tV + alV
        if project_ortho:
            dU, dV = _project(U, gU + oU, how, "U"), _project(V, gV + oV, how, "V")
        else:
            dU, dV = _project(U, gU, how, "U") + oU, _project(V, gV, how, "V") + oV
        if _hoyer_on(g, k, paper, wrong):
            gs = gs + o["hoyer"] * hoyer_grad(s)
        out[(k, "U")], out[(k, "s")], out[(k, "V")] = dU, gs, dV
        if (k, "b") in grads:
            if not paper and not _w(wrong, "alpha_bias"):
                out[(k, "b")] = alpha * grads[(k, "b")]
            elif paper and _w(wrong, "alpha_paper"):
                out[(k, "b")] = alpha * grads[(k, "b")]
    return out, signals


def _aux_forward(L, p, name, h):
    """An auxiliary network ``name`` of layer ``L`` (``layers/<k>/aux/<name>``) on ``h``."""
    for j, A in enumerate(L["aux"][name]):
        q = f"aux.{name}.{j}."
        h = layer_forward(A, {n[len(q):]: t for n, t in p.items() if n.startswith(q)}, h)
    return h


def _similarity(x, std, wrong):
    """PredSim's adjusted cosine-similarity matrix (Nokland & Eidnes' ``similarity_matrix``)."""
    if x.dim() == 4 and std and x.shape[1] > 3 and x.shape[2] > 1 and not _w(wrong, "similarity_std"):
        x = x.reshape(x.shape[0], x.shape[1], -1).std(dim=2)
    x = x.reshape(x.shape[0], -1)
    xc = x - x.mean(dim=1, keepdim=True)
    xn = xc / (1e-8 + xc.pow(2).sum(dim=1, keepdim=True).sqrt())
    return (xn @ xn.T).clamp(-1, 1)


def _local(g, P, outs, e, wrong):
    """PredSim / AugLocal: every layer with an ``inject`` attribute learns from its auxiliary networks' loss on its
    output at ``inject`` (carried back to it alone); the output layer from e.  AugLocal: the last hidden layer and
    the output layer form one module trained by e (BP between them)."""
    rule, o, x, y = g["attrs"]["rule"], g["options"], g["x"], g["y"]
    N = len(g["layers"]) - 1
    grads, signals = local_grads(g, P, N, N, outs[N - 1], e)
    if rule == "auglocal":
        hidden = weight_layers(g)[:-1]
        if hidden:
            last = hidden[-1]
            h_in = outs[last - 1] if last else x
            if _w(wrong, "last_module"):   # mistake: the output layer's error is not carried into the last layer
                gl, sl = local_grads(g, P, last, N - 1, h_in, torch.zeros_like(outs[N - 1]))
                grads.update(gl)
            else:
                gl, sl = local_grads(g, P, last, N, h_in, e)
                grads.update(gl)
                signals.update(sl)
    for k, L in enumerate(g["layers"]):
        if "inject" not in L["attrs"]:
            continue
        j = int(L["attrs"]["inject"])
        if j > k and _w(wrong, "inject"):   # mistake: the block output read one layer earlier
            j -= 1
        h = outs[j].detach().requires_grad_(True)
        aux = {n: t for n, t in P[k].items() if n.startswith("aux.")}
        if rule == "predsim":
            beta = o["predsim_beta"]
            if _w(wrong, "predsim_beta"):
                beta = 1.0 - beta
            loss_pred = cross_entropy(_aux_forward(L, P[k], "pred", h), y)
            t = _aux_forward(L, P[k], "sim", h) if "sim" in L["aux"] else h
            Y = F.one_hot(y, outs[N].shape[1]).to(DT)
            D = _similarity(t, o["predsim_channel_std"], wrong) - _similarity(Y, True, None)
            loss = (1 - beta) * loss_pred + beta * (D * D).mean()
        else:
            loss = cross_entropy(_aux_forward(L, P[k], "aux", h), y)
        res = torch.autograd.grad(loss, [h] + list(aux.values()), allow_unused=True)
        gk, sk = local_grads(g, P, k, j, outs[k - 1] if k else x, res[0])
        grads.update(gk)
        signals.update(sk)
        for (n, t), r in zip(aux.items(), res[1:]):   # after local_grads (which gives the aux leaves zeros)
            grads[(k, n)] = torch.zeros_like(t) if r is None else r
    return grads, signals


def _direct_dense(g, P, outs, e, wrong=None):
    """dL/dW of every SVD layer's reconstructed matrix under SSA's task signals."""
    N = len(g["layers"]) - 1
    dense = {}
    gr, _ = local_grads(g, P, N, N, outs[N - 1], e, dense=True)
    dense[N] = gr[(N, "M")]
    for k, L in enumerate(g["layers"]):
        if "inject" in L["attrs"]:
            B = L["arrays"]["B"]
            inj = _inject_point(g, outs, k, L["attrs"]["inject"], B.shape[0], wrong)
            sig = (e @ B.T).reshape(outs[inj].shape)
            gr, _ = local_grads(g, P, k, inj, outs[k - 1] if k else g["x"], sig, dense=True)
            dense[k] = gr[(k, "M")]
    return dense


def _oracle_sign(g, P, x, y, outs, logits, e, o, wrong):
    N = len(g["layers"]) - 1
    return local_grads(g, P, 0, N, x, e, feedback=_sign_feedback(g, P, g["attrs"]["rule"], wrong))


def _oracle_dfa(g, P, x, y, outs, logits, e, o, wrong):
    src = e * x.shape[0] if _w(wrong, "dfa_scale") else e
    return _direct(g, P, outs, e, src, o["dfa_output"] == "e", wrong)


def _oracle_drtp(g, P, x, y, outs, logits, e, o, wrong):
    t = F.one_hot(y, logits.shape[1]).to(DT)     # +y*, divided by B for the mean reduction
    if (o["drtp_reduction"] == "mean") != (_w(wrong, "drtp_target")):
        t = t / x.shape[0]
    return _direct(g, P, outs, e, t, o["drtp_output"] == "e", wrong)


#: rule name -> its oracle ``(g, P, x, y, outs, logits, e, options, wrong) -> (grads, signals)``: one line per rule
ORACLES = {
    "bp": lambda g, P, x, y, outs, logits, e, o, wrong: _bp(g, P, outs, e),
    "fa": _oracle_sign,
    "usf": _oracle_sign,
    "brsf": _oracle_sign,
    "frsf": _oracle_sign,
    "kp": lambda g, P, x, y, outs, logits, e, o, wrong: _kp(g, P, x, e, wrong),
    "dfa": _oracle_dfa,
    "drtp": _oracle_drtp,
    "pepita": lambda g, P, x, y, outs, logits, e, o, wrong: _pepita(g, P, x, y, logits, wrong),
    "svd-bp": lambda g, P, x, y, outs, logits, e, o, wrong: _svd_bp(g, P, outs, e, wrong),
    "ssa": lambda g, P, x, y, outs, logits, e, o, wrong: _ssa(g, P, outs, e, wrong),
    "predsim": lambda g, P, x, y, outs, logits, e, o, wrong: _local(g, P, outs, e, wrong),
    "auglocal": lambda g, P, x, y, outs, logits, e, o, wrong: _local(g, P, outs, e, wrong),
}
SUPPORTED = tuple(ORACLES)


def step(g, P, wrong=None):
    """One step's directions at parameters ``P``: ``(loss, logits, outs, grads {(k, name)}, signals {k})``."""
    rule = g["attrs"]["rule"]
    if rule not in SUPPORTED:
        raise ValueError(f"candidate does not implement rule {rule!r}")
    o = g["options"]
    if o.get("loss_reduction", "mean") != "mean":
        raise ValueError("candidate implements the mean loss reduction only")
    x, y = g["x"], g["y"]
    with torch.no_grad():
        outs = forward_all(g, P, x)
    logits = outs[-1]
    loss = cross_entropy(logits, y)
    e = output_error(logits, y, mean=not _w(wrong, "batch_mean"))      # eq. (7)
    grads, signals = ORACLES[rule](g, P, x, y, outs, logits, e, o, wrong)
    return loss, logits, outs, grads, signals


def compute(g, wrong=None):
    """The candidate's (first) step at the golden file's parameters."""
    return step(g, make_params(g), ALIASES.get(wrong, wrong))


# ------------------------------------------------------------------------------------------------
# multi-step cases: torch.optim and SSA's retraction
# ------------------------------------------------------------------------------------------------
class _AdamNoBiasCorrection:
    """The mistake ``adam_bias``: Adam's moments without the 1 - beta^t corrections."""

    def __init__(self, params, lr, betas, eps):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.sub_(self.lr * m / (v.sqrt() + self.eps))


def make_optimizer(spec, leaves, wrong=None):
    """``torch.optim.SGD`` / ``torch.optim.Adam`` from the ``optimizer`` attribute (or the named mistake)."""
    name = spec["name"]
    if name == "sgd":
        damp = spec["momentum"] if _w(wrong, "momentum") else spec.get("dampening", 0.0)
        return torch.optim.SGD(leaves, lr=spec["lr"], momentum=spec["momentum"], dampening=damp,
                               nesterov=spec.get("nesterov", False), weight_decay=spec.get("weight_decay", 0.0))
    if name == "adam":
        if spec.get("weight_decay", 0.0):
            raise ValueError("candidate implements Adam without weight decay only")
        if _w(wrong, "adam_bias"):
            return _AdamNoBiasCorrection(leaves, spec["lr"], tuple(spec["betas"]), spec["eps"])
        return torch.optim.Adam(leaves, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"])
    raise ValueError(f"candidate has no optimizer {name!r}")


@torch.no_grad()
def retract(X, how):
    """SSA's retraction onto the Stiefel manifold: the polar factor ``X (X^T X)^{-1/2}`` (``U_X V_X^T`` of the
    thin SVD), or the Q factor of ``X = QR`` with ``diag(R) > 0``.  A non-finite ``X`` (a mistake that diverged)
    gives NaN."""
    if not bool(torch.isfinite(X).all()):
        return torch.full_like(X, float("nan"))
    if how == "polar":
        A, _, Bh = torch.linalg.svd(X, full_matrices=False)
        return A @ Bh
    if how == "qr":
        Q, R = torch.linalg.qr(X)
        d = torch.sign(torch.diagonal(R))
        return Q * torch.where(d == 0, torch.ones_like(d), d)
    raise ValueError(f"candidate has no retraction {how!r}")


def run_steps(g, wrong=None):
    """The multi-step case: ``[(loss, grads, P after the step)]`` for t = 1..steps on the same batch."""
    wrong = ALIASES.get(wrong, wrong)
    if g["attrs"]["rule"] == "kp":
        raise ValueError("candidate has no multi-step KP (its B is optimised too)")
    P = make_params(g)
    leaves = [t for p in P for t in p.values()]
    opt = make_optimizer(g["optimizer"], leaves, wrong)
    o = g["options"]
    retraction = o.get("retraction", "none") if g["attrs"]["rule"] == "ssa" else "none"
    if o.get("ssa_variant") == "paper" and g["attrs"]["rule"] == "ssa":
        if retraction == "none" and o.get("orthogonality", "retract") == "retract" and _w(wrong, "paper_no_retract"):
            retraction = "polar"   # mistake: the paper variant at its defaults retracts after every step
        elif retraction != "none" and _w(wrong, "paper_retract_every"):
            retraction = "none"    # mistake: the paper variant never retracts, even where its options ask
    if retraction != "none" and _w(wrong, "retraction"):
        retraction = {"polar": "qr", "qr": "polar"}[retraction]
    # retract-every K: after optimiser steps K, 2K, ... of the run, the warm-up steps counted (docs/golden-vectors.md)
    every = 1
    if retraction != "none" and o.get("orthogonality", "retract") == "retract-every":
        every = 1 if _w(wrong, "retract_every") else int(o.get("retract_every", 10))   # mistake: every step
    done = int(o.get("warmup_sgd_steps", 0))
    out = []
    for _ in range(g["steps"]):
        loss, logits, outs, grads, signals = step(g, P, wrong)
        for (k, n), v in grads.items():
            P[k][n].grad = v.detach().clone()
        opt.step()
        done += 1
        if retraction != "none" and done % every == 0:   # after the optimiser step, every U and V of every SVD layer
            with torch.no_grad():
                for k in weight_layers(g):
                    for n in ("U", "V"):
                        P[k][n].copy_(retract(P[k][n].detach(), retraction))
        out.append((loss, grads, [{n: t.detach().clone() for n, t in p.items()} for p in P]))
    return out


# ------------------------------------------------------------------------------------------------
# writing a candidate file
# ------------------------------------------------------------------------------------------------
def _np(t):
    return t.detach().numpy()


def _dpath(k, n):
    return f"{k}/{n.replace('.', '/')}"


def candidate_fields(golden, wrong=None):
    """``{dataset path: array}`` the candidate computes for a golden file (path or ``load_golden`` dict)."""
    g = load_golden(golden) if not isinstance(golden, dict) else golden
    loss, logits, outs, grads, signals = compute(g, wrong)
    f = {"forward/loss": _np(loss), "forward/logits": _np(logits)}
    for k, o in enumerate(outs):
        f[f"forward/{k}/out"] = _np(o)
    for k, s in signals.items():
        f[f"signal/{k}"] = _np(s)
    for (k, n), v in grads.items():
        if n.split(".")[-1] in PARAMS or n == "B":   # KP's learnt feedback has an update too
            f[f"update/{_dpath(k, n)}"] = _np(v)
    if g["steps"]:
        for t, (loss_t, grads_t, P_t) in enumerate(run_steps(g, wrong), start=1):
            f[f"steps/{t}/loss"] = _np(loss_t)
            for (k, n), v in grads_t.items():
                if n.split(".")[-1] in PARAMS:
                    f[f"steps/{t}/update/{_dpath(k, n)}"] = _np(v)
            for k, p in enumerate(P_t):
                for n, v in p.items():
                    f[f"steps/{t}/params/{_dpath(k, n)}"] = _np(v)
    return f


def write_candidate(golden_path, out_path, wrong=None):
    """Compute the candidate's answer for ``golden_path`` and write it in the golden schema to ``out_path``."""
    g = load_golden(golden_path)
    fields = candidate_fields(g, wrong)
    with h5py.File(out_path, "w") as f:
        f.attrs["schema"] = g["attrs"]["schema"]
        for k in ("rule", "model", "variant"):
            f.attrs[k] = g["attrs"][k]
        for p, a in fields.items():
            f[p] = a
    return out_path


def consulted_terms(golden):
    """The terms whose mistake could change the candidate's answer for ``golden``: those the correct computation
    reaches (every other mistake leaves the answer bit-identical)."""
    g = load_golden(golden) if not isinstance(golden, dict) else golden
    CONSULTED.clear()
    candidate_fields(g)
    return set(CONSULTED)
