"""Shared pytest set-up: hypothesis profiles, the ``rng`` fixture, GPU skips.

Profiles (pick with the environment variable ``HYPOTHESIS_PROFILE``, default ``ci``):
``ci`` runs 25 derandomized examples per property without deadlines (reproducible, fast);
``dev`` runs 100 random examples.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    """A fresh ``np.random.default_rng(0)`` for each test."""
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where cupy or a CUDA device is missing -- unless ``SSAREF_REQUIRE_GPU=1``, which
    makes a missing GPU a failure of the whole run (so a GPU check can never pass by skipping everything)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from ssaref.backend import cupy_available

    if cupy_available():
        return
    if os.environ.get("SSAREF_REQUIRE_GPU") == "1":
        raise pytest.UsageError("SSAREF_REQUIRE_GPU=1 but cupy or a CUDA device is not usable "
                                "(ssaref.backend.cupy_available() is False)")
    skip = pytest.mark.skip(reason="needs cupy and a CUDA GPU: ssaref.backend.cupy_available() is False")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def golden(tmp_path_factory):
    """The full golden-vector export, made once per test session (tests read it; they modify copies only)."""
    from ssaref import vectors

    d = tmp_path_factory.mktemp("golden")
    vectors.export(str(d))
    return d
