"""Golden vectors: exact per-layer updates of every rule, in a stable HDF5 format, and their checker.

``python -m ssaref.vectors export --out DIR [--overwrite]`` writes one file per case (rule x model x variant),
float64, schema ``ssaref-golden/2`` (documented field by field in docs/golden-vectors.md): the inputs, every
layer's kind, geometry and parameters before the step, the rule's feedback arrays, every layer's forward output,
the loss, the error signal the rule delivers to each layer's output, the update direction of every parameter
(what plain SGD subtracts times the learning rate), the case's ``coverage`` (the terms of the update it pins,
``ssaref/golden/coverage.py``) and, for the multi-step cases, the parameters after each optimiser step.

``python -m ssaref.vectors check GOLDEN CANDIDATE [--rtol R --atol A --report FILE.md]`` runs the standalone
checker ``ssaref/golden/check.py`` (numpy and h5py only; schemas 1 and 2): a table (case, field, max abs error,
max rel error, pass/fail), exit 1 on any failure or missing field / case, 2 when it cannot run.

The cases: every registered rule's ``default`` (its default options) on the golden models it supports of
``MODELS`` (PEPITA is defined for MLPs only, so it has no conv case), plus the variants its class lists in
``GOLDEN_VARIANTS``: ``variant -> (options, warm-up steps[, extra])``, ``extra`` a dict with any of

* ``models``: the golden models of this variant (default: ``MODELS``); a ``"default"`` entry (options ``{}``,
  no warm-up) only sets the models of the default case (e.g. adds the residual model ``res``);
* ``warmup_options``: the options of the rule that makes the warm-up steps (default: the case's own);
* ``optimizer``: a preset of ``OPTIMIZER_PRESETS`` and ``steps``: the number of optimiser steps recorded
  (multi-step cases; no warm-up).

Warm-up steps: full training steps of the same rule on the same batch, each the rule's update direction,
``p <- p - WARMUP_LR * update`` (plain SGD, no momentum), then the rule's ``after_step`` (SSA's retraction).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from .atomic import atomic_path, write_text

from .golden import check as _check
from .golden.check import (
    FEEDBACK_NAMES,
    GEOMETRY,
    LAYER_KINDS,
    PARAM_NAMES,
    REQUIRED_PARAMS,
    SCHEMAS,
    GoldenError,
    compare_arrays,
    compare_case,
    read_file,
    validate_file,
)
from .golden.coverage import coverage_of

SCHEMA = _check.SCHEMA
DTYPE = np.float64
DEFAULT_SEED = 0
BATCH = 6
NUM_CLASSES = 5
DEFAULT_RTOL = _check.DEFAULT_RTOL
DEFAULT_ATOL = _check.DEFAULT_ATOL

MODELS = ("mlp", "conv")  # where every rule's default case runs
# only for the variants that name them: ``res`` (a residual block), ``conv2`` (a second conv layer, so that the
# FA family's conv feedback B is used)
ALL_MODELS = MODELS + ("res", "conv2")
WARMUP_LR = 0.5
# optimisers of the multi-step cases (torch.optim.SGD / torch.optim.Adam semantics, ssaref/optim.py)
OPTIMIZER_PRESETS = {
    "momentum": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"name": "adam", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
}
_EXTRA_KEYS = ("models", "warmup_options", "optimizer", "steps")

__all__ = [
    "SCHEMA",
    "SCHEMAS",
    "GoldenError",
    "build_model",
    "cases",
    "case_specs",
    "case_name",
    "compute_case",
    "write_case",
    "export",
    "read_file",
    "validate_file",
    "compare_arrays",
    "compare_case",
    "check",
    "main",
    "PARAM_NAMES",
    "FEEDBACK_NAMES",
    "LAYER_KINDS",
    "GEOMETRY",
    "REQUIRED_PARAMS",
    "MODELS",
    "ALL_MODELS",
    "OPTIMIZER_PRESETS",
]


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is a dependency
        raise GoldenError("h5py is needed for golden vectors: pip install h5py") from exc
    return h5py


# ---------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------
def build_model(name, rng, xp=np):
    """The golden models, float64, on ``xp``'s device (the host by default; weights drawn on the host either way).

    ``mlp``: Linear(12, 10), ReLU, Linear(10, 8), ReLU, Linear(8, 5) on (12,) inputs (no Flatten).
    ``conv``: Conv2d(1, 4, 3, padding=1), ReLU, MaxPool2d(2), Flatten, Linear(64, 5) on 1x8x8 inputs.
    ``conv2``: Conv2d(1, 4, 3, padding=1), ReLU, Conv2d(4, 4, 3, padding=1), ReLU, MaxPool2d(2), Flatten,
    Linear(64, 5) on 1x8x8 inputs: a conv layer above the first, whose input gradient the FA family carries
    with its conv-shaped B.
    ``res``: Conv2d(1, 4, 3, padding=1), ReLU, Residual(main: Conv2d(4, 6, 3, padding=1), ReLU,
    Conv2d(6, 6, 3, padding=1); shortcut: Conv2d(4, 6, 1)), MaxPool2d(2), Flatten, Linear(96, 5) on 1x8x8
    inputs; the block's output is ``relu(main(x) + shortcut(x))``.
    """
    from .nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, ResidualBlock, Sequential

    ctx = {"xp": xp, "dtype": np.dtype(DTYPE), "rng": rng}
    if name == "mlp":
        model = Sequential([Linear(12, 10, **ctx), ReLU(), Linear(10, 8, **ctx), ReLU(), Linear(8, 5, **ctx)])
        model.input_shape = (12,)
    elif name == "conv":
        model = Sequential([Conv2d(1, 4, 3, padding=1, **ctx), ReLU(), MaxPool2d(2), Flatten(), Linear(64, 5, **ctx)])
        model.input_shape = (1, 8, 8)
    elif name == "conv2":
        model = Sequential(
            [
                Conv2d(1, 4, 3, padding=1, **ctx),
                ReLU(),
                Conv2d(4, 4, 3, padding=1, **ctx),
                ReLU(),
                MaxPool2d(2),
                Flatten(),
                Linear(64, 5, **ctx),
            ]
        )
        model.input_shape = (1, 8, 8)
    elif name == "res":
        stem = Conv2d(1, 4, 3, padding=1, **ctx)
        main = Sequential([Conv2d(4, 6, 3, padding=1, **ctx), ReLU(), Conv2d(6, 6, 3, padding=1, **ctx)])
        shortcut = Sequential([Conv2d(4, 6, 1, **ctx)])
        model = Sequential([stem, ReLU(), ResidualBlock(main, shortcut), MaxPool2d(2), Flatten(), Linear(96, 5, **ctx)])
        model.input_shape = (1, 8, 8)
    else:
        raise ValueError(f"unknown golden model {name!r}; choose one of {', '.join(ALL_MODELS)}")
    model.name, model.num_classes = f"golden-{name}", NUM_CLASSES
    return model


def case_name(rule, model, variant):
    """File stem ``<rule>__<model>__<variant>``."""
    return f"{rule}__{model}__{variant}"


def _variant_spec(rule, variant, entry):
    """One ``GOLDEN_VARIANTS`` entry as a dict (module docstring)."""
    if not isinstance(entry, tuple) or len(entry) not in (2, 3):
        raise ValueError(f"{rule}.GOLDEN_VARIANTS[{variant!r}] must be (options, warm-up steps[, extra])")
    extra = dict(entry[2]) if len(entry) == 3 else {}
    bad = sorted(set(extra) - set(_EXTRA_KEYS))
    if bad:
        raise ValueError(f"{rule}.GOLDEN_VARIANTS[{variant!r}]: unknown key(s) {bad}; known: {', '.join(_EXTRA_KEYS)}")
    spec = {
        "rule": rule,
        "variant": variant,
        "options": dict(entry[0]),
        "warmup": int(entry[1]),
        "models": tuple(extra.get("models", MODELS)),
        "warmup_options": extra.get("warmup_options"),
        "optimizer": None,
        "steps": 0,
    }
    if "optimizer" in extra or "steps" in extra:
        name = extra.get("optimizer")
        if name not in OPTIMIZER_PRESETS or not 1 <= int(extra.get("steps", 0)) <= _check.MAX_STEPS or spec["warmup"]:
            raise ValueError(
                f"{rule}.GOLDEN_VARIANTS[{variant!r}]: a multi-step case names an optimizer of "
                f"{sorted(OPTIMIZER_PRESETS)}, steps in [1, {_check.MAX_STEPS}] (what a reader "
                f"accepts) and no warm-up"
            )
        spec["optimizer"], spec["steps"] = dict(OPTIMIZER_PRESETS[name]), int(extra["steps"])
    unknown = sorted(set(spec["models"]) - set(ALL_MODELS))
    if unknown:
        raise ValueError(f"{rule}.GOLDEN_VARIANTS[{variant!r}]: unknown golden model(s) {unknown}")
    if variant == "default" and (spec["options"] or spec["warmup"] or len(extra) != ("models" in extra)):
        raise ValueError(f"{rule}.GOLDEN_VARIANTS['default'] may only set the models of the default case")
    return spec


def _rule_specs():
    """Every variant spec: each registered rule's default, then its other ``GOLDEN_VARIANTS``."""
    from .rules import RULES

    out = []
    for r, cls in RULES.items():
        gv = dict(cls.GOLDEN_VARIANTS)
        out.append(_variant_spec(r, "default", gv.pop("default", ({}, 0))))
    for r, cls in RULES.items():
        out += [_variant_spec(r, v, e) for v, e in cls.GOLDEN_VARIANTS.items() if v != "default"]
    return out


