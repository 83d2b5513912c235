"""Layers held in SVD space, eq. (5): ``W = U diag(s) V^T``, computed in factored form.

``SVDLinear`` keeps ``U`` (m, r), ``s`` (r,), ``V`` (n, r) and ``b`` (m,) and never forms ``W`` in the forward
pass: ``z = x V`` (B, r), then ``y = z (U diag(s))^T + b``.

``SVDConv2d`` uses the spatial decomposition of section 4.1.  A kernel ``K`` (N, C, kh, kw) is read as the
matrix ``K'`` (N*kw, C*kh) with ``K'[n*kw + w, c*kh + h] = K[n, c, h, w]``; its SVD ``K' = U diag(s) V^T``
splits the convolution into two: ``z = conv(x, K1)`` with ``K1 = V^T`` reshaped to (r, C, kh, 1) (stride
(sy, 1), padding (ph, 0)) and ``y = conv(z, K2) + b`` with ``K2 = U diag(s)`` reshaped to (N, r, 1, kw) (stride
(1, sx), padding (0, pw)).  Then ``y[n,i,j] = sum_{c,h,w} K[n,c,h,w] xpad[c, i*sy+h, j*sx+w]``, the dense
convolution with the reconstructed kernel.  The paper prints the assignment the other way round ("U sqrt(S)
reshaped into K1 (r, C, H, 1)"), which cannot hold: U has N*W rows, K1 needs C*H of them (docs/decisions.md).
``s`` is folded into the second kernel instead of splitting it as ``sqrt(S)`` between both; the function is
the same and ``s`` stays one parameter.

``backward`` returns the true gradients w.r.t. ``U``, ``s``, ``V``, ``b`` (so BP through these layers, SVD-BP,
works with the generic chain).  With ``G = dL/dW`` the gradient w.r.t. the reconstructed matrix,
``dU = G V diag(s)``, ``ds = diag(U^T G V)``, ``dV = G^T U diag(s)``; ``dense_products`` returns ``G V`` and
``G^T U`` themselves (eqs. (11)-(13) are written with them) without forming ``G``.
"""

from __future__ import annotations


import numpy as np

from ..backend import asnumpy, get_array_module
from ..linalg import svd as _svd
from .containers import collect
from .layers import Layer, _pair

__all__ = [
    "SVDLinear",
    "SVDConv2d",
    "SVD_KINDS",
    "kernel_to_matrix",
    "matrix_to_kernel",
    "to_svd_layer",
    "convert_model",
    "svd_layers_of",
]

SVD_KINDS = ("svd_linear", "svd_conv2d")


def _host_svd(W2):
    """SVD of a weight matrix computed on the host in float64 (same factors on CPU and GPU), cast back."""
    xp = get_array_module(W2)
    U, s, V = _svd(np.asarray(asnumpy(W2), dtype=np.float64))
    dt = W2.dtype
    return (xp.asarray(U.astype(dt)), xp.asarray(s.astype(dt)), xp.asarray(V.astype(dt)))


def kernel_to_matrix(K):
    """Kernel ``K`` (N, C, kh, kw) -> ``K'`` (N*kw, C*kh), ``K'[n*kw + w, c*kh + h] = K[n, c, h, w]``."""
    N, C, kh, kw = K.shape
    return K.transpose(0, 3, 1, 2).reshape(N * kw, C * kh)


def matrix_to_kernel(M, N, C, kh, kw):
    """Inverse of ``kernel_to_matrix``: ``M`` (N*kw, C*kh) -> kernel (N, C, kh, kw)."""
    if M.shape != (N * kw, C * kh):
        raise ValueError(f"matrix of shape {tuple(M.shape)} is not a ({N}*{kw}, {C}*{kh}) kernel matrix")
    return M.reshape(N, kw, C, kh).transpose(0, 2, 3, 1)


