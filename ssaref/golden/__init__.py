"""Golden vectors: the standalone checker (``check.py``: numpy and h5py only, usable without ssaref) and the
case catalogue (``coverage.py``: which terms of the update each exported case pins).

``ssaref.vectors`` exports the files and drives both; docs/golden-vectors.md is the schema.  Nothing is imported
here, so ``ssaref.golden.check`` stays importable on its own.
"""