def supports(rule_name, model_name, options=None):
    """Whether the rule can be set up on the golden model and export its feedback there (PEPITA refuses conv
    nets; SSA and ``dfa_residual=layer`` refuse ``res``, whose nested layers their ``feedback_export`` cannot
    describe).  A True for ``res`` is not enough for a case: FA-type rules export it lossily (every B of the
    block under one name), which is why ``res`` cases are declared per variant (docs/golden-vectors.md)."""
    from .rules import build_rule

    rule = build_rule(rule_name, **(options or {}))
    try:
        model = rule.setup(build_model(model_name, np.random.default_rng(0)), np.random.default_rng(0))
        rule.feedback_export(model)
    except ValueError:
        return False
    return True


def case_specs():
    """``[spec]`` of every exported case, in export order; ``spec`` as ``_variant_spec`` plus ``model``.

    A default case runs on the declared models the rule supports; a declared variant must be supported on
    every model it names (ValueError otherwise)."""
    out = []
    for s in _rule_specs():
        for m in s["models"]:
            if supports(s["rule"], m, s["options"]):
                out.append(dict(s, model=m))
            elif s["variant"] != "default" or m not in MODELS:
                raise ValueError(
                    f"golden case {case_name(s['rule'], m, s['variant'])} is declared but rule "
                    f"{s['rule']!r} cannot export it on model {m!r}"
                )
    return out


