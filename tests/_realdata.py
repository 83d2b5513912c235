"""The real Fashion-MNIST for tests marked ``realdata``: skipped on a developer machine without it,
a failure under CI (``CI`` set), where .ci/run installs Debian's dataset-fashion-mnist."""
import os
from pathlib import Path

import pytest

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def require_fashion_mnist() -> Path:
    """Return the folder holding the real Fashion-MNIST, or skip (fail under CI)."""
    missing = [f for f in FILES if not (SYSTEM_FASHION / f"{f}.gz").is_file()
               and not (SYSTEM_FASHION / f).is_file()]
    if not missing:
        return SYSTEM_FASHION
    msg = f"real Fashion-MNIST absent: looked in {SYSTEM_FASHION} for {', '.join(missing)} (.gz or raw)"
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI must install it (apt-get install dataset-fashion-mnist)")
    pytest.skip(msg)
