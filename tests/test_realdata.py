"""Real Fashion-MNIST (CI installs Debian's dataset-fashion-mnist): BP on mlp reaches >= 85 % in 2 epochs."""
import os

import pytest

from ssaref import train as train_mod
from ssaref.data import find_dataset_dir

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

HAVE_FMNIST = find_dataset_dir("fashion-mnist") is not None
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST and not os.environ.get("CI"),
    reason="real Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")


@needs_fmnist
def test_bp_mlp_fashion_mnist_two_epochs(capsys):
    # In CI (CI=true) a missing dataset is a failure, not a skip: load_dataset raises then.
    rc = train_mod.main(["--method", "bp", "--model", "mlp", "--dataset", "fashion-mnist", "--epochs", "2",
                         "--no-progress", "--no-download", "--seed", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    acc = float(out.strip().splitlines()[-1].split("=")[1])
    print(out)
    assert acc >= 0.85, out
