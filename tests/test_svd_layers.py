"""SVDLinear / SVDConv2d against the dense layer with the reconstructed weight (PyTorch oracle, float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from ssaref.nn.layers import Conv2d, Linear
from ssaref.nn.svd_layers import (SVDConv2d, SVDLinear, kernel_to_matrix, matrix_to_kernel,
                                  to_svd_layer)



def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


def _factors(rng, m, n, r):
    """Generic point: factors slightly off orthonormal, singular values away from 1."""
    U = np.linalg.qr(rng.standard_normal((m, r)))[0] + 0.05 * rng.standard_normal((m, r))
    V = np.linalg.qr(rng.standard_normal((n, r)))[0] + 0.05 * rng.standard_normal((n, r))
    s = rng.uniform(0.2, 3.0, r)
    return U, s, V


@given(B=st.integers(1, 5), m=st.integers(1, 9), n=st.integers(1, 9), r=st.integers(1, 9),
       bias=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_svd_linear_matches_torch(B, m, n, r, bias, seed):
    assume(r <= min(m, n))
    rng = np.random.default_rng(seed)
    U, s, V = _factors(rng, m, n, r)
    b = rng.standard_normal(m) if bias else None
    layer = SVDLinear(U, s, V, b)
    x, dy = rng.standard_normal((B, n)), rng.standard_normal((B, m))
    y, cache = layer.forward(x)
    dx, g = layer.backward(dy, cache)
    # oracle: torch autograd through W = U diag(s) V^T and F.linear
    Ut, st_, Vt, xt = _t(U), _t(s), _t(V), _t(x)
    bt = _t(b) if bias else None
    W = Ut @ torch.diag(st_) @ Vt.T
    yt = F.linear(xt, W, bt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, t in (("U", Ut), ("s", st_), ("V", Vt)):
        np.testing.assert_allclose(g[name], t.grad.numpy(), rtol=1e-10, atol=1e-12)
    if bias:
        np.testing.assert_allclose(g["b"], bt.grad.numpy(), rtol=1e-10, atol=1e-12)
    else:
        assert "b" not in g
    # G V and G^T U with G = dL/dW, and the reconstructed dense gradient
    Gt = torch.tensor(dy).T @ torch.tensor(x)
    GV, GtU = layer.dense_products(dy, cache)
    np.testing.assert_allclose(GV, (Gt @ torch.tensor(V)).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(GtU, (Gt.T @ torch.tensor(U)).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.dense_grad(dy, cache), Gt.numpy(), rtol=1e-10, atol=1e-12)


def test_svd_linear_from_dense_is_same_function(rng):
    dense = Linear(7, 5, xp=np, dtype=np.float64, rng=rng)
    svdl = SVDLinear.from_dense(dense)
    assert svdl.rank == 5 and svdl.params["U"].shape == (5, 5) and svdl.params["V"].shape == (7, 5)
    x = rng.standard_normal((4, 7))
    np.testing.assert_allclose(svdl.forward(x)[0], dense.forward(x)[0], atol=1e-12)
    np.testing.assert_allclose(svdl.matrix(), dense.params["W"], atol=1e-12)
    assert svdl.param_count() == 5 * (5 + 7 + 1) + 5 and svdl.flops() == 5 * (5 + 7 + 1)
    # forward never forms W: the factored pass is z = x V then (z) (U S)^T
    y, (xc, z) = svdl.forward(x)
    np.testing.assert_allclose(z, x @ svdl.params["V"])


def test_svd_linear_truncate_and_feedback(rng):
    U, s, V = _factors(rng, 6, 8, 5)
    layer = SVDLinear(U, s, V, rng.standard_normal(6))
    layer.truncate(np.array([0, 2, 4]))
    assert layer.rank == 3
    np.testing.assert_array_equal(layer.params["s"], s[[0, 2, 4]])
    x, dy = rng.standard_normal((3, 8)), rng.standard_normal((3, 6))
    Bfb = rng.standard_normal((6, 8))
    dx, _ = layer.backward(dy, layer.forward(x)[1], feedback={"W": Bfb})
    np.testing.assert_allclose(dx, dy @ Bfb)


def test_svd_linear_bad_input(rng):
    U, s, V = _factors(rng, 4, 5, 3)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        SVDLinear(U, s, V).forward(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match="SVD factors"):
        SVDLinear(U, s[:2], V)
    with pytest.raises(ValueError, match="rank"):
        SVDLinear(np.zeros((2, 3)), np.ones(3), np.zeros((5, 3)))


@given(N=st.integers(1, 4), C=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sy=st.integers(1, 2), sx=st.integers(1, 2), ph=st.integers(0, 2), pw=st.integers(0, 2),
       H=st.integers(3, 7), W=st.integers(3, 7), seed=st.integers(0, 10 ** 6))
def test_svd_conv_full_rank_equals_dense_conv(N, C, kh, kw, sy, sx, ph, pw, H, W, seed):
    """At full rank the two-convolution layer is the dense convolution with the reconstructed kernel."""
    rng = np.random.default_rng(seed)
    dense = Conv2d(C, N, (kh, kw), stride=(sy, sx), padding=(ph, pw), xp=np, dtype=np.float64, rng=rng)
    layer = SVDConv2d.from_dense(dense)
    assert layer.rank == min(N * kw, C * kh)
    np.testing.assert_allclose(layer.kernel_tensor(), dense.params["W"], atol=1e-12)
    x = rng.standard_normal((2, C, H, W))
    y, _ = layer.forward(x)
    yt = F.conv2d(torch.tensor(x), torch.tensor(dense.params["W"]), torch.tensor(dense.params["b"]),
                  stride=(sy, sx), padding=(ph, pw))
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-10, atol=1e-12)


@given(N=st.integers(1, 4), C=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sy=st.integers(1, 2), sx=st.integers(1, 2), ph=st.integers(0, 1), pw=st.integers(0, 1),
       rfrac=st.floats(0.1, 1.0), bias=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_svd_conv_forward_backward_match_torch(N, C, kh, kw, sy, sx, ph, pw, rfrac, bias, seed):
    rng = np.random.default_rng(seed)
    m, n = N * kw, C * kh
    r = max(1, int(rfrac * min(m, n)))
    U, s, V = _factors(rng, m, n, r)
    b = rng.standard_normal(N) if bias else None
    layer = SVDConv2d(U, s, V, b, c_out=N, c_in=C, kernel=(kh, kw), stride=(sy, sx), padding=(ph, pw))
    x = rng.standard_normal((2, C, 5, 6))
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx, g = layer.backward(dy, cache)
    # oracle: the dense kernel from the factors in torch (K[n,c,h,w] = sum_j U[n*kw+w, j] s_j V[c*kh+h, j])
    Ut, st_, Vt, xt = _t(U), _t(s), _t(V), _t(x)
    bt = _t(b) if bias else None
    K = torch.einsum("nwj,j,chj->nchw",
                     Ut.reshape(N, kw, r), st_, Vt.reshape(C, kh, r))
    yt = F.conv2d(xt, K, bt, stride=(sy, sx), padding=(ph, pw))
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-11)
    for name, t in (("U", Ut), ("s", st_), ("V", Vt)):
        np.testing.assert_allclose(g[name], t.grad.numpy(), rtol=1e-9, atol=1e-11)
    if bias:
        np.testing.assert_allclose(g["b"], bt.grad.numpy(), rtol=1e-10, atol=1e-11)
    # G = dL/dK' (the kernel matrix), G V and G^T U
    Kd = K.detach().clone().requires_grad_(True)
    F.conv2d(torch.tensor(x), Kd, None, stride=(sy, sx), padding=(ph, pw)).backward(torch.tensor(dy))
    G = Kd.grad.permute(0, 3, 1, 2).reshape(m, n).numpy()          # K'[n*kw + w, c*kh + h]
    np.testing.assert_allclose(layer.dense_grad(dy, cache), G, rtol=1e-10, atol=1e-11)
    GV, GtU = layer.dense_products(dy, cache)
    np.testing.assert_allclose(GV, G @ V, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(GtU, G.T @ U, rtol=1e-9, atol=1e-11)


def test_kernel_matrix_mapping_roundtrip_and_printed_mapping_shapes(rng):
    K = rng.standard_normal((4, 3, 2, 5))                  # N, C, H, W
    M = kernel_to_matrix(K)
    assert M.shape == (4 * 5, 3 * 2)                       # K' in R^{NW x CH} as printed
    np.testing.assert_array_equal(matrix_to_kernel(M, 4, 3, 2, 5), K)
    layer = SVDConv2d.from_dense(type("D", (), {"params": {"W": K, "b": None}, "stride": (1, 1),
                                                "padding": (0, 0)})())
    K1, K2 = layer.kernels()
    r = layer.rank
    # U (NW x r) fills K2 (N, r, 1, W) and V (CH x r) fills K1 (r, C, H, 1): the printed "U sqrt(S) -> K1
    # (r x C x H x 1)" would need U to have C*H = 6 rows, it has N*W = 20.
    assert layer.params["U"].shape == (20, r) and layer.params["V"].shape == (6, r)
    assert K1.shape == (r, 3, 2, 1) and K2.shape == (4, r, 1, 5)
    assert layer.params["U"].size != r * 3 * 2 * 1


def test_to_svd_layer_and_conv_bad_input(rng):
    assert to_svd_layer(Linear(3, 2, xp=np, dtype=np.float32, rng=rng)).kind == "svd_linear"
    conv = to_svd_layer(Conv2d(2, 3, 3, padding=1, xp=np, dtype=np.float32, rng=rng))
    assert conv.kind == "svd_conv2d" and conv.params["U"].dtype == np.float32
    assert conv.output_shape((2, 8, 8)) == (3, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        conv.forward(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="rows"):
        SVDConv2d(np.zeros((5, 2)), np.ones(2), np.zeros((6, 2)), None, c_out=3, c_in=2, kernel=3)
