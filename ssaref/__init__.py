"""ssaref: a NumPy/CuPy reference engine for local learning rules (SSA and its baselines)."""

__version__ = "0.4.0"