def cases():
    """``[(rule, model, variant, options)]`` of every exported case, in export order."""
    return [(s["rule"], s["model"], s["variant"], dict(s["options"])) for s in case_specs()]


def _spec_of(rule, model, variant):
    for s in _rule_specs():
        if s["rule"] == rule and s["variant"] == variant:
            return dict(s, model=model)
    return {
        "rule": rule,
        "variant": variant,
        "options": {},
        "warmup": 0,
        "models": MODELS,
        "warmup_options": None,
        "optimizer": None,
        "steps": 0,
        "model": model,
    }


def _pair_list(v):
    return [int(a) for a in v]


def _layer_attrs(layer):
    """``kind`` and the geometry needed to rebuild ``layer``."""
    kind = layer.kind
    if kind not in LAYER_KINDS:
        raise ValueError(f"golden vectors do not describe layers of kind {kind!r}")
    a = {"kind": kind}
    p = layer.params
    if kind == "linear":
        a["out_features"], a["in_features"] = (int(d) for d in p["W"].shape)
    elif kind == "svd_linear":
        m, n = layer.dims
        a.update(in_features=n, out_features=m, rank=layer.rank)
    elif kind == "conv2d":
        g = layer.geometry()
        a.update(
            in_channels=int(p["W"].shape[1]),
            out_channels=int(p["W"].shape[0]),
            kernel=_pair_list(g["kernel"]),
            stride=_pair_list(g["stride"]),
            padding=_pair_list(g["padding"]),
        )
    elif kind == "svd_conv2d":
        g = layer.geometry()
        a.update(
            in_channels=int(g["c_in"]),
            out_channels=int(g["c_out"]),
            kernel=_pair_list(g["kernel"]),
            stride=_pair_list(g["stride"]),
            padding=_pair_list(g["padding"]),
            rank=layer.rank,
        )
    elif kind in ("maxpool2d", "avgpool2d"):
        g = layer.geometry()
        a.update(kernel=_pair_list(g["kernel"]), stride=_pair_list(g["stride"]), padding=_pair_list(g["padding"]))
    return a


