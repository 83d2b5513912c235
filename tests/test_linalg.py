"""ssaref.linalg: randomized SVD (accuracy, determinism), deterministic signs, Stiefel projections and
retractions, Hoyer measure and the energy rank."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ssaref import linalg as L

from _gradcheck import numerical_grad, rel_error


def _decaying(rng, m, n, decay):
    """A matrix (m, n) with singular values decay**j, random singular vectors."""
    k = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, k)))[0]
    V = np.linalg.qr(rng.standard_normal((n, k)))[0]
    s = decay ** np.arange(k)
    return (U * s) @ V.T, s


@given(m=st.integers(20, 70), n=st.integers(20, 70), k=st.integers(1, 8), seed=st.integers(0, 10 ** 6),
       decay=st.floats(0.6, 0.95))
def test_randomized_svd_error_near_optimal(m, n, k, seed, decay):
    rng = np.random.default_rng(seed)
    A, s = _decaying(rng, m, n, decay)
    assume(k + 5 < min(m, n))  # the randomized path, not the exact fallback
    U, sk, V = L.randomized_svd(A, k, oversample=5, n_iter=2, rng=np.random.default_rng(seed + 1))
    assert U.shape == (m, k) and sk.shape == (k,) and V.shape == (n, k)
    err = np.linalg.norm(A - (U * sk) @ V.T, 2)
    # Halko et al. Thm 10.6 / 10.8: the spectral error is a small multiple of sigma_{k+1}
    assert err <= 1.5 * s[k], (err, s[k])
    assert np.all(np.diff(sk) <= 1e-12)
    assert L.orthogonality_error(U) < 1e-12 and L.orthogonality_error(V) < 1e-12
    np.testing.assert_allclose(sk, s[:k], rtol=0.05)


def test_randomized_svd_deterministic_and_sign_fixed(rng):
    A, _ = _decaying(rng, 60, 40, 0.8)
    a = L.randomized_svd(A, 6, rng=np.random.default_rng(7))
    b = L.randomized_svd(A, 6, rng=np.random.default_rng(7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    U = a[0]
    assert np.all(U[np.argmax(np.abs(U), axis=0), np.arange(6)] > 0)
    # agrees with the exact SVD's leading triplets (signs fixed alike)
    Ue, se, Ve = L.svd(A, 6)
    np.testing.assert_allclose(a[1], se, rtol=1e-6)
    np.testing.assert_allclose(np.abs(U.T @ Ue), np.eye(6), atol=1e-4)
    np.testing.assert_allclose(U, Ue, atol=1e-4)


def test_randomized_svd_falls_back_to_exact_when_oversampled(rng):
    A = rng.standard_normal((30, 12))
    U, s, V = L.randomized_svd(A, 12)
    np.testing.assert_allclose((U * s) @ V.T, A, atol=1e-12)


@pytest.mark.parametrize("bad", [0, 13, 2.0, True])
def test_randomized_svd_bad_rank(bad, rng):
    with pytest.raises(L.LinalgError, match="rank k"):
        L.randomized_svd(rng.standard_normal((12, 20)), bad)


def test_svd_bad_input():
    with pytest.raises(L.LinalgError, match="2-D"):
        L.svd(np.zeros(3))
    with pytest.raises(L.LinalgError, match="floating"):
        L.svd(np.zeros((3, 3), dtype=np.int64))


def test_svd_keeps_dtype(rng):
    A = rng.standard_normal((9, 5)).astype(np.float32)
    U, s, V = L.svd(A)
    assert U.dtype == s.dtype == V.dtype == np.float32
    np.testing.assert_allclose((U * s) @ V.T, A, atol=1e-5)


@given(m=st.integers(2, 12), r=st.integers(1, 12), seed=st.integers(0, 10 ** 6))
def test_tangent_projection_properties(m, r, seed):
    assume(r <= m)
    rng = np.random.default_rng(seed)
    X = np.linalg.qr(rng.standard_normal((m, r)))[0]
    G = rng.standard_normal((m, r))
    P = L.tangent_project(X, G)
    S = X.T @ P
    np.testing.assert_allclose(S, -S.T, atol=1e-12)                 # X^T P skew: tangent vector
    np.testing.assert_allclose(L.tangent_project(X, P), P, atol=1e-12)  # idempotent
    # orthogonal projection: G - P is normal (X times a symmetric matrix), orthogonal to P
    assert abs(np.sum((G - P) * P)) < 1e-10


def test_complement_projection_kills_square_orthogonal_and_tangent_span(rng):
    """Evidence for docs: (I - U U^T) G is zero for square orthogonal U and discards U Omega (skew Omega),
    which the Stiefel tangent projection keeps."""
    U = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    G = rng.standard_normal((6, 6))
    assert np.abs(L.complement_project(U, G)).max() < 1e-12
    assert np.linalg.norm(L.tangent_project(U, G)) > 0.5
    U = np.linalg.qr(rng.standard_normal((8, 3)))[0]
    Om = rng.standard_normal((3, 3)); Om = Om - Om.T
    T = U @ Om                                                        # a tangent vector
    np.testing.assert_allclose(L.tangent_project(U, T), T, atol=1e-12)
    assert np.abs(L.complement_project(U, T)).max() < 1e-12


@pytest.mark.parametrize("method", ["polar", "qr"])
@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0])
def test_retract_onto_manifold(method, scale, rng):
    Q = np.linalg.qr(rng.standard_normal((20, 7)))[0]
    X = Q + scale * rng.standard_normal(Q.shape)
    Y = L.retract(X, method)
    assert L.orthogonality_error(Y) < 1e-12
    if method == "polar":  # the polar factor: U_x V_x^T of X's SVD
        Ux, _, Vtx = np.linalg.svd(X, full_matrices=False)
        np.testing.assert_allclose(Y, Ux @ Vtx, atol=1e-12)
    else:
        R = Y.T @ X
        np.testing.assert_allclose(np.tril(R, -1), 0, atol=1e-12)
        assert np.all(np.diag(R) > 0)


def test_retract_float32_and_error(rng):
    Q = np.linalg.qr(rng.standard_normal((30, 10)))[0]
    X = (Q + 1e-3 * rng.standard_normal(Q.shape)).astype(np.float32)
    Y, err = L.retract(X, return_error=True)
    assert Y.dtype == np.float32
    assert err == pytest.approx(L.orthogonality_error(X), rel=1e-4)
    assert L.orthogonality_error(Y) < 1e-5
    assert L.retract(X, "none") is X
    with pytest.raises(L.LinalgError, match="retraction"):
        L.retract(X, "cayley")
    with pytest.raises(L.LinalgError, match="m >= r"):
        L.retract(X.T, "polar")


@given(r=st.integers(2, 10), seed=st.integers(0, 10 ** 6))
def test_hoyer_gradient_fd(r, seed):
    s = np.random.default_rng(seed).uniform(0.2, 2.0, r) * np.random.default_rng(seed + 1).choice([-1, 1], r)
    g = L.hoyer_grad(s)
    num = numerical_grad(lambda v: L.hoyer(v), s)
    assert rel_error(g, num) < 1e-7
    assert 1.0 <= L.hoyer(s) <= np.sqrt(r) + 1e-12


@given(s=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=20), energy=st.floats(0.01, 1.0))
def test_energy_rank_minimal(s, energy):
    s = np.array(s)
    assume(np.sum(s ** 2) > 1e-6)
    r = L.energy_rank(s, energy)
    e = np.sort(s ** 2)[::-1]
    assert e[:r].sum() >= energy * e.sum() * (1 - 1e-9)
    if r > 1:
        assert e[:r - 1].sum() < energy * e.sum()


@pytest.mark.gpu
def test_randomized_svd_gpu_matches_cpu(rng):
    import cupy as cp
    A, _ = _decaying(rng, 80, 50, 0.8)
    a = L.randomized_svd(A, 5, rng=np.random.default_rng(3))
    b = L.randomized_svd(cp.asarray(A), 5, rng=np.random.default_rng(3))
    for x, y in zip(a, b):
        np.testing.assert_allclose(cp.asnumpy(y), x, atol=1e-8)
    Y = L.retract(cp.asarray(A[:, :5] / np.linalg.norm(A[:, :5], axis=0)))
    assert L.orthogonality_error(Y) < 1e-12


def test_orthogonality_errors_batch(rng):
    Xs = [rng.standard_normal((6, 3)), np.linalg.qr(rng.standard_normal((5, 5)))[0], rng.standard_normal((4, 1))]
    assert L.orthogonality_errors(Xs) == pytest.approx([L.orthogonality_error(X) for X in Xs], rel=1e-15)
    assert L.orthogonality_errors([]) == []


@pytest.mark.parametrize("scale", [0.0, 1e-6, 1e-3, 3e-2, 1.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("check_every,given", [(None, False), (None, True), (2, False), (1, True)])
def test_retract_polar_with_fewer_error_checks(scale, dtype, check_every, given, rng):
    """check_every / error: the same polar factor, to rounding, as the default that measures every step."""
    Q = np.linalg.qr(rng.standard_normal((20, 7)))[0]
    X = (Q + scale * rng.standard_normal(Q.shape)).astype(dtype)
    e = L.orthogonality_error(X)
    ref, err_ref = L.retract(X, return_error=True)
    Y, err = L.retract(X, return_error=True, check_every=check_every, error=e if given else None)
    assert Y.dtype == dtype and Y is not X
    assert err == pytest.approx(err_ref, rel=1e-6)
    tol = 50 * np.finfo(dtype).eps * np.sqrt(7)       # retract's default target
    assert L.orthogonality_error(Y) <= tol
    np.testing.assert_allclose(Y, ref, atol=tol)


def test_retract_check_every_none_reads_the_error_once(rng, monkeypatch):
    """Near the manifold, check_every=None measures ||X^T X - I|| once (none with ``error``); the default once per
    Newton-Schulz step."""
    calls = []
    norm = np.linalg.norm
    monkeypatch.setattr(np.linalg, "norm", lambda *a, **k: calls.append(1) or norm(*a, **k))
    Q = np.linalg.qr(rng.standard_normal((30, 6)))[0]
    X = Q + 1e-3 * rng.standard_normal(Q.shape)
    e = float(norm(X.T @ X - np.eye(6)))
    L.retract(X)
    n_default = len(calls)
    calls.clear(); L.retract(X, check_every=None)
    assert n_default >= 2 and len(calls) == 1
    calls.clear(); Y = L.retract(X, check_every=None, error=e)
    assert len(calls) == 0
    np.testing.assert_allclose(Y, L.retract(X), atol=1e-12)


def test_retract_check_arguments(rng):
    X = np.linalg.qr(rng.standard_normal((5, 3)))[0]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(L.LinalgError, match="check_every"):
            L.retract(X, check_every=bad)
    with pytest.raises(L.LinalgError, match="error"):
        L.retract(X, error=-1.0)
    assert L.retract(X, "qr", return_error=True, error=0.25)[1] == 0.25