class SVDLayer(Layer):
    """Shared bookkeeping: dims, rank, counts, truncation."""

    @property
    def rank(self) -> int:
        return int(self.params["s"].shape[0])

    @property
    def dims(self):
        """``(m, n)``: rows of ``U`` and of ``V``."""
        return int(self.params["U"].shape[0]), int(self.params["V"].shape[0])

    @property
    def full_rank(self) -> int:
        return min(self.dims)

    def param_count(self) -> int:
        """Trainable numbers: ``r (m + n + 1)`` plus the bias."""
        return sum(int(v.size) for v in self.params.values())

    def flops(self) -> int:
        """Inference multiply-adds of the factored product per output position: ``r (m + n + 1)``."""
        m, n = self.dims
        return self.rank * (m + n + 1)

    def matrix(self):
        """The reconstructed matrix ``U diag(s) V^T`` (m, n) (metrics and tests only)."""
        p = self.params
        return (p["U"] * p["s"]) @ p["V"].T

    def weight_change(self, dU, ds, dV):
        """First-order change of ``W = U diag(s) V^T`` along directions ``dU`` (m, r), ``ds`` (r,), ``dV`` (n, r):
        ``dW = dU S V^T + U dS V^T + U S dV^T`` (m, n) (for a conv layer in kernel-matrix form ``K'``)."""
        U, s, V = (self.params[n] for n in ("U", "s", "V"))
        return (dU * s) @ V.T + (U * ds) @ V.T + (U * s) @ dV.T

    def truncate(self, keep):
        """Keep the singular triplets ``keep`` (index array, ascending); returns the new (U, s, V) arrays.

        Replaces the arrays in ``params`` (the caller re-collects the model and tells the optimiser).
        """
        p = self.params
        xp = get_array_module(p["U"])
        keep = xp.asarray(keep)
        p["U"] = xp.ascontiguousarray(p["U"][:, keep])
        p["s"] = xp.ascontiguousarray(p["s"][keep])
        p["V"] = xp.ascontiguousarray(p["V"][:, keep])
        return p["U"], p["s"], p["V"]

    def _init_params(self, U, s, V, b):
        xp = get_array_module(U, s, V, b)
        r = int(s.shape[0])
        if U.ndim != 2 or V.ndim != 2 or s.ndim != 1 or U.shape[1] != r or V.shape[1] != r:
            raise ValueError(
                f"SVD factors must be U (m, r), s (r,), V (n, r); got U{tuple(U.shape)}, "
                f"s{tuple(s.shape)}, V{tuple(V.shape)}"
            )
        if r < 1 or r > min(U.shape[0], V.shape[0]):
            raise ValueError(f"rank r={r} must be in [1, min(m, n) = {min(U.shape[0], V.shape[0])}]")
        self.params["U"] = xp.ascontiguousarray(U)
        self.params["s"] = xp.ascontiguousarray(s)
        self.params["V"] = xp.ascontiguousarray(V)
        if b is not None:
            self.params["b"] = xp.ascontiguousarray(b)

    def __repr__(self):
        m, n = self.dims
        return f"{type(self).__name__}(m={m}, n={n}, r={self.rank}, bias={'b' in self.params})"


