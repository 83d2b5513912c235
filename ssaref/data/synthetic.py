"""Teacher-network data set for quick runs: Gaussian inputs labelled by a fixed random tanh MLP.

Everything follows from ``seed``: ``SeedSequence(seed)`` spawns three independent streams, one for the
teacher, one for the training inputs, one for the test inputs, so the first ``n`` examples of a split do not
depend on how many were asked for (a limit only cuts) and the test split does not depend on the training size.

Inputs live near a 16-dimensional subspace of the 784 pixels, so a few thousand examples suffice::

    z ~ N(0, I_16)        latent code
    x = (z P + 0.1 n) / sqrt(16.01)   P (16, 784) fixed, entries N(0, 1); n ~ N(0, I_784)
    h = tanh(z W1)        W1 (16, 64), entries N(0, 1 / 16)
    o = h W2              W2 (64, 10), entries N(0, 1 / 64)
    y = argmax_k o_k

The teacher is genuinely non-linear: a least-squares linear classifier reaches roughly 60-70 % on the test
split from 4000 examples (chance is 10 %); an MLP trained with BP does clearly better.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SYNTHETIC_SHAPE",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_HIDDEN",
    "DEFAULT_TRAIN",
    "DEFAULT_TEST",
    "teacher_weights",
    "make_synthetic",
]

SYNTHETIC_SHAPE = (1, 28, 28)
SYNTHETIC_CLASSES = 10
SYNTHETIC_HIDDEN = 64
DEFAULT_TRAIN = 4000
DEFAULT_TEST = 1000
SYNTHETIC_LATENT = 16
_NOISE = 0.1


def _streams(seed: int):
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def teacher_weights(seed: int):
    """The teacher of ``seed``: ``P`` (16, 784), ``W1`` (16, 64) and ``W2`` (64, 10), float64."""
    rng = _streams(seed)[0]
    d = int(np.prod(SYNTHETIC_SHAPE))
    p = rng.standard_normal((SYNTHETIC_LATENT, d))
    w1 = rng.standard_normal((SYNTHETIC_LATENT, SYNTHETIC_HIDDEN)) / np.sqrt(SYNTHETIC_LATENT)
    w2 = rng.standard_normal((SYNTHETIC_HIDDEN, SYNTHETIC_CLASSES)) / np.sqrt(SYNTHETIC_HIDDEN)
    return p, w1, w2


def make_synthetic(seed: int = 0, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST):
    """Draw the synthetic splits (raw, not normalised).

    Parameters
    ----------
    seed : int
        Determines teacher and inputs completely.
    n_train, n_test : int
        Number of examples per split (> 0).

    Returns
    -------
    x_train : np.ndarray, float64, shape (n_train, 1, 28, 28), entries (z P + 0.1 n)/sqrt(16.01), unit variance
    y_train : np.ndarray, int64, shape (n_train,)
    x_test : np.ndarray, float64, shape (n_test, 1, 28, 28)
    y_test : np.ndarray, int64, shape (n_test,)
    """
    _, rng_train, rng_test = _streams(seed)
    p, w1, w2 = teacher_weights(seed)
    d = p.shape[1]

    def split(rng, n):
        g = rng.standard_normal((n, SYNTHETIC_LATENT + d))  # one row per example: limits only cut
        z, noise = g[:, :SYNTHETIC_LATENT], g[:, SYNTHETIC_LATENT:]
        x = (z @ p + _NOISE * noise) / np.sqrt(SYNTHETIC_LATENT + _NOISE**2)  # unit variance
        y = np.argmax(np.tanh(z @ w1) @ w2, axis=1).astype(np.int64)
        return x.reshape((n,) + SYNTHETIC_SHAPE), y

    x_train, y_train = split(rng_train, int(n_train))
    x_test, y_test = split(rng_test, int(n_test))
    return x_train, y_train, x_test, y_test