def _layer_groups(model):
    """``[(group path under /layers, layer)]`` in forward order, the layers of a residual block's branches
    (``<k>/main/<j>``, ``<k>/shortcut/<j>``) after the block itself."""
    out = []
    for k, layer in enumerate(model.layers):
        out.append((str(k), layer))
        if layer.kind == "residual":
            for br in ("main", "shortcut"):
                for j, sub in enumerate(layer.children[br].layers):
                    if sub.kind == "residual":
                        raise ValueError("golden vectors describe residual blocks one level deep only")
                    out.append((f"{k}/{br}/{j}", sub))
    return out


def _host(a):
    """A host float64 copy (never a view of a parameter the optimiser will change in place)."""
    from .backend import asnumpy

    return np.array(asnumpy(a), dtype=DTYPE, order="C", copy=True)


def _path(key):
    """Parameter key (``"2.main.0.W"``) -> dataset path below a layers-shaped group (``"2/main/0/W"``)."""
    return key.replace(".", "/")


def _update_arrays(model, res, learn):
    """``{path: array}`` of one step's update directions: every parameter, then the rule's learnables."""
    out = {}
    for key in sorted((k for k in res.updates if k not in learn), key=lambda s: (int(s.split(".", 1)[0]), s)):
        out[_path(key)] = _host(res.updates[key])
    for key, (k, n) in learn.items():  # rule-owned arrays the optimiser updates (KP's B, auxiliary networks)
        out[f"{int(k)}/{_path(n)}"] = _host(res.updates[key])
    return out


def _param_arrays(model, rule):
    """``{path: array}`` of the current parameters and the rule's learnables."""
    out = {_path(key): _host(a) for key, a in model.named_params()}
    for item in rule.learnable(model):
        out[f"{int(item.layer)}/{_path(item.name)}"] = _host(item.array)
    return out


def _make_run(model_name, rule_name, seed, options, optimizer=None, xp=np):
    from .run import build_run

    model = build_model(model_name, np.random.default_rng([seed, 1]), xp)
    if optimizer is None:  # plain SGD (no momentum, no decay) for the warm-up steps
        return build_run(
            model,
            rule_name,
            np.random.default_rng([seed, 2]),
            options=options,
            optimizer="sgd",
            lr=WARMUP_LR,
            momentum=0.0,
        )
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in optimizer.items() if k not in ("name", "lr")}
    return build_run(
        model,
        rule_name,
        np.random.default_rng([seed, 2]),
        options=options,
        optimizer=optimizer["name"],
        lr=optimizer["lr"],
        **kw,
    )


