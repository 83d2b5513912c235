"""Audit of the paper against float64 transcriptions and the engine (python -m ssaref.audit)."""
