"""DFA on the real Fashion-MNIST (present in CI): the mlp reaches >= 80 % test accuracy within 2 epochs."""
from pathlib import Path

import numpy as np
import pytest

from _realdata import SYSTEM_FASHION, require_fashion_mnist


@pytest.mark.realdata
def test_dfa_mlp_fashion_mnist_two_epochs():
    from ssaref.data import load_dataset
    from ssaref.nn import build_model
    from ssaref.optim import build_optimizer
    from ssaref.rules import build_rule
    from ssaref.train import evaluate

    require_fashion_mnist()
    ds = load_dataset("fashion-mnist", data_dir=SYSTEM_FASHION.parent, download=False)
    model = build_model("mlp", ds.input_shape, ds.num_classes, xp=np, dtype=np.float32, seed=0)
    rule = build_rule("dfa")
    rule.init_state(model, np.random.default_rng(2))
    opt = build_optimizer("adam", model.named_params(), 1e-3)
    rng = np.random.default_rng(1)
    accs = []
    for epoch in range(2):
        perm = rng.permutation(len(ds.x_train))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            res = rule.step(model, ds.x_train[idx], ds.y_train[idx])
            opt.step(res.updates)
        accs.append(evaluate(model, ds.x_test, ds.y_test, 1000, np, np.float32)[1])
        if accs[-1] >= 0.80:
            break
    print("DFA mlp Fashion-MNIST test accuracy per epoch:", accs)
    assert max(accs) >= 0.80, accs
