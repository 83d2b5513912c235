"""Linear algebra for the SVD-space rules (SSA, SVD-BP): SVDs with deterministic signs, the randomized SVD
of Halko, Martinsson & Tropp (2011), Stiefel-manifold projections and retractions, Hoyer sparsity and the
spectral-energy rank.

Every function is written once against the array module of its input (``xp`` = numpy or cupy), keeps the
input dtype, and draws random numbers (the randomized SVD's test matrix) on the host from a NumPy generator
so CPU and GPU runs of one seed see the same numbers.

On a device (CuPy) the per-step routines launch fewer kernels: ``sym``, the Newton-Schulz step of ``retract`` and
``hoyer_grad`` are fused kernels (``ssaref.ops.kernels``, the same formulas), and ``orthogonality_errors`` batches
the Gram matrices of one width into one norm; NumPy keeps the code as written (its bits unchanged).

Conventions: a thin SVD is returned as ``(U (m, r), s (r,), V (n, r))`` with ``A = U diag(s) V^T``, i.e. ``V``
(not ``V^T``) as in eq. (5); singular values in descending order; column signs fixed so that the entry of
largest magnitude of every column of ``U`` is positive (``V`` flipped alongside, so the product is unchanged).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_array_module
from .ops import kernels

__all__ = [
    "LinalgError",
    "sign_fix",
    "svd",
    "randomized_svd",
    "orthogonality_error",
    "orthogonality_errors",
    "sym",
    "tangent_project",
    "complement_project",
    "relative_project",
    "retract",
    "RETRACTIONS",
    "hoyer",
    "hoyer_grad",
    "energy_rank",
    "retained_energy",
    "angle_deg",
    "landing_penalty",
    "landing_penalty_grad",
    "landing_field",
    "landing_safe_step",
    "landing_step_fraction",
    "factor_condition",
    "gram",
    "worth_fewer_flops",
]

RETRACTIONS = ("polar", "qr", "none")


class LinalgError(ValueError):
    """Bad argument to a linear-algebra routine (the message names the offending value)."""


def _check_matrix(A, name="A"):
    if getattr(A, "ndim", None) != 2:
        raise LinalgError(f"{name} must be a 2-D array, got shape {getattr(A, 'shape', None)}")
    if np.dtype(A.dtype).kind != "f":
        raise LinalgError(f"{name} must have a floating dtype, got {A.dtype}")
    if min(A.shape) < 1:
        raise LinalgError(f"{name} must be non-empty, got shape {tuple(A.shape)}")


def _check_rank(k, A):
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise LinalgError(f"rank k must be an integer, got {k!r}")
    if not 1 <= int(k) <= min(A.shape):
        raise LinalgError(f"rank k must be in [1, {min(A.shape)}] for a matrix of shape {tuple(A.shape)}, got {k}")
    return int(k)


def sign_fix(U, V):
    """Flip column signs so that each column of ``U`` has its largest-magnitude entry positive.

    Parameters
    ----------
    U : array (m, r)
    V : array (n, r)
        Flipped alongside ``U``, so ``U diag(s) V^T`` is unchanged.

    Returns
    -------
    (U, V) : new arrays, same shapes and dtype.
    """
    xp = get_array_module(U, V)
    idx = xp.argmax(xp.abs(U), axis=0)
    signs = xp.sign(U[idx, xp.arange(U.shape[1])])
    signs = xp.where(signs == 0, 1, signs).astype(U.dtype)
    return U * signs, V * signs


def svd(A, k=None):
    """Thin SVD ``A = U diag(s) V^T`` with descending ``s`` and deterministic signs (see module doc).

    Parameters
    ----------
    A : array (m, n)
    k : int, optional
        Keep the top ``k`` triplets (1 <= k <= min(m, n)); default all.

    Returns
    -------
    U : array (m, k)
    s : array (k,)
    V : array (n, k)
    """
    _check_matrix(A)
    xp = get_array_module(A)
    k = min(A.shape) if k is None else _check_rank(k, A)
    U, s, Vt = xp.linalg.svd(A, full_matrices=False)
    U, V = sign_fix(U[:, :k], Vt[:k].T)
    return xp.ascontiguousarray(U), s[:k].copy(), xp.ascontiguousarray(V)


def _orthonormal_basis(Y):
    xp = get_array_module(Y)
    Q, _ = xp.linalg.qr(Y)
    return Q


def randomized_svd(A, k, *, oversample=10, n_iter=4, rng=None, seed=0):
    """Truncated randomized SVD (Halko, Martinsson & Tropp 2011, Algorithms 4.4 + 5.1).

    Range finder: ``Y = A Omega`` with a Gaussian test matrix ``Omega`` (n, l), ``l = k + oversample``,
    followed by ``n_iter`` power (subspace) iterations ``Y <- A (A^T Q)`` with a QR re-orthonormalisation after
    every product; ``Q = qr(Y)``.  Then the small dense SVD of ``Q^T A`` (l, n) gives ``A ~ (Q U_b) diag(s) V^T``.
    When ``l >= min(m, n)`` the range finder would return the whole space, and the exact thin SVD is used.

    Parameters
    ----------
    A : array (m, n)
    k : int
        Target rank, 1 <= k <= min(m, n).
    oversample : int
        Extra columns of the test matrix (>= 0).
    n_iter : int
        Power iterations (>= 0).
    rng : numpy.random.Generator, optional
        Host generator for ``Omega`` (default ``numpy.random.default_rng(seed)``).
    seed : int
        Seed used when ``rng`` is None.

    Returns
    -------
    U : array (m, k), orthonormal columns
    s : array (k,), descending
    V : array (n, k), orthonormal columns
        Signs fixed as in ``sign_fix``, so the result is reproducible for a given generator state.
    """
    _check_matrix(A)
    k = _check_rank(k, A)
    for name, v in (("oversample", oversample), ("n_iter", n_iter)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise LinalgError(f"{name} must be an integer >= 0, got {v!r}")
    xp = get_array_module(A)
    m, n = A.shape
    l = k + int(oversample)
    if l >= min(m, n):
        return svd(A, k)
    rng = np.random.default_rng(seed) if rng is None else rng
    omega = xp.asarray(rng.standard_normal((n, l)).astype(A.dtype))  # host draw: same on CPU and GPU
    Q = _orthonormal_basis(A @ omega)  # (m, l)
    for _ in range(int(n_iter)):  # power iterations, re-orthonormalised
        Q = _orthonormal_basis(A.T @ Q)  # (n, l)
        Q = _orthonormal_basis(A @ Q)  # (m, l)
    Ub, s, Vt = xp.linalg.svd(Q.T @ A, full_matrices=False)  # small dense SVD of (l, n)
    U, V = sign_fix(Q @ Ub[:, :k], Vt[:k].T)
    return xp.ascontiguousarray(U), s[:k].copy(), xp.ascontiguousarray(V)


def _orthogonality_error_device(X):
    """``||X^T X - I||_F`` for ``X`` (m, r) as a 0-d array of ``X``'s module (no device->host transfer)."""
    xp = get_array_module(X)
    G = X.T @ X
    if xp is not np:  # a device: one subtraction instead of an indexed read-modify-write
        return xp.linalg.norm(G - xp.eye(G.shape[0], dtype=G.dtype))
    G[xp.diag_indices(G.shape[0])] -= 1.0
    return xp.linalg.norm(G)


