"""Real Fashion-MNIST (CI installs Debian's dataset-fashion-mnist): BP on mlp reaches >= 85 % in 2 epochs."""
import pytest
from _realdata import require_fashion_mnist

from ssaref import train as train_mod

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_bp_mlp_fashion_mnist_two_epochs(capsys):
    data_dir = require_fashion_mnist().parent
    rc = train_mod.main(["--method", "bp", "--model", "mlp", "--dataset", "fashion-mnist", "--epochs", "2",
                         "--no-progress", "--no-download", "--seed", "0", "--data-dir", str(data_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    acc = float(out.strip().splitlines()[-1].split("=")[1])
    print(out)
    assert acc >= 0.85, out
