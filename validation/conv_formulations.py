"""Issue 26, point 4: formulations of the small-channel 3x3 convolutions of the ResNets, timed against ssaref's
im2col convolution and torch's on the same shapes (resnet20's: 16, 32, 64 channels at 32, 16, 8 pixels, stride 1,
padding 1, batch 128, float32).

``shifted``: the input kept channels-last on the zero-padded grid, ``X`` of shape (B (H+2) (W+2), C); the output on
the same grid is ``Y[p] = sum_(i,j) X[p + i (W+2) + j] W_ij`` (``W_ij`` = the kernel's (C_in, C_out) slice at
offset (i, j)): nine GEMMs on row-shifted *views* of ``X``, no column matrix, each accumulated in place by BLAS
(``sgemm`` with beta = 1, SciPy's wrapper); the outputs off the valid grid (27 % at 32x32) are computed and dropped.
The weight gradient is ``dW_ij = X[shift]^T dY`` (nine reductions over the grid), the input gradient
``dX[p + shift] += dY[p] W_ij^T`` (nine shifted accumulations).  Each pass reads ``X`` (or ``dY``) nine times from
cache-resident shifted rows instead of writing and reading a nine-fold column matrix.

Every variant's forward, weight and input gradient are checked against torch's (float32, relative 1e-4).  Times:
``ssaref.bench.blocks.time_blocks`` (engines in turns), median ms of a forward + weight gradient + input gradient;
``limit`` = the roofline bound of those three passes (2 x 3 x 9 B H W C^2 FLOPs at the GEMM rate; the least
traffic: input, output and their gradients once each) over the measured time.

    python -m validation.conv_formulations [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

SHAPES = ((16, 32), (32, 16), (64, 8))  # resnet20's stages: channels, side


def _sgemm():
    from scipy.linalg.blas import sgemm

    return sgemm


class Shifted:
    """A 3x3, stride 1, padding 1 convolution on the padded channels-last grid (module doc)."""

    def __init__(self, B, C, H, Wd):
        self.B, self.C, self.H, self.W = B, C, H, Wd
        self.P = (H + 2) * (Wd + 2)
        self.M = B * self.P
        self.shifts = [i * (Wd + 2) + j for i in range(3) for j in range(3)]
        self.Mv = self.M - self.shifts[-1]  # rows every shift can read
        self.gemm = _sgemm()

    def pad(self, x_nchw):
        B, C, H, Wd = x_nchw.shape
        g = np.zeros((B, H + 2, Wd + 2, C), np.float32)
        g[:, 1 : H + 1, 1 : Wd + 1, :] = x_nchw.transpose(0, 2, 3, 1)
        return g.reshape(-1, C)

    def forward(self, X, Wk):
        """``X`` (M, C_in) padded grid, ``Wk`` (9, C_in, C_out): ``Y`` (M, C_out) on the grid (rows from the top-left
        corner of each window)."""
        Y = np.zeros((self.M, Wk.shape[2]), np.float32)
        Yt = Y[: self.Mv].T  # F-contiguous (C_out, Mv): BLAS accumulates into it
        for k, s in enumerate(self.shifts):
            self.gemm(1.0, Wk[k].T, X[s : s + self.Mv].T, beta=1.0, c=Yt, overwrite_c=1)
        return Y

    def backward(self, X, Wk, dY):
        """``dY`` (M, C_out) on the grid, zero off the outputs: ``(dW (9, C_in, C_out), dX (M, C_in) on the padded
        grid)``."""
        dW = np.empty_like(Wk)
        for k, s in enumerate(self.shifts):
            dW[k] = X[s : s + self.Mv].T @ dY[: self.Mv]
        dX = np.zeros_like(X)
        for k, s in enumerate(self.shifts):
            self.gemm(1.0, Wk[k], dY[: self.Mv].T, beta=1.0, c=dX[s : s + self.Mv].T, overwrite_c=1)
        return dW, dX

    def unpad(self, G):
        return G.reshape(self.B, self.H + 2, self.W + 2, -1)[:, 1 : self.H + 1, 1 : self.W + 1, :]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m validation.conv_formulations", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    from ssaref.backend import keep_large_allocations
    from ssaref.threads import apply_threads

    import torch

    keep_large_allocations()
    apply_threads(args.threads)
    from ssaref.bench.blocks import time_blocks
    from ssaref.bench.limits import machine_limits
    from ssaref.cost import roofline
    from ssaref.ops import conv

    lim = machine_limits(np)
    print(f"limits: GEMM {lim['sgemm_gflops']:.0f} GFLOP/s, copy {lim['stream_gbs']:.1f} GB/s; threads {args.threads}")
    print(
        "| channels x side | ssaref im2col ms | shifted ms | torch ms | shifted / im2col | im2col limit | shifted "
        "limit | torch limit |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    B = args.batch_size
    for C, H in SHAPES:
        x = rng.standard_normal((B, C, H, H)).astype(np.float32)
        W = (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        dy = rng.standard_normal((B, C, H, H)).astype(np.float32)
        # torch: the reference and the third engine
        tx, tW, tdy = (torch.from_numpy(a.copy()) for a in (x, W, dy))
        tx.requires_grad_(True)
        tW.requires_grad_(True)

        def torch_pass():
            tx.grad = tW.grad = None
            y = torch.nn.functional.conv2d(tx, tW, padding=1)
            y.backward(tdy)
            return y

        ty = torch_pass().detach().numpy()
        ref = (ty, tW.grad.numpy().copy(), tx.grad.numpy().copy())
        # ssaref's convolution, fed batch-innermost as its layers are
        xb = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
        dyb = np.ascontiguousarray(dy.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)

        def ssaref_pass():
            y, cache = conv.conv2d_forward(xb, W, None, 1, 1)
            dW, _ = conv.conv2d_backward_params(dyb, cache)
            dx = conv.conv2d_backward_input(dyb, W, cache)
            return y, dW, dx

        sh = Shifted(B, C, H, H)
        Xg = sh.pad(x)
        Wk = np.ascontiguousarray(W.transpose(2, 3, 1, 0).reshape(9, C, C))  # (i j, C_in, C_out)
        dYg = np.zeros((sh.M, C), np.float32)
        dYg.reshape(B, H + 2, H + 2, C)[:, :H, :H, :] = dy.transpose(0, 2, 3, 1)

        def shifted_pass():
            Y = sh.forward(Xg, Wk)
            dWk, dX = sh.backward(Xg, Wk, dYg)
            return Y, dWk, dX

        for name, out in (("ssaref", ssaref_pass()), ("shifted", shifted_pass())):
            y, dW, dx = out
            if name == "shifted":
                y = y.reshape(B, H + 2, H + 2, C)[:, :H, :H, :].transpose(0, 3, 1, 2)
                dW = dW.reshape(3, 3, C, C).transpose(3, 2, 0, 1)
                dx = sh.unpad(dx).transpose(0, 3, 1, 2)
            for a, r, what in zip((y, dW, dx), ref, ("y", "dW", "dx")):
                err = float(np.abs(a - r).max() / np.abs(r).max())
                if err > 1e-4:
                    print(f"error: {name} {what} differs from torch's by {err:.2e} (relative)", file=sys.stderr)
                    return 1
        times = time_blocks(
            {"ssaref": ssaref_pass, "shifted": shifted_pass, "torch": torch_pass}, repeats=args.repeats, warmup=2
        )
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        flops = 3 * 2 * 9 * B * H * H * C * C
        nbytes = 4 * 4 * B * H * H * C + 4 * 2 * 9 * C * C  # x, y, dy, dx once each; W, dW
        bound = roofline([{"flops": flops, "bytes": nbytes}], lim["sgemm_gflops"], lim["stream_gbs"])["bound_ms"]
        print(
            f"| {C} x {H} | {ms['ssaref']:.2f} | {ms['shifted']:.2f} | {ms['torch']:.2f} | "
            f"{ms['shifted'] / ms['ssaref']:.2f} | {100 * bound / ms['ssaref']:.0f} % | "
            f"{100 * bound / ms['shifted']:.0f} % | {100 * bound / ms['torch']:.0f} % |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