def orthogonality_error(X):
    """``||X^T X - I||_F`` for ``X`` (m, r)."""
    return float(_orthogonality_error_device(X))


def factor_condition(X):
    """Condition number ``sigma_max(X) / sigma_min(X)`` of ``X`` (m, r) (1 on the Stiefel manifold), from the
    eigenvalues of the (r, r) Gram matrix ``X^T X`` in float64 on the host; ``inf`` if ``X`` is rank deficient,
    NaN for a wide ``X`` (m < r)."""
    _check_matrix(X, "X")
    m, r = X.shape
    if m < r:
        return float("nan")
    G = np.asarray(_host(X.T @ X), dtype=np.float64)
    w = np.linalg.eigvalsh(0.5 * (G + G.T))
    lo, hi = float(w[0]), float(w[-1])
    return float(math.sqrt(hi / lo)) if lo > 0.0 else float("inf")


def orthogonality_errors(Xs):
    """``||X^T X - I||_F`` of several matrices with a single device->host transfer.

    Parameters
    ----------
    Xs : sequence of arrays (m_i, r_i), all of one array module.

    Returns
    -------
    list of float, one per matrix (empty for an empty sequence).
    """
    Xs = list(Xs)
    if not Xs:
        return []
    xp = get_array_module(*Xs)
    if xp is not np:
        return _orthogonality_errors_batched(xp, Xs)
    vals = xp.stack([_orthogonality_error_device(X).astype(xp.float64) for X in Xs])
    return [float(v) for v in np.asarray(_host(vals))]