def compute_case(rule_name, model_name, variant, options=None, seed=DEFAULT_SEED, xp=np):
    """Run one case and collect every field of the golden file (computed on ``xp``'s device; every field is
    brought to the host as it is recorded, so a GPU export can be checked against the CPU's).

    Seeds: inputs from ``default_rng([seed, 0])``, model weights from ``default_rng([seed, 1])``, the rule's
    drawn arrays from ``default_rng([seed, 2])``.  ``options`` (default: the variant's) are the recorded step's.

    Returns
    -------
    dict with ``attrs`` (root attributes), ``datasets`` (``{path: array}`` in write order) and ``group_attrs``
    (``{group path: {name: value}}``).
    """
    from . import __version__

    spec = _spec_of(rule_name, model_name, variant)
    options = dict(spec["options"] if options is None else options)
    warmup, steps, opt = spec["warmup"], spec["steps"], spec["optimizer"]
    warm_opts = spec["warmup_options"]
    data_rng = np.random.default_rng([seed, 0])
    x_shape = build_model(model_name, np.random.default_rng(0)).input_shape
    x = data_rng.standard_normal((BATCH,) + tuple(x_shape)).astype(DTYPE)
    y = data_rng.integers(0, NUM_CLASSES, size=BATCH).astype(np.int64)
    x_host, y_host = x, y
    x, y = xp.asarray(x), xp.asarray(y)

    run = _make_run(model_name, rule_name, seed, options if warm_opts is None else warm_opts, opt, xp)
    for _ in range(warmup):
        run.train_step(x, y)
    if warm_opts is not None:
        # recorded resolved (every option of the warm-up rule, its variant included), so the file says which
        # rule made the warm-up without the reader having to know the defaults
        warm_resolved = dict(run.rule.resolved_options(run.model))
        # the recorded step's rule (its own options) on the warmed-up parameters and the same drawn state
        rec = _make_run(model_name, rule_name, seed, options, opt, xp)
        dst = dict(rec.model.named_params())
        for key, a in run.model.named_params():
            dst[key][...] = a
        rec.rule.load_state_dict(run.rule.state_dict(), xp)
        run = rec
    model, rule = run.model, run.rule

    ds: dict[str, np.ndarray] = {}
    gattrs: dict = {}
    ds["input/x"], ds["input/y"] = x_host, y_host
    fb = rule.feedback_export(model)
    per = {k: {n: _host(a) for n, a in d.items()} for k, d in fb.layers.items()}
    fattrs, glob = fb.layer_attrs, {n: _host(a) for n, a in fb.arrays.items()}
    learn = {item.key: (item.layer, item.name) for item in rule.learnable(model)}
    before = {}
    for gp, layer in _layer_groups(model):
        top = "/" not in gp
        gattrs[f"layers/{gp}"] = dict(_layer_attrs(layer), **(fattrs.get(int(gp), {}) if top else {}))
        for n in PARAM_NAMES:
            if n in layer.params and layer.kind != "residual":
                before[f"{gp}/{n}"] = ds[f"layers/{gp}/{n}"] = _host(layer.params[n])
        for n in FEEDBACK_NAMES:
            if top and n in per.get(int(gp), {}):
                ds[f"layers/{gp}/{n}"] = per[int(gp)][n]
    for a in rule.aux_networks():  # a rule's auxiliary networks: layers/<k>/aux/<name>/<j>, as model layers
        for gp, layer in _layer_groups(a.net):
            ap = f"layers/{int(a.layer)}/aux/{a.name}/{gp}"
            gattrs[ap] = _layer_attrs(layer)
            for n in PARAM_NAMES:
                if n in layer.params and layer.kind != "residual":
                    ds[f"{ap}/{n}"] = _host(layer.params[n])
    for n, a in glob.items():
        ds[f"feedback/{n}"] = a
    h = x
    outs = []
    for k, layer in enumerate(model.layers):
        h, _ = layer.forward(h, train=True)
        outs.append(_host(h))

    rule.keep_signals = True  # the recorded step's signals are exported (signal/<k>)
    res = rule.step(model, x, y)

    # the step must have used exactly the recorded parameters and forward pass
    now = _param_arrays(model, rule)
    for p, a in before.items():
        if not np.array_equal(now[p], a):
            raise RuntimeError(f"{rule_name}/{model_name}: the step changed parameter {p} before using it")
    if not np.allclose(_host(res.logits), outs[-1], rtol=1e-13, atol=1e-15):
        raise RuntimeError(f"{rule_name}/{model_name}: the step's logits differ from the recorded forward pass")

    for k, o in enumerate(outs):
        ds[f"forward/{k}/out"] = o
    ds["forward/logits"] = _host(res.logits)
    ds["forward/loss"] = _host(res.loss)
    for k in sorted(res.signals):
        ds[f"signal/{int(k)}"] = _host(res.signals[k])
    upd = _update_arrays(model, res, learn)
    for p, a in upd.items():
        ds[f"update/{p}"] = a
    missing = [key for key, _ in model.named_params() if f"update/{_path(key)}" not in ds]
    if missing:
        raise RuntimeError(f"{rule_name}/{model_name}: the step gave no update for {missing}")

    for t in range(1, steps + 1):  # multi-step cases: the optimiser step and after_step, same batch each time
        if t > 1:
            res = run.step(x, y)
            upd = _update_arrays(model, res, learn)
        ds[f"steps/{t}/loss"] = _host(res.loss)
        for p, a in upd.items():
            ds[f"steps/{t}/update/{p}"] = a
        run.apply(res)
        for p, a in _param_arrays(model, rule).items():
            ds[f"steps/{t}/params/{p}"] = a

    extra_opts = {"warmup_sgd_steps": warmup, "warmup_lr": WARMUP_LR} if warmup else {}
    if warm_opts is not None:
        extra_opts["warmup_options"] = warm_resolved
    attrs = {
        "schema": SCHEMA,
        "rule": rule_name,
        "model": model_name,
        "variant": variant,
        "dtype": np.dtype(DTYPE).name,
        "seed": int(seed),
        "ssaref_version": __version__,
        "options": json.dumps(
            dict(rule.resolved_options(model), loss="softmax_cross_entropy", loss_reduction="mean", **extra_opts),
            sort_keys=True,
        ),
        "coverage": json.dumps(list(coverage_of(case_name(rule_name, model_name, variant)))),
    }
    if steps:
        attrs["optimizer"] = json.dumps(opt, sort_keys=True)
        attrs["steps"] = int(steps)
    return {"attrs": attrs, "datasets": ds, "group_attrs": gattrs}


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------
def _attr_value(v):
    if isinstance(v, (list, tuple)):
        return np.asarray(v, dtype=np.int64)
    if isinstance(v, bool):
        return np.int64(v)
    if isinstance(v, int):
        return np.int64(v)
    return v


