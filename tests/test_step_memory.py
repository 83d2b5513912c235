"""What a training step holds (issue 26, docs/decisions.md D10).

* A plain step keeps no per-layer error signals (``Rule.keep_signals`` off); a step asked for them
  (the alignment tracker's recording steps, golden export) gets them, and the updates are the same bits either way.
* A rule that declares ``RELEASES_CACHES`` frees each top-level forward cache once its layer's backward has run:
  checked by weak references to the cache arrays while the backward runs (and shown to find live ones without the
  release); its updates are the same bits as with the caches kept to the end.
* The alignment tracker's BP pass is never handed releasable caches.  SSA (``Rule.caches_read_after``) keeps
  only the caches and signals of the layers whose ``V^T g_V`` it takes from the batch, and every one on the steps
  that measure eq. (4)'s angle and in the paper variant; its updates are the same bits as with everything kept.
"""
from __future__ import annotations

import weakref

import numpy as np
import pytest

from ssaref.metrics import AlignmentTracker
from ssaref.nn import build_model
from ssaref.nn.containers import ReleasableCaches
from ssaref.rules import RULES
from ssaref.rules.base import first_param_layer
from ssaref.run import build_run

MODELS = {
    "mlp": ("mlp", (1, 6, 6), {"hidden": (7, 5)}),
    "smallconv": ("smallconv", (3, 8, 8), {"width_mult": 1 / 16}),
    "resnet20": ("resnet20", (3, 8, 8), {"width_mult": 1 / 8}),
}


def _run(rule_name, model_name, options=None):
    name, shape, opts = MODELS[model_name]
    model = build_model(name, shape, 4, dtype=np.float64, seed=0, **opts)
    try:
        run = build_run(model, rule_name, np.random.default_rng(2), options=options, optimizer=None)
    except ValueError:
        pytest.skip(f"{rule_name} does not take {model_name}")
    rng = np.random.default_rng(5)
    return run, rng.standard_normal((6,) + shape), rng.integers(0, 4, 6)


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


@pytest.mark.parametrize("model_name", ["mlp", "smallconv"])
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_plain_step_keeps_no_signals_and_asking_changes_no_update(rule_name, model_name):
    run, x, y = _run(rule_name, model_name)
    plain = run.rule.step(run.model, x, y)
    assert plain.signals == {}, rule_name
    run, x, y = _run(rule_name, model_name)  # afresh: a step may change the rule's state (brSF's draw)
    run.rule.keep_signals = True
    kept = run.rule.step(run.model, x, y)
    assert kept.signals, rule_name  # every rule delivers some signal (at least the output layer's)
    _same(plain.updates, kept.updates)
    assert np.array_equal(plain.logits, kept.logits)