def _orthogonality_errors_batched(xp, Xs):
    """``orthogonality_errors`` on a device, in few launches: the Gram matrices ``X^T X`` of one width ``r`` (and
    dtype) are stacked -- those of three or more matrices of one shape from one batched GEMM, the others one GEMM
    each -- and reduced by one subtraction of ``I`` and one batched norm."""
    groups: dict = {}
    for k, X in enumerate(Xs):
        groups.setdefault((X.shape[1], X.dtype), {}).setdefault(tuple(X.shape), []).append(k)
    parts, order = [], []
    for (r, dtype), shapes in groups.items():
        single = [k for idx in shapes.values() if len(idx) < 3 for k in idx]
        grams = [xp.stack([Xs[k].T @ Xs[k] for k in single])] if single else []
        for idx in shapes.values():
            if len(idx) >= 3:
                S = xp.stack([Xs[k] for k in idx])  # (g, m, r)
                grams.append(S.transpose(0, 2, 1) @ S)  # (g, r, r), one batched GEMM
        G = grams[0] if len(grams) == 1 else xp.concatenate(grams)
        parts.append(xp.linalg.norm(G - xp.eye(r, dtype=dtype), axis=(1, 2)))
        order += single + [k for idx in shapes.values() if len(idx) >= 3 for k in idx]
    vals = np.asarray(_host(xp.concatenate(parts).astype(xp.float64)))  # one device->host transfer
    out = [0.0] * len(Xs)
    for k, v in zip(order, vals):
        out[k] = float(v)
    return out


