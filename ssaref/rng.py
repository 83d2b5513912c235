"""Counter-based random numbers in ``xp``: the same bits on the CPU and on the GPU, drawn where the array lives.

A draw is a pure function of ``(key, i)``: element ``i`` of a stream is SplitMix64's output for the state
``key + (i + 1) * 0x9E3779B97F4A7C15`` (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
generators"; the finaliser of Java's ``SplittableRandom``, whose sequence passes BigCrush), computed in uint64
array arithmetic (products wrap modulo 2**64 in numpy and cupy alike).  ``stream_key`` derives a stream's key on the
host from integers (a seed, a step count, a layer index) through the same mixer, so streams for different words
do not overlap in any useful sense and nothing but Python integers crosses to the device.

Uniforms take the top 53 bits: ``u = (z >> 11) * 2**-53`` in [0, 1), exact in float64, so a uniform draw is
bit-identical on every backend; a transform through ``log``/``cos`` (Gaussians) may differ in the last ulp
between libm implementations.  Shifts are written as floor divisions by powers of two (the same for uint64).
"""

from __future__ import annotations

__all__ = ["stream_key", "uniform", "normal"]

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix_int(z: int) -> int:
    """SplitMix64's finaliser on a Python integer (host)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def stream_key(*words: int) -> int:
    """A 64-bit stream key from non-negative integers (e.g. ``seed, step, layer``): each word is folded in through
    the mixer, so ``stream_key(s, t, l)`` and ``stream_key(s, t, l + 1)`` are unrelated keys."""
    k = 0
    for w in words:
        w = int(w)
        if w < 0:
            raise ValueError(f"stream_key: words must be >= 0, got {w}")
        k = _mix_int(k ^ _mix_int(w + _GAMMA))
    return k


def _bits(xp, key: int, n: int):
    """SplitMix64 outputs ``z_i``, ``i = 0 .. n-1``, of stream ``key`` as a uint64 array of ``xp``."""
    u64 = xp.uint64
    i = xp.arange(1, n + 1, dtype=u64)
    z = i * u64(_GAMMA)
    z += u64(int(key) & _M64)  # the state key + (i + 1) gamma (mod 2**64)
    z ^= z // u64(1 << 30)  # z ^= z >> 30
    z *= u64(_C1)
    z ^= z // u64(1 << 27)  # z ^= z >> 27
    z *= u64(_C2)
    z ^= z // u64(1 << 31)  # z ^= z >> 31
    return z


def uniform(xp, key: int, shape, low=0.0, high=1.0, dtype=None):
    """U[low, high) of ``shape`` from stream ``key``: ``low + (high - low) u``, ``u = (z >> 11) 2**-53``, computed in
    float64 and cast to ``dtype`` (default float64)."""
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    u = (_bits(xp, key, n) // xp.uint64(1 << 11)).astype(xp.float64)
    u *= 2.0**-53
    out = u * (float(high) - float(low)) + float(low) if (low, high) != (0.0, 1.0) else u
    out = out.reshape(shape)
    return out if dtype is None else out.astype(dtype)


def normal(xp, key: int, shape, dtype=None):
    """N(0, 1) of ``shape`` by Box-Muller from the uniforms of two sub-streams of ``key``."""
    shape = tuple(int(s) for s in shape)
    u1 = uniform(xp, stream_key(key, 1), shape)
    u2 = uniform(xp, stream_key(key, 2), shape)
    r = xp.sqrt(-2.0 * xp.log1p(-u1))  # 1 - u1 in (0, 1]: log is finite
    out = r * xp.cos((2.0 * 3.141592653589793) * u2)
    return out if dtype is None else out.astype(dtype)
