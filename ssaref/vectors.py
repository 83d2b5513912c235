"""Golden vectors: exact per-layer updates of every rule, in a stable HDF5 format, and their checker.

``python -m ssaref.vectors export --out DIR`` writes one file per case (rule x model x variant), float64,
schema ``ssaref-golden/1`` (documented field by field in docs/golden-vectors.md): the inputs, every layer's
kind, geometry and parameters before the step, the rule's feedback arrays, every layer's forward output, the
loss, the error signal the rule delivers to each layer's output and the update direction of every parameter
(what plain SGD subtracts times the learning rate).

``python -m ssaref.vectors check GOLDEN_DIR CANDIDATE_DIR [--rtol R --atol A]`` compares a candidate
implementation's files (same names, same schema, at least ``/update`` and ``/forward/loss``) with the golden
ones field by field, prints a table (case, field, max abs error, max rel error, pass/fail) and exits 1 on any
failure or missing field / case, 2 when it cannot run (missing directory, foreign file, schema mismatch).

A field passes when every element satisfies ``|cand - gold| <= atol + rtol * |gold|`` (``numpy.allclose``
semantics, NaN never passes) and the shapes agree.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np

SCHEMA = "ssaref-golden/1"
DTYPE = np.float64
DEFAULT_SEED = 0
BATCH = 6
NUM_CLASSES = 5
DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-10

PARAM_NAMES = ("W", "b", "U", "s", "V")
FEEDBACK_NAMES = ("B", "R", "B_U", "B_S", "B_V")
LAYER_KINDS = ("linear", "conv2d", "svd_linear", "svd_conv2d", "maxpool2d", "avgpool2d", "flatten",
               "relu", "tanh", "sigmoid")
# geometry attributes each layer kind must carry (beyond ``kind``)
GEOMETRY = {
    "linear": ("in_features", "out_features"),
    "svd_linear": ("in_features", "out_features", "rank"),
    "conv2d": ("in_channels", "out_channels", "kernel", "stride", "padding"),
    "svd_conv2d": ("in_channels", "out_channels", "kernel", "stride", "padding", "rank"),
    "maxpool2d": ("kernel", "stride", "padding"),
    "avgpool2d": ("kernel", "stride", "padding"),
}
REQUIRED_PARAMS = {"linear": ("W",), "conv2d": ("W",), "svd_linear": ("U", "s", "V"),
                   "svd_conv2d": ("U", "s", "V")}

MODELS = ("mlp", "conv")
# Every registered rule gets a ``default`` case (its default options) on every golden model it supports (PEPITA
# is defined for MLPs only, so it has no conv case), plus the variants its class lists in ``GOLDEN_VARIANTS``
# (options, plain-SGD steps of lr WARMUP_LR taken on the same batch before the recorded step): e.g. SSA's and
# SVD-BP's ``sgd1`` variants start one SGD step away from the full-rank SVD, where U^T U != I, so that the
# orthogonality term (eq. (9)), zero at an exact SVD, shows in the update.
WARMUP_LR = 0.5

__all__ = ["SCHEMA", "GoldenError", "build_model", "cases", "case_name", "compute_case", "write_case",
           "export", "read_file", "validate_file", "compare_case", "check", "main"]


class GoldenError(Exception):
    """A golden/candidate file or directory cannot be used (missing, foreign, wrong schema)."""


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is a dependency
        raise GoldenError("h5py is needed for golden vectors: pip install h5py") from exc
    return h5py


# ---------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------
def build_model(name, rng):
    """The two golden models, float64, on the host.

    ``mlp``: Linear(12, 10), ReLU, Linear(10, 8), ReLU, Linear(8, 5).
    ``conv``: Conv2d(1, 4, 3, padding=1), ReLU, MaxPool2d(2), Flatten, Linear(64, 5) on 1x8x8 inputs.
    """
    from .nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

    ctx = {"xp": np, "dtype": np.dtype(DTYPE), "rng": rng}
    if name == "mlp":
        model = Sequential([Linear(12, 10, **ctx), ReLU(), Linear(10, 8, **ctx), ReLU(), Linear(8, 5, **ctx)])
        model.input_shape = (12,)
    elif name == "conv":
        model = Sequential([Conv2d(1, 4, 3, padding=1, **ctx), ReLU(), MaxPool2d(2), Flatten(),
                            Linear(64, 5, **ctx)])
        model.input_shape = (1, 8, 8)
    else:
        raise ValueError(f"unknown golden model {name!r}; choose one of {', '.join(MODELS)}")
    model.name, model.num_classes = f"golden-{name}", NUM_CLASSES
    return model


def case_name(rule, model, variant):
    """File stem ``<rule>__<model>__<variant>``."""
    return f"{rule}__{model}__{variant}"


def _rule_cases():
    """``[(rule, variant, options, warm-up steps)]``: every registered rule's default, then its
    ``GOLDEN_VARIANTS``."""
    from .rules import RULES

    return ([(r, "default", {}, 0) for r in RULES]
            + [(r, v, dict(o), int(w)) for r, cls in RULES.items() for v, (o, w) in cls.GOLDEN_VARIANTS.items()])


def supports(rule_name, model_name):
    """Whether the rule can be set up on the golden model (PEPITA refuses conv nets with a ValueError)."""
    from .rules import build_rule

    try:
        build_rule(rule_name).setup(build_model(model_name, np.random.default_rng(0)), np.random.default_rng(0))
    except ValueError:
        return False
    return True


def cases():
    """``[(rule, model, variant, options)]`` of every exported case, in export order."""
    return [(r, m, v, dict(o)) for r, v, o, _ in _rule_cases() for m in MODELS if supports(r, m)]


def _warmup_steps(rule, variant):
    return next((c[3] for c in _rule_cases() if c[0] == rule and c[1] == variant), 0)


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
        a.update(in_channels=int(p["W"].shape[1]), out_channels=int(p["W"].shape[0]),
                 kernel=_pair_list(g["kernel"]), stride=_pair_list(g["stride"]), padding=_pair_list(g["padding"]))
    elif kind == "svd_conv2d":
        g = layer.geometry()
        a.update(in_channels=int(g["c_in"]), out_channels=int(g["c_out"]), kernel=_pair_list(g["kernel"]),
                 stride=_pair_list(g["stride"]), padding=_pair_list(g["padding"]), rank=layer.rank)
    elif kind in ("maxpool2d", "avgpool2d"):
        g = layer.geometry()
        a.update(kernel=_pair_list(g["kernel"]), stride=_pair_list(g["stride"]), padding=_pair_list(g["padding"]))
    return a


def _host(a):
    from .backend import asnumpy
    return np.ascontiguousarray(np.asarray(asnumpy(a), dtype=DTYPE))


def compute_case(rule_name, model_name, variant, options=None, seed=DEFAULT_SEED):
    """Run one rule step and collect every field of the golden file.

    Seeds: inputs from ``default_rng([seed, 0])``, model weights from ``default_rng([seed, 1])``, the rule's
    drawn arrays from ``default_rng([seed, 2])``.

    Returns
    -------
    dict with ``attrs`` (root attributes), ``datasets`` (``{path: array}`` in write order) and ``group_attrs``
    (``{group path: {name: value}}``).
    """
    from . import __version__
    from .run import build_run

    options = dict(options or {})
    data_rng = np.random.default_rng([seed, 0])
    model = build_model(model_name, np.random.default_rng([seed, 1]))
    x = data_rng.standard_normal((BATCH,) + tuple(model.input_shape)).astype(DTYPE)
    y = data_rng.integers(0, NUM_CLASSES, size=BATCH).astype(np.int64)
    # plain SGD (no momentum, no decay) for the warm-up steps: p <- p - lr * update, then the rule's after_step
    run = build_run(model, rule_name, np.random.default_rng([seed, 2]), options=options, optimizer="sgd",
                    lr=WARMUP_LR, momentum=0.0)
    model, rule = run.model, run.rule
    warmup = _warmup_steps(rule_name, variant)
    for _ in range(warmup):
        run.train_step(x, y)

    ds, gattrs = {}, {}
    ds["input/x"], ds["input/y"] = x, y
    fb = rule.feedback_export(model)
    per = {k: {n: _host(a) for n, a in d.items()} for k, d in fb.layers.items()}
    fattrs, glob = fb.layer_attrs, {n: _host(a) for n, a in fb.arrays.items()}
    learn = {item.key: (item.layer, item.name) for item in rule.learnable(model)}
    before = {}
    for k, layer in enumerate(model.layers):
        gattrs[f"layers/{k}"] = dict(_layer_attrs(layer), **fattrs.get(k, {}))
        for n in PARAM_NAMES:
            if n in layer.params:
                before[(k, n)] = ds[f"layers/{k}/{n}"] = _host(layer.params[n])
        for n in FEEDBACK_NAMES:
            if n in per.get(k, {}):
                ds[f"layers/{k}/{n}"] = per[k][n]
        gattrs.setdefault(f"layers/{k}", {})
    for n, a in glob.items():
        ds[f"feedback/{n}"] = a
    h = x
    outs = []
    for k, layer in enumerate(model.layers):
        h, _ = layer.forward(h, train=True)
        outs.append(_host(h))

    res = rule.step(model, x, y)

    # the step must have used exactly the recorded parameters and forward pass
    for (k, n), a in before.items():
        if not np.array_equal(_host(model.layers[k].params[n]), a):
            raise RuntimeError(f"{rule_name}/{model_name}: the step changed parameter {k}.{n} before using it")
    if not np.allclose(_host(res.logits), outs[-1], rtol=1e-13, atol=1e-15):
        raise RuntimeError(f"{rule_name}/{model_name}: the step's logits differ from the recorded forward pass")

    for k, o in enumerate(outs):
        ds[f"forward/{k}/out"] = o
    ds["forward/logits"] = _host(res.logits)
    ds["forward/loss"] = np.asarray(res.loss, dtype=DTYPE)
    for k in sorted(res.signals):
        ds[f"signal/{int(k)}"] = _host(res.signals[k])
    for key in sorted((k for k in res.updates if k not in learn), key=lambda s: (int(s.split(".", 1)[0]), s)):
        k, n = key.split(".", 1)
        ds[f"update/{int(k)}/{n}"] = _host(res.updates[key])
    for key, (k, n) in learn.items():   # rule-owned arrays the optimiser updates (KP's B): update/<layer>/<name>
        ds[f"update/{int(k)}/{n}"] = _host(res.updates[key])
    missing = [key for key, _ in model.named_params() if f"update/{key.replace('.', '/', 1)}" not in ds]
    if missing:
        raise RuntimeError(f"{rule_name}/{model_name}: the step gave no update for {missing}")

    attrs = {"schema": SCHEMA, "rule": rule_name, "model": model_name, "variant": variant,
             "dtype": np.dtype(DTYPE).name, "seed": int(seed), "ssaref_version": __version__,
             "options": json.dumps(dict(rule.resolved_options(model), loss="softmax_cross_entropy",
                                        loss_reduction="mean",
                                        **({"warmup_sgd_steps": warmup, "warmup_lr": WARMUP_LR} if warmup else {})),
                                   sort_keys=True)}
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
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".golden-", suffix=".h5.tmp", dir=d)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def export(out_dir, seed=DEFAULT_SEED, only=None, log=None):
    """Write every case into ``out_dir`` (created if needed); returns the paths written.

    ``only``: optional iterable of case names (``<rule>__<model>__<variant>``) to restrict the export.
    """
    os.makedirs(out_dir, exist_ok=True)
    only = set(only) if only is not None else None
    paths = []
    for rule, model, variant, opts in cases():
        name = case_name(rule, model, variant)
        if only is not None and name not in only:
            continue
        case = compute_case(rule, model, variant, opts, seed=seed)
        paths.append(write_case(os.path.join(out_dir, name + ".h5"), case))
        if log is not None:
            print(f"wrote {paths[-1]}", file=log)
    return paths


# ---------------------------------------------------------------------------------------------------
# reading and validation
# ---------------------------------------------------------------------------------------------------
def _decode(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


def read_file(path):
    """``(root attrs, {dataset path: array}, {group path: attrs})`` of an HDF5 file.

    Raises GoldenError when the file is not HDF5.
    """
    h5py = _h5py()
    path = os.fspath(path)
    if not h5py.is_hdf5(path):
        raise GoldenError(f"{path}: not an HDF5 file")
    ds, gattrs = {}, {}
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    ds[name] = obj[()]
                elif len(obj.attrs):
                    gattrs[name] = {k: _decode(v) for k, v in obj.attrs.items()}
            f.visititems(visit)
    except OSError as exc:
        raise GoldenError(f"{path}: cannot read HDF5 file ({exc})") from None
    return attrs, ds, gattrs


def _is_float64(a):
    return np.asarray(a).dtype == np.float64


def validate_file(path, candidate=False):
    """Problems (list of one-line strings) of ``path`` against schema ``ssaref-golden/1``; empty when valid.

    ``candidate=True`` checks a candidate file: the ``schema`` attribute, ``/forward/loss`` and at least one
    ``/update`` array (every field present must still have the documented type).
    Raises GoldenError for a file that is not HDF5.
    """
    attrs, ds, gattrs = read_file(path)
    errs = []
    if attrs.get("schema") != SCHEMA:
        return [f"schema attribute is {attrs.get('schema')!r}, expected {SCHEMA!r}"]
    for p, a in ds.items():
        if p == "input/y":
            if np.asarray(a).dtype != np.int64:
                errs.append(f"/input/y has dtype {np.asarray(a).dtype}, expected int64")
        elif not _is_float64(a):
            errs.append(f"/{p} has dtype {np.asarray(a).dtype}, expected float64")
    if "forward/loss" not in ds:
        errs.append("missing /forward/loss")
    elif np.asarray(ds["forward/loss"]).shape != ():
        errs.append(f"/forward/loss must be a scalar, has shape {np.asarray(ds['forward/loss']).shape}")
    if not any(p.startswith("update/") for p in ds):
        errs.append("no /update arrays")
    for p in ds:
        parts = p.split("/")
        if parts[0] not in ("input", "layers", "feedback", "forward", "signal", "update"):
            errs.append(f"unexpected dataset /{p}")
    if candidate:
        return errs

    for k in ("rule", "model", "variant", "dtype", "seed", "ssaref_version", "options"):
        if k not in attrs:
            errs.append(f"missing root attribute {k!r}")
    if attrs.get("dtype") != "float64":
        errs.append(f"root attribute dtype is {attrs.get('dtype')!r}, expected 'float64'")
    try:
        if not isinstance(json.loads(attrs.get("options", "")), dict):
            errs.append("root attribute options is not a JSON object")
    except (TypeError, ValueError):
        errs.append("root attribute options is not valid JSON")
    x, y = ds.get("input/x"), ds.get("input/y")
    if x is None or y is None:
        errs.append("missing /input/x or /input/y")
        return errs
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        errs.append(f"/input/y has shape {y.shape}, expected ({x.shape[0]},)")
    ks = sorted({int(p.split("/")[1]) for p in list(ds) + list(gattrs)
                 if p.startswith("layers/") and p.split("/")[1].isdigit()})
    if ks != list(range(len(ks))) or not ks:
        return errs + [f"/layers groups are {ks}, expected 0..L-1"]
    for k in ks:
        ga = gattrs.get(f"layers/{k}", {})
        kind = ga.get("kind")
        if kind not in LAYER_KINDS:
            errs.append(f"/layers/{k} has kind {kind!r}, not one of {', '.join(LAYER_KINDS)}")
            continue
        for g in GEOMETRY.get(kind, ()):
            if g not in ga:
                errs.append(f"/layers/{k} ({kind}) lacks geometry attribute {g!r}")
        names = {p.split("/")[2] for p in ds if p.startswith(f"layers/{k}/")}
        for n in names - set(PARAM_NAMES) - set(FEEDBACK_NAMES):
            errs.append(f"/layers/{k}/{n} is neither a parameter nor a feedback array")
        for n in REQUIRED_PARAMS.get(kind, ()):
            if n not in names:
                errs.append(f"/layers/{k} ({kind}) lacks parameter {n}")
        if kind not in REQUIRED_PARAMS and names & set(PARAM_NAMES):
            errs.append(f"/layers/{k} ({kind}) has parameters {sorted(names & set(PARAM_NAMES))}")
        for n in sorted(names & set(PARAM_NAMES)):
            u = ds.get(f"update/{k}/{n}")
            if u is None:
                errs.append(f"missing /update/{k}/{n}")
            elif u.shape != ds[f"layers/{k}/{n}"].shape:
                errs.append(f"/update/{k}/{n} has shape {u.shape}, parameter has {ds[f'layers/{k}/{n}'].shape}")
        if f"forward/{k}/out" not in ds:
            errs.append(f"missing /forward/{k}/out")
        s = ds.get(f"signal/{k}")
        if s is not None and f"forward/{k}/out" in ds and s.shape != ds[f"forward/{k}/out"].shape:
            errs.append(f"/signal/{k} has shape {s.shape}, layer output has {ds[f'forward/{k}/out'].shape}")
    for p in ds:
        parts = p.split("/")
        if parts[0] in ("update", "signal") and (not parts[1].isdigit() or int(parts[1]) not in ks):
            errs.append(f"/{p} names no layer")
    if "forward/logits" not in ds:
        errs.append("missing /forward/logits")
    elif f"forward/{ks[-1]}/out" in ds and not np.array_equal(ds["forward/logits"], ds[f"forward/{ks[-1]}/out"]):
        errs.append("/forward/logits differs from the last layer's output")
    elif ds["forward/logits"].shape[0] != x.shape[0]:
        errs.append("/forward/logits has a different batch size from /input/x")
    else:
        K = ds["forward/logits"].shape[1]
        if y.size and (y.min() < 0 or y.max() >= K):
            errs.append(f"/input/y holds labels outside [0, {K})")
    return errs


# ---------------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------------
def _required_fields(gold_ds):
    return ["forward/loss"] + sorted((p for p in gold_ds if p.startswith("update/")), key=_field_key)


def _optional_fields(gold_ds):
    return sorted((p for p in gold_ds if p.startswith(("forward/", "signal/")) and p != "forward/loss"),
                  key=_field_key)


def _field_key(p):
    parts = p.split("/")
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts]


def compare_arrays(cand, gold, rtol, atol):
    """``(ok, max abs error, max rel error, note)``; rel error over the elements where ``gold != 0``."""
    c, g = np.asarray(cand, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if c.shape != g.shape:
        return False, math.nan, math.nan, f"shape {c.shape} != {g.shape}"
    if c.size == 0:
        return True, 0.0, 0.0, ""
    d = np.abs(c - g)
    mabs = float(np.max(d)) if np.all(np.isfinite(d)) else math.inf
    nz = g != 0
    mrel = float(np.max(d[nz] / np.abs(g[nz]))) if nz.any() else (0.0 if mabs == 0 else math.inf)
    if not np.all(np.isfinite(d)):
        mrel = math.inf
    ok = bool(np.all(d <= atol + rtol * np.abs(g)))  # NaN compares False
    return ok, mabs, mrel, ""


def compare_case(gold_path, cand_path, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL):
    """Rows ``(field, max abs, max rel, ok, note)`` for one case.

    Required fields (``/forward/loss`` and every golden ``/update``) fail when missing; ``/forward/*`` and
    ``/signal/*`` are compared when the candidate provides them.
    """
    g_attrs, g_ds, _ = read_file(gold_path)
    c_attrs, c_ds, _ = read_file(cand_path)
    if c_attrs.get("schema") != SCHEMA:
        raise GoldenError(f"{cand_path}: schema attribute is {c_attrs.get('schema')!r}, expected {SCHEMA!r}")
    for k in ("rule", "model", "variant"):
        if k in c_attrs and c_attrs[k] != g_attrs.get(k):
            raise GoldenError(f"{cand_path}: attribute {k}={c_attrs[k]!r} does not match the golden "
                              f"{g_attrs.get(k)!r}")
    rows = []
    for p in _required_fields(g_ds):
        if p not in c_ds:
            rows.append((p, math.nan, math.nan, False, "missing"))
            continue
        ok, ma, mr, note = compare_arrays(c_ds[p], g_ds[p], rtol, atol)
        rows.append((p, ma, mr, ok, note))
    for p in _optional_fields(g_ds):
        if p in c_ds:
            ok, ma, mr, note = compare_arrays(c_ds[p], g_ds[p], rtol, atol)
            rows.append((p, ma, mr, ok, note))
    for p in sorted(c_ds, key=_field_key):
        if p.startswith(("update/", "signal/", "forward/")) and p not in g_ds:
            rows.append((p, math.nan, math.nan, False, "not in the golden file"))
    return rows


def _golden_files(golden_dir):
    if not os.path.isdir(golden_dir):
        raise GoldenError(f"golden directory {golden_dir!r} does not exist")
    names = sorted(n for n in os.listdir(golden_dir) if n.endswith(".h5"))
    if not names:
        raise GoldenError(f"golden directory {golden_dir!r} holds no .h5 files")
    for n in names:
        p = os.path.join(golden_dir, n)
        attrs, _, _ = read_file(p)
        if "schema" not in attrs:
            raise GoldenError(f"{p}: not a golden-vector file (no schema attribute)")
        if attrs["schema"] != SCHEMA:
            raise GoldenError(f"{p}: schema {attrs['schema']!r} is not the supported {SCHEMA!r}")
    return names


def _fmt(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3e}"


def check(golden_dir, candidate_dir, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, out=None, failures_only=False):
    """Compare every golden case with the candidate of the same name; print the table and a summary.

    Returns the exit status: 0 all passed, 1 some field or case failed or is missing.
    Raises GoldenError when a directory is missing or a file is foreign or of another schema.
    """
    out = out if out is not None else sys.stdout
    names = _golden_files(golden_dir)
    if not os.path.isdir(candidate_dir):
        raise GoldenError(f"candidate directory {candidate_dir!r} does not exist")
    table = []
    case_ok = {}
    for n in names:
        case = n[:-3]
        cp = os.path.join(candidate_dir, n)
        if not os.path.exists(cp):
            table.append((case, "(case file)", math.nan, math.nan, False, "missing"))
            case_ok[case] = False
            continue
        rows = compare_case(os.path.join(golden_dir, n), cp, rtol, atol)
        case_ok[case] = all(r[3] for r in rows)
        table += [(case,) + r for r in rows]
    wc = max([len("case")] + [len(r[0]) for r in table])
    wf = max([len("field")] + [len(r[1]) for r in table])
    print(f"{'case':<{wc}}  {'field':<{wf}}  {'max abs err':>11}  {'max rel err':>11}  result", file=out)
    for case, field, ma, mr, ok, note in table:
        if failures_only and ok:
            continue
        res = "pass" if ok else "FAIL" + (f" ({note})" if note else "")
        print(f"{case:<{wc}}  {field:<{wf}}  {_fmt(ma):>11}  {_fmt(mr):>11}  {res}", file=out)
    npass = sum(1 for r in table if r[4])
    nfail = len(table) - npass
    cpass = sum(case_ok.values())
    print(f"fields: {npass} passed / {nfail} failed; cases: {cpass} passed / {len(case_ok) - cpass} failed "
          f"(rtol={rtol:g}, atol={atol:g})", file=out)
    return 0 if nfail == 0 else 1


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ssaref.vectors",
                                 description="Export golden per-layer update vectors, or check a candidate "
                                             "implementation against them (docs/golden-vectors.md).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write one HDF5 file per (rule, model, variant)")
    ex.add_argument("--out", required=True, help="output directory (created if needed)")
    ex.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of inputs, weights and feedback")
    ex.add_argument("--only", nargs="*", default=None, metavar="CASE",
                    help="export only these cases (<rule>__<model>__<variant>)")
    ch = sub.add_parser("check", help="compare a candidate directory with a golden directory")
    ch.add_argument("golden_dir")
    ch.add_argument("candidate_dir")
    ch.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    ch.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    ch.add_argument("--failures-only", action="store_true", help="print only the failing rows")
    va = sub.add_parser("validate", help="validate golden files against the schema")
    va.add_argument("paths", nargs="+", help="files or directories")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            known = {case_name(r, m, v) for r, m, v, _ in cases()}
            if args.only:
                bad = sorted(set(args.only) - known)
                if bad:
                    raise GoldenError(f"unknown case(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
            paths = export(args.out, seed=args.seed, only=args.only)
            print(f"wrote {len(paths)} golden files to {args.out}")
            return 0
        if args.cmd == "check":
            if not (args.rtol >= 0 and args.atol >= 0):
                raise GoldenError(f"tolerances must be >= 0, got rtol={args.rtol}, atol={args.atol}")
            return check(args.golden_dir, args.candidate_dir, args.rtol, args.atol,
                         failures_only=args.failures_only)
        bad = 0
        for p in args.paths:
            files = ([os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith(".h5")]
                     if os.path.isdir(p) else [p])
            if not os.path.exists(p):
                raise GoldenError(f"{p!r} does not exist")
            for fpath in files:
                errs = validate_file(fpath)
                print(f"{fpath}: {'ok' if not errs else 'INVALID'}")
                for e in errs:
                    print(f"  {e}")
                bad += bool(errs)
        return 1 if bad else 0
    except GoldenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