def gram(X):
    """The Gram matrix ``X^T X`` (r, r) of ``X`` (m, r) as a symmetric rank-k update (``syrk``: one triangle,
    ``m r (r + 1) / 2`` multiply-adds instead of ``m r^2``), symmetric to the last bit.

    NumPy: ``X.T @ X`` itself -- ``np.matmul`` recognises a matrix times its own transpose and calls BLAS
    ``?syrk`` and mirrors the triangle (numpy's ``matmul.c.src``), so a SciPy ``ssyrk`` call would only repeat it.
    CuPy: ``cupy.cublas.syrk`` (cuBLAS ``?syrk``, upper triangle) then the mirror, where the half GEMM it saves
    outweighs its two extra launches (``worth_fewer_flops``); ``X.T @ X`` there is a full GEMM.  Other dtypes and
    array kinds: ``X.T @ X``.
    """
    xp = get_array_module(X)
    if xp is np or X.ndim != 2 or X.dtype not in (np.float32, np.float64):
        return X.T @ X
    m, r = X.shape
    syrk = _device_syrk(xp) if worth_fewer_flops(xp, m * r * (r - 1) // 2, launches=2) else None
    if syrk is None:
        return X.T @ X
    C = syrk("T", X)  # (r, r), F order, upper triangle of X^T X, zeros below
    C += xp.triu(C, 1).T  # the mirror
    return C.T  # symmetric: its transpose is the same matrix, C-contiguous


# on a device a launch costs about as much as this many multiply-adds of a float32 GEMM (~5 us at ~50 TFLOP/s:
# an estimate, not measured here -- no device was lent): a reduction that saves fewer per extra launch is not taken
DEVICE_MACS_PER_LAUNCH = 1 << 27


def worth_fewer_flops(xp, saved_macs, launches=1):
    """Whether a formulation that saves ``saved_macs`` multiply-adds at the price of ``launches`` more kernel
    launches is worth it: always on the host (NumPy), on a device when the saving outweighs the launches
    (``DEVICE_MACS_PER_LAUNCH`` each)."""
    return saved_macs > 0 and (xp is np or saved_macs >= launches * DEVICE_MACS_PER_LAUNCH)


def _device_syrk(xp):
    """``cupy.cublas.syrk`` for CuPy (>= 9), the ``cublas.syrk`` a stand-in module carries, else None."""
    if getattr(xp, "__name__", "") == "cupy":
        from cupy import cublas

        return cublas.syrk
    return getattr(getattr(xp, "cublas", None), "syrk", None)


def sym(M):
    """Symmetric part ``(M + M^T) / 2`` of a square array (r, r)."""
    xp = get_array_module(M)
    if kernels.enabled(xp):
        return kernels.launch(xp, kernels.SYM, M, M.T, 0.5)
    return 0.5 * (M + M.T)


def tangent_project(X, G):
    """Projection of ``G`` onto the tangent space of the Stiefel manifold at ``X`` (Euclidean metric).

    ``P_X(G) = G - X sym(X^T G)`` (Absil, Mahony & Sepulchre 2008, eq. (3.35); Edelman et al. 1998).
    ``X^T P_X(G)`` is skew-symmetric when ``X^T X = I``, so a step along it keeps ``X^T X = I`` to first order.

    Parameters
    ----------
    X : array (m, r)
    G : array (m, r)
    """
    return G - X @ sym(X.T @ G)


def complement_project(X, G):
    """``(I - X X^T) G`` for ``X``, ``G`` (m, r): the projection printed in eq. (12) and section 5.2.

    It removes every component of ``G`` in span(X), including the skew part ``X Omega`` of the tangent space;
    for square orthogonal ``X`` it is identically zero.  Computed without forming the (m, m) matrix.
    """
    return G - X @ (X.T @ G)


def relative_project(X, G):
    """The relative (Riemannian, canonical-metric) gradient ``skew(G X^T) X`` for ``X``, ``G`` (m, r).

    ``skew(A) = (A - A^T) / 2``, so ``skew(G X^T) X = (G (X^T X) - X (G^T X)) / 2``, computed without the
    (m, m) matrix.  The direction of the landing field of Ablin & Peyre (AISTATS 2022, "Fast and accurate
    optimization on the orthogonal manifold without retraction") in its Stiefel form (Gao, Vary, Ablin & Absil
    2022, "Optimization flows landing on the Stiefel manifold"): ``psi(X) X`` with ``psi(X) = skew(G X^T)``.
    For *any* ``X``, ``X^T psi X`` is skew-symmetric, so a step along it leaves ``X^T X`` unchanged to first
    order; on the manifold it equals half the canonical-metric Riemannian gradient ``G - X G^T X``.
    """
    return 0.5 * (G @ (X.T @ X) - X @ (G.T @ X))


def _gram_error(X):
    """``X^T X - I`` (r, r)."""
    xp = get_array_module(X)
    E = X.T @ X
    E[xp.diag_indices(E.shape[0])] -= 1.0
    return E


def landing_penalty(X):
    """``N(X) = ||X^T X - I||_F^2 / 4`` for ``X`` (m, r): the landing method's distance to the Stiefel manifold
    (Ablin & Peyre 2022, eq. (4), Stiefel form of Gao et al. 2022).  Eq. (9)'s term is ``4 N``."""
    return 0.25 * float(get_array_module(X).linalg.norm(_gram_error(X)) ** 2)


def landing_penalty_grad(X):
    """``grad N(X) = X (X^T X - I)`` (m, r): the normal ("landing") part of the field."""
    return X @ _gram_error(X)


def landing_field(X, G, lam):
    """The landing field ``Lambda(X) = skew(G X^T) X + lam X (X^T X - I)`` (m, r) for the Euclidean gradient
    ``G`` (m, r) of the objective at ``X`` (Ablin & Peyre 2022, eq. (7); Gao et al. 2022, Stiefel form).

    The first term is ``relative_project``; the second is ``lam * landing_penalty_grad``, which vanishes on the
    manifold and pulls ``X`` towards it elsewhere.  The landing iteration is ``X <- X - eta Lambda(X)``, with
    ``eta`` bounded by ``landing_safe_step`` so that ``||X^T X - I||_F`` stays below a chosen ``eps``.
    """
    return relative_project(X, G) + lam * landing_penalty_grad(X)


def landing_safe_step(a, d, lam, eps):
    """The landing step-size safeguard: the largest ``eta`` for which ``||X^T X - I||_F <= eps`` is guaranteed
    after ``X <- X - eta Lambda(X)``, given only ``a = ||Lambda(X)||_F``, ``d = ||X^T X - I||_F <= eps < 1`` and
    ``lam`` (the safe step of Ablin & Peyre 2022, Lemma 2 / Proposition 3, derived for the Stiefel manifold).

    Derivation (``E = X^T X - I``, ``Lambda = psi X + lam X E``, ``psi`` skew)::

        E' = E - 2 eta lam (E + E^2) + eta^2 Lambda^T Lambda         (the psi-part leaves X^T X unchanged to
                                                                     first order: X^T psi X is skew)
        ||E'|| <= d (1 - 2 eta lam (1 - d)) + eta^2 a^2   if 2 eta lam (1 + d) <= 1   (eigenvalues of E in [-d, d])

    and the right-hand side is ``<= eps`` for every ``eta`` in ``[0, eta+]``, ``eta+`` the positive root of
    ``a^2 eta^2 - 2 lam d (1 - d) eta + (d - eps)``.  Returns ``min(eta+, 1 / (2 lam (1 + d)))`` (``inf`` when
    both are unbounded: ``a = 0`` and ``lam = 0``).
    """
    a, d, lam, eps = float(a), float(d), float(lam), float(eps)
    if not 0.0 < eps < 1.0:
        raise LinalgError(f"landing eps must be in (0, 1), got {eps!r}")
    if not (0.0 <= d <= eps):
        raise LinalgError(f"landing_safe_step needs 0 <= d <= eps, got d={d!r}, eps={eps!r}")
    if lam < 0.0 or a < 0.0:
        raise LinalgError(f"landing_safe_step needs a >= 0 and lam >= 0, got a={a!r}, lam={lam!r}")
    b = lam * d * (1.0 - d)
    eta_root = math.inf if a == 0.0 else (b + math.sqrt(b * b + a * a * (eps - d))) / (a * a)
    eta_curv = math.inf if lam == 0.0 else 1.0 / (2.0 * lam * (1.0 + d))
    return min(eta_root, eta_curv)


def landing_step_fraction(X0, D, bound):
    """The largest ``t`` in ``[0, 1]`` such that ``||(X0 + t' D)^T (X0 + t' D) - I||_F <= bound`` for every
    ``t' <= t``: the landing safeguard applied to a realised step ``D`` (m, r) from ``X0`` (m, r).

    ``(X0 + t D)^T (X0 + t D) - I = E0 + t S + t^2 Q`` with ``E0 = X0^T X0 - I``, ``S = X0^T D + D^T X0``,
    ``Q = D^T D``, so the squared distance is a quartic in ``t``; the answer is its first crossing of
    ``bound^2`` (host float64, one read of five numbers), or 1 when there is none in ``(0, 1]``.  Requires
    ``||E0||_F <= bound``.  For plain SGD on the landing field, ``D = -eta Lambda(X0)`` and ``t eta`` is at least
    ``min(eta, landing_safe_step(...))`` (the closed form is a sufficient bound, this is the exact one).
    """
    xp = get_array_module(X0, D)
    X0, D = X0.astype(xp.float64), D.astype(xp.float64)  # the coefficients in float64 (float32 factors too)
    E0 = _gram_error(X0)
    C = X0.T @ D
    S = C + C.T
    Q = D.T @ D
    dots = _host(
        xp.stack(
            [
                xp.asarray(v, dtype=xp.float64)
                for v in ((E0 * E0).sum(), (E0 * S).sum(), (S * S).sum(), (E0 * Q).sum(), (S * Q).sum(), (Q * Q).sum())
            ]
        )
    )
    ee, es, ss, eq, sq, qq = (float(v) for v in np.asarray(dots))
    b2 = max(float(bound) ** 2, ee)  # a start a rounding error outside the bound counts as on it
    coef = [qq, 2.0 * sq, ss + 2.0 * eq, 2.0 * es, ee - b2]  # ||E0 + t S + t^2 Q||^2 - bound^2
    f = lambda t: float(np.polyval(coef, t))  # noqa: E731
    if f(1.0) <= 0.0 and qq == 0.0:
        return 1.0  # no step (D = 0), or a step that ends inside
    roots = np.roots(coef) if qq > 0.0 else np.array([])
    real = sorted(float(z.real) for z in roots if abs(z.imag) <= 1e-7 * (1.0 + abs(z)) and 0.0 < z.real <= 1.0)
    for t in real:  # the first root where the path leaves the ball
        if f(min(1.0, t + 1e-9 * t)) > 0.0 or (t >= 1.0 and f(1.0) > 0.0):
            return _inside(f, t)
    if coef[-1] == 0.0 and (coef[-2] > 0.0 or (coef[-2] == 0.0 and coef[-3] > 0.0)):
        return 0.0  # on the bound and heading out
    if f(1.0) <= 0.0:
        return 1.0
    grid = np.linspace(0.0, 1.0, 1025)  # a root the polynomial solver missed: scan, then bisect
    k = next(i for i, t in enumerate(grid) if f(float(t)) > 0.0)
    if k == 0:
        return 0.0
    lo, hi = float(grid[k - 1]), float(grid[k])
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) <= 0.0 else (lo, mid)
    return lo