def _group(f, path, h5py):
    """Create (or open) the group ``path`` with time tracking off, so files do not depend on the clock."""
    g = f
    for part in path.split("/"):
        if not part:
            continue
        if part in g:
            g = g[part]
            continue
        gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
        gcpl.set_obj_track_times(False)
        gid = h5py.h5g.create(g.id, part.encode(), gcpl=gcpl)
        g = h5py.Group(gid)
    return g


def write_case(path, case):
    """Write one case atomically (temporary file in the same directory, then ``os.replace``)."""
    h5py = _h5py()
    path = os.fspath(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
        for k, v in case["attrs"].items():
            f.attrs[k] = _attr_value(v)
        for p, a in case["datasets"].items():
            parent, _, leaf = p.rpartition("/")
            g = _group(f, parent, h5py)
            a = np.asarray(a)
            g.create_dataset(leaf, data=a, track_times=False)  # contiguous, no filters
        for gp, at in case["group_attrs"].items():
            g = _group(f, gp, h5py)
            for k, v in at.items():
                g.attrs[k] = _attr_value(v)
    return path


def check_export_dir(out_dir, overwrite=False):
    """Refuse an export folder before any work: a path that is not a folder, or a folder that already holds
    ``.h5`` files (golden files of an earlier export, or anything else of that name) unless ``overwrite``."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GoldenError(f"--out {out_dir} exists and is not a folder")
    if os.path.isdir(out_dir):
        held = sorted(n for n in os.listdir(out_dir) if n.endswith(".h5"))
        if held and not overwrite:
            raise GoldenError(
                f"--out {out_dir} already holds {len(held)} .h5 file(s) (e.g. {held[0]}); pass "
                f"--overwrite to replace the golden files"
            )
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise GoldenError(f"--out {out_dir}: folder is not writable")
    else:
        parent = os.path.dirname(os.path.abspath(out_dir))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise GoldenError(f"--out {out_dir}: cannot create it under {parent}")
    return out_dir


def export(out_dir, seed=DEFAULT_SEED, only=None, log=None, overwrite=False, xp=np):
    """Write every case into ``out_dir`` (created if needed); returns the paths written.

    ``only``: optional iterable of case names (``<rule>__<model>__<variant>``) to restrict the export.
    Refused (GoldenError) when ``out_dir`` is a file or already holds ``.h5`` files and ``overwrite`` is false.
    Every case is computed before the first file is written; each file is written atomically.  While the files
    are written, ``out_dir`` holds the marker ``EXPORT-INCOMPLETE.json`` (the files being written), removed after
    the last one: an export stopped half-way (Ctrl-C, a full disk) leaves it, and check/validate refuse the
    folder until an export completes there.
    """
    check_export_dir(out_dir, overwrite)
    only = set(only) if only is not None else None
    todo = []
    for s in case_specs():
        name = case_name(s["rule"], s["model"], s["variant"])
        if only is not None and name not in only:
            continue
        todo.append((name, compute_case(s["rule"], s["model"], s["variant"], s["options"], seed=seed, xp=xp)))
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, _check.EXPORT_MARKER)
    write_text(
        marker,
        json.dumps(
            {
                "note": "an export by python -m ssaref.vectors export was writing these files "
                "and did not finish; export again with --overwrite",
                "schema": SCHEMA,
                "files": [name + ".h5" for name, _ in todo],
            },
            indent=1,
        )
        + "\n",
    )
    paths = []
    for name, case in todo:
        paths.append(write_case(os.path.join(out_dir, name + ".h5"), case))
        if log is not None:
            print(f"wrote {paths[-1]}", file=log)
    os.remove(marker)
    return paths


# ---------------------------------------------------------------------------------------------------
# checking (the standalone checker, ssaref/golden/check.py)
# ---------------------------------------------------------------------------------------------------
def check(
    golden_dir,
    candidate_dir,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    out=None,
    failures_only=False,
    report=None,
    overwrite=False,
):
    """``ssaref.golden.check.check``: print the table, write the markdown ``report`` if given; exit status
    0 all passed, 1 a failure.  Raises GoldenError when the check cannot run."""
    return _check.check(
        golden_dir, candidate_dir, rtol, atol, out=out, failures_only=failures_only, report=report, overwrite=overwrite
    )


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def _seed(s):
    """``--seed``: an int in [0, 2**63 - 1] (a golden file stores it as an int64 attribute)."""
    import argparse

    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if not 0 <= v <= _INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"must be in [0, {_INT64_MAX}] (a golden file stores it as a 64-bit integer), got {s}"
        )
    return v


_INT64_MAX = 2**63 - 1


def main(argv=None):
    """``python -m ssaref.vectors``: 0 done (check: all passed), 1 a check failed, 2 bad input (one ``error:``
    line), 130 interrupted (Ctrl-C)."""
    from .cli import run_main

    return run_main(_main, argv)


def _main(argv):
    from .cli import OneLineParser

    ap = OneLineParser(
        prog="python -m ssaref.vectors",
        description="Export golden per-layer update vectors, or check a candidate "
        "implementation against them (docs/golden-vectors.md).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    ex = sub.add_parser("export", help="write one HDF5 file per (rule, model, variant)")
    ex.add_argument("--out", required=True, help="output directory (created if needed)")
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the golden files of an earlier export in --out (refused without it)",
    )
    ex.add_argument(
        "--seed", type=_seed, default=DEFAULT_SEED, help="seed of inputs, weights and feedback (0 .. 2**63 - 1)"
    )
    ex.add_argument(
        "--only", nargs="*", default=None, metavar="CASE", help="export only these cases (<rule>__<model>__<variant>)"
    )
    ex.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "cupy", "auto"],
        help="compute the cases on this backend (cupy: on the GPU, for checking the GPU path against "
        "a CPU export; default numpy)",
    )
    ch = sub.add_parser("check", help="compare a candidate directory with a golden directory (ssaref/golden/check.py)")
    _check.add_check_arguments(ch)
    va = sub.add_parser("validate", help="validate golden files against the schema")
    va.add_argument("paths", nargs="+", help="files or directories")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            known = {case_name(r, m, v) for r, m, v, _ in cases()}
            if args.only is not None:
                bad = sorted(set(args.only) - known)
                if bad or not args.only:
                    raise GoldenError(
                        f"unknown case(s) {', '.join(bad) or '(none given)'}; known: {', '.join(sorted(known))}"
                    )
            from .backend import resolve_backend

            xp = resolve_backend(args.backend)  # BackendError (no usable CuPy): one line, exit 2 (run_main)
            paths = export(args.out, seed=args.seed, only=args.only, overwrite=args.overwrite, xp=xp)
            print(f"wrote {len(paths)} golden files to {args.out}")
            return 0
        if args.cmd == "check":
            return check(
                args.golden_dir,
                args.candidate_dir,
                args.rtol,
                args.atol,
                failures_only=args.failures_only,
                report=args.report,
                overwrite=args.overwrite,
            )
        return _check.validate_paths(args.paths)
    except (GoldenError, OSError) as exc:
        msg = str(exc) if isinstance(exc, GoldenError) else f"{exc.strerror or exc}: {exc.filename or ''}"
        print(f"error: {_check.one_line(msg)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