class SVDLinear(SVDLayer):
    """``y = x W^T + b`` with ``W = U diag(s) V^T`` (eq. (5)), ``W`` of shape (m, n) = (d_i, d_{i-1}).

    Parameters
    ----------
    U : array (m, r)
    s : array (r,)
    V : array (n, r)
    b : array (m,) or None
    """

    kind = "svd_linear"

    def __init__(self, U, s, V, b=None):
        super().__init__()
        self._init_params(U, s, V, b)

    @classmethod
    def from_dense(cls, layer):
        """Full-rank (r0 = min(m, n)) SVD of a ``Linear`` layer's weight; same function as the dense layer."""
        U, s, V = _host_svd(layer.params["W"])
        b = layer.params.get("b")
        return cls(U, s, V, None if b is None else b.copy())

    def forward(self, x, train=True):
        p = self.params
        if x.ndim != 2 or x.shape[1] != p["V"].shape[0]:
            raise ValueError(f"SVDLinear expects input (B, {p['V'].shape[0]}), got {tuple(x.shape)}")
        z = x @ p["V"]  # (B, r)
        y = z @ (p["U"] * p["s"]).T  # (B, m): y = x V diag(s) U^T
        if "b" in p:
            y += p["b"]
        return y, (x, z)

    def backward(self, dy, cache, need_dx=True, feedback=None):
        """True gradients.  ``GV = dy^T z`` (= G V with G = dy^T x);  ``dU = GV diag(s)``,
        ``ds = diag(U^T G V) = sum_i U_ij GV_ij``;  ``g = dy U``, ``dz = g diag(s)``, ``dV = x^T dz``,
        ``dx = dz V^T`` (or ``dy @ feedback["W"]``);  ``db = sum_batch dy``."""
        x, z = cache
        p = self.params
        GV = dy.T @ z  # (m, r)
        grads = {"U": GV * p["s"], "s": (p["U"] * GV).sum(axis=0)}
        dz = (dy @ p["U"]) * p["s"]  # (B, r)
        grads["V"] = x.T @ dz  # (n, r)
        if "b" in p:
            grads["b"] = dy.sum(axis=0)
        dx = None
        if need_dx:
            if feedback and "W" in feedback:
                dx = dy @ feedback["W"]
            else:
                dx = dz @ p["V"].T  # (B, n)
        return dx, grads

    def dense_products(self, dy, cache):
        """``(G V (m, r), G^T U (n, r))`` for ``G = dy^T x`` (m, n), the gradient w.r.t. ``W``, unformed."""
        x, z = cache
        return dy.T @ z, x.T @ (dy @ self.params["U"])

    def dense_grad(self, dy, cache):
        """``G = dy^T x`` (m, n): the gradient w.r.t. the reconstructed ``W`` (metrics only)."""
        return dy.T @ cache[0]

    def output_shape(self, in_shape):
        return (self.dims[0],)


def _conv_ops():
    from ..ops import conv as conv_ops  # imported lazily: the op module is optional for linear-only use

    return conv_ops