def _inside(f, t):
    """A fraction just below the crossing ``t`` of ``f`` (from <= 0 to > 0) where ``f`` is still <= 0."""
    lo = t * (1.0 - 1e-7)
    while lo > 0.0 and f(lo) > 0.0:
        lo *= 0.5
    return max(0.0, lo)


def retract(X, method="polar", *, tol=None, max_iter=8, return_error=False, check_every=1, error=None):
    """Map ``X`` (m, r), close to the Stiefel manifold, onto it.

    Parameters
    ----------
    X : array (m, r), m >= r
    method : str
        ``"polar"``: the orthonormal factor of the polar decomposition, ``X (X^T X)^{-1/2}`` (the closest
        matrix with orthonormal columns in Frobenius norm; treats all columns alike), by Newton-Schulz
        iterations ``X <- X (3 I - X^T X) / 2`` when ``||X^T X - I||_F < 0.5`` (the error ``E = X^T X - I``
        becomes ``-(3/4) E^2 + (1/4) E^3``, so iteration stops once ``||E||^2 <= tol``), else exactly through
        the eigendecomposition of ``X^T X``.
        ``"qr"``: the Q factor of ``X = QR`` with ``diag(R) > 0``.
        ``"none"``: ``X`` unchanged.
    tol : float, optional
        Target ``||X^T X - I||_F`` (default ``50 * eps(dtype) * sqrt(r)``).
    max_iter : int
    return_error : bool
        Also return ``||X^T X - I||_F`` of the input (computed on the way for "polar"; NaN for "none").
    check_every : int or None
        "polar" only: how often the error ``||E||_F`` is read back from the array (a device->host
        synchronisation on a GPU).  It is always measured before the first iteration (and after an exact eigh
        step); ``1`` (default) measures it before every Newton-Schulz step; ``k`` every ``k``-th step; ``None``
        never again.  Between measurements the error is predicted by the bound
        ``||E'||_F <= (3/4) ||E||_F^2 + (1/4) ||E||_F^3`` (``||E^k||_F <= ||E||_F^k``), which never under-states
        it, so the iteration never stops earlier than with measurements, only possibly one step later.  The
        per-step retraction of SSA uses ``None``: one synchronisation per matrix (or none, with ``error``).
    error : float, optional
        The known ``||X^T X - I||_F`` of ``X`` (a host float, e.g. from ``orthogonality_errors``, which reads
        many back at once); replaces the first measurement.

    Returns
    -------
    Y : array (m, r), a new array (``X`` itself for "none"); ``(Y, error)`` with ``return_error``.
    """
    if method not in RETRACTIONS:
        raise LinalgError(f"unknown retraction {method!r}; choose one of {', '.join(RETRACTIONS)}")
    if method == "none":
        return (X, float("nan")) if return_error else X
    _check_matrix(X, "X")
    m, r = X.shape
    if m < r:
        raise LinalgError(f"cannot retract X of shape {tuple(X.shape)} onto the Stiefel manifold: needs m >= r")
    if check_every is not None and (
        isinstance(check_every, bool) or not isinstance(check_every, numbers.Integral) or check_every < 1
    ):
        raise LinalgError(f"check_every must be an integer >= 1 or None, got {check_every!r}")
    check_every = None if check_every is None else int(check_every)
    if error is not None and not float(error) >= 0.0:
        raise LinalgError(f"error must be a number >= 0 (||X^T X - I||_F), got {error!r}")
    xp = get_array_module(X)
    if method == "qr":
        err0 = (orthogonality_error(X) if error is None else float(error)) if return_error else None
        Q, R = xp.linalg.qr(X)
        d = xp.sign(xp.diagonal(R))
        d = xp.where(d == 0, 1, d).astype(X.dtype)
        return (Q * d, err0) if return_error else Q * d
    tol = 50.0 * float(np.finfo(X.dtype).eps) * math.sqrt(r) if tol is None else float(tol)
    fused = kernels.enabled(xp)  # a device: the Newton-Schulz step as one kernel, no identity matrix
    eye = None  # the identity (r, r), made at its first use (the fused Newton-Schulz step needs none)
    err = None if error is None else float(error)  # None: measure before the next step
    Y, err0 = X, err
    since = 0  # Newton-Schulz steps since the last measurement
    for _ in range(int(max_iter)):
        if err is not None and (check_every is None or since < check_every):  # the bound stands for a measurement
            if err <= tol:  # predicted converged: no Gram matrix needed
                break
            G = Y.T @ Y
        else:
            G = Y.T @ Y
            eye = xp.eye(r, dtype=X.dtype) if eye is None else eye
            err = float(xp.linalg.norm(G - eye))
            since = 0
        err0 = err if err0 is None else err0
        if err <= tol:
            break
        if err >= 0.5:  # far from the manifold: exact polar factor via eigh of the Gram matrix
            w, Q = xp.linalg.eigh(G.astype(xp.float64) if X.dtype == np.float32 else G)
            if float(w.min()) <= 0.0:
                raise LinalgError(f"cannot retract: X of shape {tuple(X.shape)} is rank deficient")
            Qs = kernels.launch(xp, kernels.EIGEN_SCALE, Q, w, 1.0) if fused else Q * (1.0 / xp.sqrt(w))
            Y = Y @ (Qs @ Q.T).astype(X.dtype)
            err = None  # measure after the exact step
            continue
        if fused:  # Newton-Schulz step towards the polar factor, Y (1.5 I - 0.5 G) as 1.5 Y - 0.5 Y G
            Y = kernels.launch(xp, kernels.NEWTON_SCHULZ, Y, Y @ G, 1.5, 0.5)
        else:
            eye = xp.eye(r, dtype=X.dtype) if eye is None else eye
            Y = Y @ (1.5 * eye - 0.5 * G)  # Newton-Schulz step towards the polar factor
        if err * err <= tol:
            break
        err, since = 0.75 * err * err + 0.25 * err**3, since + 1  # bound on the new error
    Y = X.copy() if Y is X else Y
    return (Y, err0) if return_error else Y