def _arrays(obj, out):
    if isinstance(obj, np.ndarray):
        out.append(obj)
        if isinstance(obj.base, np.ndarray):  # a view keeps its base alive (a layer's input seen as (C, H, W, N))
            _arrays(obj.base, out)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _arrays(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _arrays(o, out)
    elif hasattr(obj, "__slots__") or hasattr(obj, "__dict__"):  # a convolution's SavedInput (ops/conv.py)
        for name in getattr(obj, "__slots__", ()) or vars(obj):
            _arrays(getattr(obj, name, None), out)
    return out


def _live_after_backward(run, x, y, exempt=()):
    """Weak references to every array of every top-level forward cache; at the start of each top-level layer's
    backward, the arrays of the layers whose backward has already run that are still alive (those shared with a
    cache still to be used excepted).  Returns ``(live, ran)``: the count of such live arrays summed over the
    backward, and the layers whose backward ran.  The layers in ``exempt`` are not counted."""
    model = run.model
    refs: dict = {}
    ids: dict = {}
    ran: list = []
    live = [0]
    # alive for good: the parameters (BN's gamma), the caller's input
    kept = {id(a) for a in (*model.params.values(), *model.buffers.values(), x)}
    for k, layer in enumerate(model.layers):
        fwd, bwd = layer.forward, layer.backward

        def forward(h, train=True, k=k, fwd=fwd):
            out, cache = fwd(h, train)
            arrs = [a for a in _arrays(cache, []) if id(a) not in kept]
            refs[k] = [weakref.ref(a) for a in arrs]
            ids[k] = {id(a) for a in arrs}
            return out, cache

        def backward(dy, cache, *a, k=k, bwd=bwd, **kw):
            pending = set().union(*(ids[j] for j in ids if j not in ran or j in exempt))  # still to be read
            for j in (j for j in ran if j not in exempt):
                live[0] += sum(1 for r in refs[j] if r() is not None and id(r()) not in pending)
            ran.append(k)
            return bwd(dy, cache, *a, **kw)

        layer.forward, layer.backward = forward, backward
    try:
        res = run.rule.step(model, x, y)
    finally:
        for layer in model.layers:
            del layer.forward, layer.backward
    return live[0], ran, res


RELEASING = sorted(n for n, cls in RULES.items() if cls.RELEASES_CACHES)


def test_the_chain_and_direct_rules_release():
    assert {"bp", "fa", "usf", "brsf", "frsf", "kp", "svd-bp", "dfa", "drtp"} <= set(RELEASING)
    assert not {"ssa", "pepita", "predsim", "auglocal"} & set(RELEASING)  # they read caches after the backward


@pytest.mark.parametrize("model_name", ["mlp", "smallconv", "resnet20"])
@pytest.mark.parametrize("rule_name", RELEASING)
def test_each_cache_is_freed_once_its_layer_has_run(rule_name, model_name):
    run, x, y = _run(rule_name, model_name)
    live, ran, released = _live_after_backward(run, x, y)
    assert len(ran) >= 3, ran
    assert live == 0, (rule_name, model_name, live)
    # the same probe finds the caches alive when the step keeps them (so it can fail), and the updates agree
    run, x, y = _run(rule_name, model_name)
    run.rule.RELEASES_CACHES = False
    live_kept, ran_kept, kept = _live_after_backward(run, x, y)
    assert ran_kept == ran
    assert live_kept > 0, (rule_name, model_name)
    _same(released.updates, kept.updates)


def test_only_releasable_caches_are_changed():
    """A plain list (the tracker's BP pass, SSA's injection pass) is left whole by the backward."""
    run, x, y = _run("bp", "smallconv")
    model = run.model
    _, caches = model.forward(x, train=True)
    before = list(caches)
    e = np.ones((len(x), 4)) / len(x)
    model.backward(e, caches, need_dx=False, stop=first_param_layer(model))
    assert all(a is b for a, b in zip(caches, before))
    rel = ReleasableCaches(caches)
    model.backward(e, rel, need_dx=False, stop=first_param_layer(model))
    assert rel[first_param_layer(model):] == [None] * (len(rel) - first_param_layer(model))
    assert all(a is b for a, b in zip(rel[: first_param_layer(model)], before))  # layers below the chain kept


@pytest.mark.parametrize("rule_name", ["dfa", "bp", "ssa"])
def test_tracker_gets_signals_on_its_recording_steps(rule_name):
    """The training loop's protocol: ``keep_signals = tracker.due(step)``; the recorded signal angles are finite
    (BP's own pass keeps its signals and caches), the other steps hold no signals."""
    run, x, y = _run(rule_name, "mlp")
    tr = AlignmentTracker(run.model, every=2)
    for step in range(3):
        run.rule.keep_signals = tr.due(step)
        res = run.rule.step(run.model, x, y)
        assert bool(res.signals) == (step % 2 == 0)
        tr.maybe_record(step, run.model, run.rule, x, y, res)
    ev = tr.pop_events()
    assert ev["align_step/step"] == [0, 2]
    S = np.asarray(ev["align_step/signal_deg"])
    assert np.isfinite(S).any(axis=1).all(), S


@pytest.mark.parametrize("model_name", ["mlp", "smallconv", "resnet20"])
def test_ssa_keeps_only_the_caches_and_signals_it_reads(model_name):
    """SSA's default variant reads, after its injection pass, only the signal and cache of the layers whose
    ``V^T g_V`` comes from the batch (``_batch_VtG``); every other cache dies once its layer's backward has run,
    and the updates are the same bits as a step that keeps everything."""
    run, x, y = _run("ssa", model_name)
    assert run.rule.caches_read_after(run.model, x) is None  # step 0 measures eq. (4)'s angle: it reads them all
    run.rule._steps = 1
    keep = run.rule.caches_read_after(run.model, x)
    assert keep == run.rule._batch_layers(len(x), np)
    seen: dict = {}
    batch_VtG = run.rule._batch_VtG

    def spy(p, layer, dy, cache):  # what the layers read after the pass get: their signal and their cache
        seen[p] = (dy is not None, cache is not None)
        return batch_VtG(p, layer, dy, cache)

    run.rule._batch_VtG = spy
    live, ran, lean = _live_after_backward(run, x, y, exempt=keep)
    assert all(seen[str(k)] == (True, True) for k in keep), (keep, seen)
    assert len(ran) >= 3 and live == 0, (model_name, live, keep)
    run, x, y = _run("ssa", model_name)
    run.rule._steps = 1
    run.rule.caches_read_after = lambda model, x: None  # the step as before: every cache kept to the end
    live_all, _, full = _live_after_backward(run, x, y, exempt=keep)
    assert live_all > 0, model_name  # the probe finds them without the release (it can fail)
    _same(lean.updates, full.updates)


def test_ssa_keeps_everything_where_it_reads_everything():
    run, x, y = _run("ssa", "mlp", {"ssa_variant": "paper"})
    run.rule._steps = 1
    assert run.rule.caches_read_after(run.model, x) is None  # eqs. (11)-(13) read every layer's G
    run, x, y = _run("ssa", "mlp", {"angle_every": 0})
    run.rule._steps = 1
    assert run.rule.caches_read_after(run.model, x) == {1}  # mlp 36-7-5-4 at batch 6: only the first (after flatten)
    assert run.rule.step(run.model, x, y).signals == {}
    run.rule.keep_signals = True
    assert set(run.rule.step(run.model, x, y).signals) == {1, 2, 3, 4, 5}  # asked for: every top-level signal