class SVDConv2d(SVDLayer):
    """Convolution with kernel ``K`` (N, C, kh, kw) held as the SVD of ``K'`` (N*kw, C*kh) (module doc).

    Parameters
    ----------
    U : array (N*kw, r)
    s : array (r,)
    V : array (C*kh, r)
    b : array (N,) or None
    c_out, c_in : int
    kernel, stride, padding : int or (int, int)
    """

    kind = "svd_conv2d"

    def __init__(self, U, s, V, b, *, c_out, c_in, kernel, stride=1, padding=0):
        super().__init__()
        self.kernel, self.stride, self.padding = _pair(kernel), _pair(stride), _pair(padding)
        self.c_out, self.c_in = int(c_out), int(c_in)
        kh, kw = self.kernel
        if U.shape[0] != self.c_out * kw or V.shape[0] != self.c_in * kh:
            raise ValueError(
                f"SVDConv2d: U must have N*kw = {self.c_out * kw} rows and V C*kh = "
                f"{self.c_in * kh} rows, got U{tuple(U.shape)}, V{tuple(V.shape)}"
            )
        self._init_params(U, s, V, b)

    @classmethod
    def from_dense(cls, layer):
        """Full-rank SVD of a ``Conv2d`` layer's kernel matrix; same function as the dense layer."""
        K = layer.params["W"]
        N, C, kh, kw = K.shape
        U, s, V = _host_svd(kernel_to_matrix(K))
        b = layer.params.get("b")
        return cls(
            U,
            s,
            V,
            None if b is None else b.copy(),
            c_out=N,
            c_in=C,
            kernel=(kh, kw),
            stride=layer.stride,
            padding=layer.padding,
        )

    def kernels(self):
        """``(K1 (r, C, kh, 1), K2 (N, r, 1, kw))`` with ``K2`` built from ``U`` alone (no ``s``)."""
        p, (kh, kw), r = self.params, self.kernel, self.rank
        K1 = p["V"].T.reshape(r, self.c_in, kh, 1)
        K2 = p["U"].reshape(self.c_out, kw, r).transpose(0, 2, 1).reshape(self.c_out, r, 1, kw)
        return K1, K2

    def kernel_tensor(self):
        """The reconstructed dense kernel (N, C, kh, kw) (metrics and tests only)."""
        return matrix_to_kernel(self.matrix(), self.c_out, self.c_in, *self.kernel)

    def forward(self, x, train=True):
        if x.ndim != 4 or x.shape[1] != self.c_in:
            raise ValueError(f"SVDConv2d expects input (B, {self.c_in}, H, W), got {tuple(x.shape)}")
        ops = _conv_ops()
        (sy, sx), (ph, pw) = self.stride, self.padding
        K1, K2 = self.kernels()
        recompute = ops.resolved_save(get_array_module(x)) == "recompute"
        save = "input" if recompute else None
        z, c1 = ops.conv2d_forward(x, K1, None, (sy, 1), (ph, 0), save=save)  # (B, r, Ho, W): height pass
        K2s = K2 * self.params["s"][None, :, None, None]  # s folded into the 2nd kernel
        y, c2 = ops.conv2d_forward(z, K2s, self.params.get("b"), (1, sx), (0, pw), save=save)  # width pass
        if recompute:  # save mode "recompute": z is not kept, the backward makes it again (_width_cache)
            return y, (c1, None, None, x)
        return y, (c1, c2, z, x)

    def _width_cache(self, cache):
        """The width pass's cache: the forward's, or in save mode "recompute" its input ``z`` made again by the
        height pass (the same op on the same ``x`` and ``V``: the forward's ``z`` bit for bit)."""
        c1, c2, _, x = cache
        if c2 is not None:
            return c2
        ops = _conv_ops()
        (sy, sx), (ph, pw) = self.stride, self.padding
        z, _ = ops.conv2d_forward(x, self.kernels()[0], None, (sy, 1), (ph, 0), save="input")
        return ops.input_cache(z, (1, self.kernel[1]), (1, sx), (0, pw), "b" in self.params)

    def _kernel_grad_to_U(self, dK2):
        r, kw = self.rank, self.kernel[1]
        return dK2.reshape(self.c_out, r, kw).transpose(0, 2, 1).reshape(self.c_out * kw, r)

    def backward(self, dy, cache, need_dx=True, feedback=None):
        """True gradients: ``GV`` = weight gradient of the width pass (input ``z``) in ``U``'s layout;
        ``dU = GV diag(s)``, ``ds = sum_i U_ij GV_ij``; ``g`` = input gradient of the width pass through ``K2``
        (from ``U`` alone), ``dz = g diag(s)``; ``dV`` = weight gradient of the height pass for ``dz``;
        ``dx`` = its input gradient."""
        if feedback and "W" in feedback:
            raise ValueError("SVDConv2d does not take a feedback kernel (no FA-type rule runs on SVD layers)")
        c1, c2 = cache[0], self._width_cache(cache)
        ops = _conv_ops()
        p = self.params
        K1, K2 = self.kernels()
        dK2s, db = ops.conv2d_backward_params(dy, c2)
        GV = self._kernel_grad_to_U(dK2s)
        grads = {"U": GV * p["s"], "s": (p["U"] * GV).sum(axis=0)}
        g = ops.conv2d_backward_input(dy, K2, c2)
        dz = g * p["s"][None, :, None, None]
        dK1, _ = ops.conv2d_backward_params(dz, c1)
        grads["V"] = dK1.reshape(self.rank, -1).T
        if "b" in p:
            grads["b"] = db
        dx = ops.conv2d_backward_input(dz, K1, c1) if need_dx else None
        return dx, grads

    def dense_products(self, dy, cache):
        """``(G V (N*kw, r), G^T U (C*kh, r))`` with ``G`` the gradient w.r.t. ``K'``, unformed."""
        c1, c2 = cache[0], self._width_cache(cache)
        ops = _conv_ops()
        _, K2 = self.kernels()
        dK2s, _ = ops.conv2d_backward_params(dy, c2)
        g = ops.conv2d_backward_input(dy, K2, c2)
        dK1, _ = ops.conv2d_backward_params(g, c1)
        return self._kernel_grad_to_U(dK2s), dK1.reshape(self.rank, -1).T

    def dense_grad(self, dy, cache):
        """``G`` (N*kw, C*kh): gradient w.r.t. ``K'`` of the dense convolution (metrics only)."""
        from ..ops.im2col import im2col

        x = cache[3]
        (kh, kw), (sy, sx), (ph, pw) = self.kernel, self.stride, self.padding
        col = im2col(x, kh, kw, sy, sx, ph, pw)  # (C, kh, kw, Ho, Wo, B)
        col2 = col.reshape(self.c_in * kh * kw, -1)
        dy2 = dy.transpose(1, 2, 3, 0).reshape(self.c_out, -1)  # (N, Ho*Wo*B)
        dK = (dy2 @ col2.T).reshape(self.c_out, self.c_in, kh, kw)
        return kernel_to_matrix(dK)

    def output_shape(self, in_shape):
        c, h, w = in_shape
        (kh, kw), (sy, sx), (py, px) = self.kernel, self.stride, self.padding
        return (self.c_out, (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1)

    def geometry(self):
        return {
            "stride": self.stride,
            "padding": self.padding,
            "kernel": self.kernel,
            "c_in": self.c_in,
            "c_out": self.c_out,
        }

    def __repr__(self):
        return (
            f"SVDConv2d({self.c_in}->{self.c_out}, kernel={self.kernel}, stride={self.stride}, "
            f"padding={self.padding}, r={self.rank}/{self.full_rank})"
        )


def to_svd_layer(layer):
    """The SVD-space counterpart of a dense ``Linear`` / ``Conv2d`` layer, or ``None`` for other layers."""
    if getattr(layer, "kind", None) == "linear" and "W" in layer.params:
        return SVDLinear.from_dense(layer)
    if getattr(layer, "kind", None) == "conv2d" and "W" in layer.params:
        return SVDConv2d.from_dense(layer)
    return None


# ---------------------------------------------------------------------------------------------------
# model surgery: dense layers -> SVD-space layers
# ---------------------------------------------------------------------------------------------------
def _convert(layer):
    children = getattr(layer, "children", None)
    if not children:
        return
    for name, child in list(children.items()):
        new = to_svd_layer(child)
        if new is None:
            _convert(child)
            continue
        children[name] = new
        if hasattr(layer, "layers"):  # Sequential: keep ``layers`` and ``children`` in step
            layer.layers[int(name)] = new
        elif hasattr(layer, name):  # ResidualBlock-style attribute children
            setattr(layer, name, new)


def convert_model(model):
    """Replace every ``Linear`` / ``Conv2d`` of ``model`` (recursively) by its full-rank SVD layer, in place."""
    _convert(model)
    collect(model)
    return model


def svd_layers_of(model, prefix=""):
    """``[(key prefix, layer)]`` of every SVD-space layer in forward order (``"3"``, ``"4.main.0"``)."""
    out = []
    for name, child in getattr(model, "children", {}).items():
        p = f"{prefix}{name}"
        if getattr(child, "kind", None) in SVD_KINDS:
            out.append((p, child))
        else:
            out += svd_layers_of(child, p + ".")
    return out