def hoyer(s):
    """Hoyer sparsity measure ``||s||_1 / ||s||_2`` of the singular values ``s`` (r,) (section 4.4)."""
    xp = get_array_module(s)
    n2 = float(xp.linalg.norm(s))
    if n2 == 0.0:
        raise LinalgError("Hoyer measure of an all-zero vector is undefined")
    return float(xp.abs(s).sum()) / n2


def hoyer_grad(s):
    """Gradient of ``||s||_1 / ||s||_2`` w.r.t. ``s`` (r,): ``sign(s)/||s||_2 - ||s||_1 s / ||s||_2^3``."""
    xp = get_array_module(s)
    if kernels.enabled(xp):
        sg = xp.sign(s)
        return kernels.launch(xp, kernels.HOYER_GRAD, sg, s, sg @ s, s @ s)  # ||s||_1 = sign(s).s, ||s||_2^2
    n2 = xp.sqrt((s * s).sum())
    n1 = xp.abs(s).sum()
    return xp.sign(s) / n2 - (n1 / n2**3) * s


def retained_energy(s, keep):
    """Fraction ``sum_{j in keep} s_j^2 / sum_j s_j^2`` of the spectral energy kept by index set ``keep``."""
    tot = float((s * s).sum())
    return float((s[keep] ** 2).sum()) / tot if tot > 0 else 1.0


def energy_rank(s, energy, total=None):
    """Smallest ``r`` such that the ``r`` largest ``|s_j|`` hold at least ``energy`` of ``sum s_j^2``.

    Parameters
    ----------
    s : array (r0,)
    energy : float in (0, 1]
    total : float, optional
        The energy the share is measured against (default ``sum s_j^2`` of ``s`` itself).  With a reference
        energy (the rank schedule's ``relative`` reading: the spectrum at the start of the threshold phase) the
        rank is the smallest holding ``energy * total``, or ``len(s)`` when all of ``s`` holds less.
    """
    if not 0.0 < float(energy) <= 1.0:
        raise LinalgError(f"energy threshold must be in (0, 1], got {energy!r}")
    e = np.sort(np.asarray(_host(s), dtype=np.float64) ** 2)[::-1]
    tot = e.sum() if total is None else float(total)
    if tot <= 0.0:
        return 1
    cum = np.cumsum(e) / tot
    # tolerance so that energy=1.0 is reachable despite rounding in the cumulative sum
    return min(len(e), int(np.searchsorted(cum, float(energy) - 1e-12)) + 1)


def _host(a):
    from .backend import asnumpy

    return asnumpy(a)


def angle_deg(a, b) -> float:
    """Eq. (4): the angle in degrees between two arrays seen as flat vectors, ``arccos(<a, b> / (|a| |b|))``.

    The one implementation of eq. (4) in ssaref (alignment metrics, SSA's angle logging, the audit).  Evaluated as
    ``2 atan2(|u_a - u_b|, |u_a + u_b|)`` with ``u = a/|a|``: the same angle without arccos's loss of precision near
    0 and 180 degrees.  Any array module (numpy or cupy); computed in float64; one host read of the result.

    Parameters
    ----------
    a, b : arrays with the same number of elements (any shapes).

    Returns
    -------
    float in [0, 180]; nan when either has zero or non-finite norm.
    """
    a = a if hasattr(a, "dtype") else np.asarray(a)
    b = b if hasattr(b, "dtype") else np.asarray(b)
    xp = get_array_module(a, b)
    a = xp.asarray(a, dtype=xp.float64).reshape(-1)
    b = xp.asarray(b, dtype=xp.float64).reshape(-1)
    if a.size != b.size:
        raise LinalgError(f"angle_deg: arrays have {a.size} and {b.size} elements")
    na, nb = xp.linalg.norm(a), xp.linalg.norm(b)
    ua, ub = a / xp.where(na == 0, 1.0, na), b / xp.where(nb == 0, 1.0, nb)
    # one device->host transfer for the norms and the two distances together
    vals = _host(xp.stack([na, nb, xp.linalg.norm(ua - ub), xp.linalg.norm(ua + ub)]))
    na_h, nb_h, dm, dp = (float(v) for v in vals)
    if na_h == 0.0 or nb_h == 0.0 or not (math.isfinite(na_h) and math.isfinite(nb_h)):
        return float("nan")
    return math.degrees(2.0 * math.atan2(dm, dp))
