"""Standalone checker for ssaref golden vectors (schemas ``ssaref-golden/1`` and ``ssaref-golden/2``).

Needs only the standard library, numpy and h5py: copy this one file next to your implementation and run it;
ssaref itself need not be installed.  ``python -m ssaref.vectors check`` runs the same code.

Usage::

    python check.py GOLDEN CANDIDATE [--rtol 1e-7] [--atol 1e-10] [--failures-only] [--report FILE.md]
    python check.py validate PATH [PATH ...]

``GOLDEN`` is a directory of golden files (or one golden file); ``CANDIDATE`` a directory holding files of the
same names (or, with a golden file, a candidate file).  Every golden field is compared with the candidate's
(docs/golden-vectors.md, "Checking"): required fields fail when missing, optional ones are compared when
present.  An element passes when

    cand == gold  (the same number, or the same infinity),  or
    both are finite and |cand - gold| <= atol + rtol * |gold|,  the rtol term being 0 where gold == 0,

so NaN never passes, ``--rtol inf`` accepts any finite value where gold != 0 and still judges gold's zeros by
``atol`` alone, and ``--atol inf`` accepts any finite value.  A field passes when the shapes agree and every
element passes.  ``--report FILE.md`` also writes a per-case, per-field markdown table (written atomically;
refused before any comparison when its folder is missing or not writable, or when it names a folder).

``validate`` checks golden files against the schema (every problem on its own line).

Exit status:
    0  check: every compared field of every case passed;  validate: every file is valid;
    1  check: a field or a case failed or is missing;     validate: a file is invalid;
    2  the command cannot run: one line ``error: <what and which file>`` on stderr and nothing else (a missing
       path, a folder without ``.h5`` files, a file that is not HDF5 or not a golden file, an unsupported schema,
       a dataset that is not a real number array (strings, compounds, complex), a root attribute that is not a
       single string where one is needed, a candidate whose ``rule``/``model``/``variant`` contradicts the golden
       file, a bad tolerance or report path, a bad command line).  No report is written then.  Among them: a
       golden file that fails ``validate`` (``read_golden``: the one reader of golden files, which
       ``python -m ssaref.vectors`` imports from here; this file carries it so that it runs with numpy and h5py
       alone), datasets that declare more than ``MAX_ELEMENTS`` numbers (checked before any data is read), and a
       folder holding ``EXPORT-INCOMPLETE.json`` (an export was interrupted there).
  130  interrupted (Ctrl-C): one line ``interrupted``, nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np

SCHEMA_V1 = "ssaref-golden/1"
SCHEMA_V2 = "ssaref-golden/2"
SCHEMAS = (SCHEMA_V1, SCHEMA_V2)
SCHEMA = SCHEMA_V2  # what ssaref writes now
DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-10

PARAM_NAMES = ("W", "b", "U", "s", "V")
FEEDBACK_NAMES = ("B", "R", "B_U", "B_S", "B_V")
LAYER_KINDS = (
    "linear",
    "conv2d",
    "svd_linear",
    "svd_conv2d",
    "maxpool2d",
    "avgpool2d",
    "flatten",
    "relu",
    "tanh",
    "sigmoid",
    "residual",
)
BRANCHES = ("main", "shortcut")  # sub-layers of a ``residual`` layer (schema 2)
# geometry attributes each layer kind must carry (beyond ``kind``)
GEOMETRY = {
    "linear": ("in_features", "out_features"),
    "svd_linear": ("in_features", "out_features", "rank"),
    "conv2d": ("in_channels", "out_channels", "kernel", "stride", "padding"),
    "svd_conv2d": ("in_channels", "out_channels", "kernel", "stride", "padding", "rank"),
    "maxpool2d": ("kernel", "stride", "padding"),
    "avgpool2d": ("kernel", "stride", "padding"),
}
REQUIRED_PARAMS = {"linear": ("W",), "conv2d": ("W",), "svd_linear": ("U", "s", "V"), "svd_conv2d": ("U", "s", "V")}
TOP_GROUPS = ("input", "layers", "feedback", "forward", "signal", "update", "steps")
# Bounds checked before anything is allocated or looped over (a crafted file may declare any shape or count):
# ssaref's largest golden file holds about 18,000 numbers and records at most 10 optimiser steps.
MAX_ELEMENTS = 2**24  # numbers in all the datasets of one file (128 MiB as float64)
MAX_STEPS = 100  # root attribute ``steps``: optimiser steps a multi-step case may record
# Written by ``python -m ssaref.vectors export`` into its folder before the first case file and removed after the
# last: a folder that holds it is an interrupted export, and check/validate refuse it (exit 2).
EXPORT_MARKER = "EXPORT-INCOMPLETE.json"

EXIT_OK, EXIT_FAIL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130: Ctrl-C, as ssaref's other commands

__all__ = [
    "SCHEMA",
    "SCHEMAS",
    "GoldenError",
    "EXPORT_MARKER",
    "MAX_ELEMENTS",
    "MAX_STEPS",
    "check_complete",
    "read_file",
    "validate_file",
    "compare_arrays",
    "compare_case",
    "read_golden",
    "required_fields",
    "optional_fields",
    "run_check",
    "check",
    "format_table",
    "format_report",
    "write_report",
    "one_line",
    "main",
]


class GoldenError(Exception):
    """A golden/candidate file, directory or argument cannot be used: reported as one ``error:`` line, exit 2."""


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is a dependency
        raise GoldenError("h5py is needed to read golden vectors: pip install h5py") from exc
    return h5py


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------
def _decode(v):
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return v
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _decode(v.item())
    if isinstance(v, np.generic):
        return v.item()
    return v


def _numeric(a):
    """Whether an array holds real numbers (float, signed or unsigned int): what golden fields may be."""
    return a.dtype.kind in "fiu" and a.dtype.fields is None


def read_file(path):
    """``(root attrs, {dataset path: array}, {group path: attrs})`` of an HDF5 file.

    Raises GoldenError when the path is missing or not a regular file, the file is not HDF5 or cannot be read,
    a dataset holds anything but real numbers (strings, compound records, complex, object references) or has
    no dataspace, or the datasets declare more than ``MAX_ELEMENTS`` numbers in all (checked on the declared
    shapes, before any data is read).
    """
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise GoldenError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise GoldenError(f"{path}: not a regular file")
    try:
        ok = h5py.is_hdf5(path)
    except OSError as exc:
        raise GoldenError(f"{path}: cannot read ({exc})") from None
    if not ok:
        raise GoldenError(f"{path}: not an HDF5 file")
    ds, gattrs = {}, {}
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            found = []  # (name, dataset), in visiting order: the declared dtypes and shapes come first

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    found.append((name, obj))
                elif len(obj.attrs):
                    gattrs[name] = {k: _decode(v) for k, v in obj.attrs.items()}

            f.visititems(visit)
            total = 0
            for name, obj in found:
                if obj.shape is None:
                    raise GoldenError(
                        f"{path}: dataset /{name} has no dataspace (an empty HDF5 dataset), not a real number array"
                    )
                if not _numeric(obj):
                    raise GoldenError(f"{path}: dataset /{name} has dtype {obj.dtype}, not a real number array")
                total += math.prod(int(d) for d in obj.shape)
                if total > MAX_ELEMENTS:
                    raise GoldenError(
                        f"{path}: dataset /{name} declares shape {tuple(obj.shape)}; a golden file "
                        f"holds at most {MAX_ELEMENTS} numbers in all"
                    )
            for name, obj in found:
                a = np.asarray(obj[()])
                if not _numeric(a):
                    raise GoldenError(f"{path}: dataset /{name} has dtype {a.dtype}, not a real number array")
                ds[name] = a
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise GoldenError(f"{path}: cannot read HDF5 file ({exc})") from None
    return attrs, ds, gattrs


def _str_attr(attrs, key, path, required=True):
    """A root attribute that must be one string (None when absent and not required)."""
    if key not in attrs:
        if required:
            raise GoldenError(f"{path}: not a golden-vector file (no {key} attribute)")
        return None
    v = attrs[key]
    if not isinstance(v, str):
        what = f"an array of shape {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
        raise GoldenError(f"{path}: root attribute {key!r} must be a single string, got {what}")
    return v


def _schema_of(attrs, path):
    s = _str_attr(attrs, "schema", path)
    if s not in SCHEMAS:
        raise GoldenError(f"{path}: schema {s!r} is not supported (this checker reads {', '.join(SCHEMAS)})")
    return s


# ---------------------------------------------------------------------------------------------------
# validation against the schema
# ---------------------------------------------------------------------------------------------------
def _is_float64(a):
    return np.asarray(a).dtype == np.float64


def _is_index(name):
    """Whether a group or dataset name is a layer / step index (ASCII digits: ``"²".isdigit()`` is true too)."""
    return name.isascii() and name.isdigit()


def _kind(ga):
    """A layer group's ``kind`` attribute as a string (any other value shown as its repr, which is no kind)."""
    k = ga.get("kind")
    return k if isinstance(k, str) or k is None else repr(k)[:80]


def _geom(ga, key, pair=False):
    """A geometry attribute as an int >= 1 (``pair``: a pair of ints, an int k meaning (k, k); padding >= 0), or
    None when absent or malformed."""
    v = ga.get(key)
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu":
        v = [int(a) for a in v]
    if pair and isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    lo = 0 if key == "padding" else 1
    if pair:
        ok = isinstance(v, list) and len(v) == 2 and all(isinstance(a, int) and a >= lo for a in v)
        return tuple(v) if ok else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= lo else None


def _param_shapes(kind, ga):
    """The parameter shapes ``{name: shape}`` a layer's geometry implies (section "/layers/<k>" of
    docs/golden-vectors.md), or None when its geometry attributes are malformed."""
    if kind in ("linear", "svd_linear"):
        n, m = _geom(ga, "in_features"), _geom(ga, "out_features")
        if n is None or m is None:
            return None
        if kind == "linear":
            return {"W": (m, n), "b": (m,)}
        r = _geom(ga, "rank")
        return None if r is None else {"U": (m, r), "s": (r,), "V": (n, r), "b": (m,)}
    if kind in ("conv2d", "svd_conv2d"):
        c, n, k = _geom(ga, "in_channels"), _geom(ga, "out_channels"), _geom(ga, "kernel", pair=True)
        if c is None or n is None or k is None:
            return None
        if kind == "conv2d":
            return {"W": (n, c, k[0], k[1]), "b": (n,)}
        r = _geom(ga, "rank")
        return None if r is None else {"U": (n * k[1], r), "s": (r,), "V": (c * k[0], r), "b": (n,)}
    return {}


def _children(ds, gattrs, prefix):
    """Names of the direct children (datasets and groups) of group ``prefix``."""
    out = set()
    for p in list(ds) + list(gattrs):
        if p.startswith(prefix + "/"):
            out.add(p[len(prefix) + 1 :].split("/", 1)[0])
    return out


def _layer_groups(ds, gattrs, prefix, errs, nested=False, aux=False):
    """``[(group path, kind)]`` of the layers under ``prefix`` (``layers``, ``layers/<k>/<branch>`` or an auxiliary
    network ``layers/<k>/aux/<name>``), in order, residual blocks and auxiliary networks expanded; problems
    appended to ``errs``."""
    kids = _children(ds, gattrs, prefix)
    idx = sorted(int(c) for c in kids if _is_index(c))
    for c in sorted(c for c in kids if not _is_index(c)):
        errs.append(f"/{prefix}/{c} is not a layer index")
    if idx != list(range(len(idx))) or not idx:
        errs.append(f"/{prefix} groups are {idx}, expected 0..L-1")
        return []
    out = []
    for k in idx:
        gp = f"{prefix}/{k}"
        kind = _kind(gattrs.get(gp, {}))
        out.append((gp, kind))
        if kind == "residual":
            if nested:
                errs.append(f"/{gp}: a residual block inside a residual block is not described by the schema")
                continue
            if "main" not in _children(ds, gattrs, gp):
                errs.append(f"/{gp} (residual) has no main branch")
            for br in sorted(c for c in _children(ds, gattrs, gp) if f"{gp}/{c}" not in ds and c != "aux"):
                if br not in BRANCHES:
                    errs.append(f"/{gp}/{br} is not a branch ({', '.join(BRANCHES)})")
                else:
                    out += _layer_groups(ds, gattrs, f"{gp}/{br}", errs, nested=True)
        if not nested and not aux and "aux" in _children(ds, gattrs, gp) and f"{gp}/aux" not in ds:
            for name in sorted(_children(ds, gattrs, f"{gp}/aux")):  # a rule's auxiliary networks (schema 2)
                out += _layer_groups(ds, gattrs, f"{gp}/aux/{name}", errs, aux=True)
    return out


def validate_file(path, candidate=False):
    """Problems (list of one-line strings) of ``path`` against its schema (1 or 2); empty when valid.

    ``candidate=True`` checks a candidate file: the ``schema`` attribute, ``/forward/loss`` and at least one
    ``/update`` array (every field present must still have the documented type).
    Raises GoldenError for a file that cannot be read (see ``read_file``).
    """
    attrs, ds, gattrs = read_file(path)
    return _problems(attrs, ds, gattrs, candidate=candidate)


def read_golden(path):
    """``read_file`` of a golden file that must be valid against its schema: the one reader of golden files
    (``check`` reads the golden side with it, ``validate`` lists the same problems).  Raises GoldenError naming
    the file and its first problem."""
    attrs, ds, gattrs = read_file(path)
    _schema_of(attrs, path)
    errs = _problems(attrs, ds, gattrs)
    if errs:
        more = f" (and {len(errs) - 1} more: see validate)" if len(errs) > 1 else ""
        raise GoldenError(f"{path}: not a valid golden file: {errs[0]}{more}")
    return attrs, ds, gattrs


def _problems(attrs, ds, gattrs, candidate=False):
    """``validate_file``'s problems of a file already read."""
    errs = []
    schema = attrs.get("schema")
    if not isinstance(schema, str) or schema not in SCHEMAS:
        return [f"schema attribute is {schema!r}, expected one of {', '.join(SCHEMAS)}"]
    v2 = schema == SCHEMA_V2
    for p, a in ds.items():
        if p == "input/y":
            if a.dtype != np.int64:
                errs.append(f"/input/y has dtype {a.dtype}, expected int64")
        elif not _is_float64(a):
            errs.append(f"/{p} has dtype {a.dtype}, expected float64")
    if "forward/loss" not in ds:
        errs.append("missing /forward/loss")
    elif ds["forward/loss"].shape != ():
        errs.append(f"/forward/loss must be a scalar, has shape {ds['forward/loss'].shape}")
    if not any(p.startswith("update/") for p in ds):
        errs.append("no /update arrays")
    for p in ds:
        if p.split("/")[0] not in TOP_GROUPS or (p.startswith("steps/") and not v2):
            errs.append(f"unexpected dataset /{p}")
    if candidate:
        return errs

    for k in ("rule", "model", "variant", "dtype", "seed", "ssaref_version", "options") + (("coverage",) if v2 else ()):
        if k not in attrs:
            errs.append(f"missing root attribute {k!r}")
    for k in ("rule", "model", "variant", "dtype", "ssaref_version", "options", "coverage", "optimizer"):
        if k in attrs and not isinstance(attrs[k], str):
            errs.append(f"root attribute {k!r} is not a single string")
    if not (isinstance(attrs.get("dtype"), str) and attrs["dtype"] == "float64"):
        errs.append(f"root attribute dtype is {str(attrs.get('dtype'))[:80]!r}, expected 'float64'")
    try:
        if not isinstance(json.loads(attrs.get("options", "")), dict):
            errs.append("root attribute options is not a JSON object")
    except (TypeError, ValueError):
        errs.append("root attribute options is not valid JSON")
    if v2 and "coverage" in attrs:
        try:
            cov = json.loads(attrs["coverage"])
            if not (isinstance(cov, list) and all(isinstance(t, str) for t in cov)):
                errs.append("root attribute coverage is not a JSON list of strings")
        except (TypeError, ValueError):
            errs.append("root attribute coverage is not valid JSON")
    nsteps = _steps_of(attrs, errs)
    steps_known = nsteps is not None
    nsteps = nsteps or 0
    x, y = ds.get("input/x"), ds.get("input/y")
    if x is None or y is None:
        errs.append("missing /input/x or /input/y")
        return errs
    if x.ndim not in (2, 4) or x.shape[0] < 1:
        errs.append(f"/input/x has shape {x.shape}, expected (B, features) or (B, C, H, W) with B >= 1")
        return errs
    if y.shape != x.shape[:1]:
        errs.append(f"/input/y has shape {y.shape}, expected ({x.shape[0]},)")
    groups = _layer_groups(ds, gattrs, "layers", errs)
    if not groups:
        return errs
    top = [gp for gp, _ in groups if gp.count("/") == 1]
    params = []  # (layer path without "layers/", name)
    for gp, kind in groups:
        ga = gattrs.get(gp, {})
        lp = gp[len("layers/") :]
        if kind not in LAYER_KINDS:
            errs.append(f"/{gp} has kind {kind!r}, not one of {', '.join(LAYER_KINDS)}")
            continue
        if kind == "residual" and not v2:
            errs.append(f"/{gp}: residual layers need schema {SCHEMA_V2}")
        for g in GEOMETRY.get(kind, ()):
            if g not in ga:
                errs.append(f"/{gp} ({kind}) lacks geometry attribute {g!r}")
        names = {c for c in _children(ds, gattrs, gp) if f"{gp}/{c}" in ds}
        for n in names - set(PARAM_NAMES) - set(FEEDBACK_NAMES):
            errs.append(f"/{gp}/{n} is neither a parameter nor a feedback array")
        for n in REQUIRED_PARAMS.get(kind, ()):
            if n not in names:
                errs.append(f"/{gp} ({kind}) lacks parameter {n}")
        if kind not in REQUIRED_PARAMS and names & set(PARAM_NAMES):
            errs.append(f"/{gp} ({kind}) has parameters {sorted(names & set(PARAM_NAMES))}")
        want = _param_shapes(kind, ga)
        if want is None:
            errs.append(f"/{gp} ({kind}) has malformed geometry attributes (positive integers expected)")
            want = {}
        for n in sorted(names & set(PARAM_NAMES)):
            params.append((lp, n))
            if n in want and ds[f"{gp}/{n}"].shape != want[n]:
                errs.append(f"/{gp}/{n} has shape {ds[f'{gp}/{n}'].shape}, its geometry says {want[n]}")
            u = ds.get(f"update/{lp}/{n}")
            if u is None:
                errs.append(f"missing /update/{lp}/{n}")
            elif u.shape != ds[f"{gp}/{n}"].shape:
                errs.append(f"/update/{lp}/{n} has shape {u.shape}, parameter has {ds[f'{gp}/{n}'].shape}")
            for t in range(1, nsteps + 1):
                q = ds.get(f"steps/{t}/params/{lp}/{n}")
                if q is None:
                    errs.append(f"missing /steps/{t}/params/{lp}/{n}")
                elif q.shape != ds[f"{gp}/{n}"].shape:
                    errs.append(
                        f"/steps/{t}/params/{lp}/{n} has shape {q.shape}, parameter has {ds[f'{gp}/{n}'].shape}"
                    )
    for gp in top:
        k = gp.split("/")[1]
        if f"forward/{k}/out" not in ds:
            errs.append(f"missing /forward/{k}/out")
        elif ds[f"forward/{k}/out"].shape[:1] != x.shape[:1]:
            errs.append(f"/forward/{k}/out has shape {ds[f'forward/{k}/out'].shape}, not a batch of {x.shape[0]}")
        s = ds.get(f"signal/{k}")
        if s is not None and f"forward/{k}/out" in ds and s.shape != ds[f"forward/{k}/out"].shape:
            errs.append(f"/signal/{k} has shape {s.shape}, layer output has {ds[f'forward/{k}/out'].shape}")
    layer_paths = {gp[len("layers/") :] for gp, _ in groups}
    for p in ds:
        parts = p.split("/")
        if parts[0] == "signal" and (len(parts) != 2 or f"layers/{parts[1]}" not in top):
            errs.append(f"/{p} names no layer")
        elif parts[0] == "update" and "/".join(parts[1:-1]) not in layer_paths:
            errs.append(f"/{p} names no layer")
        elif parts[0] == "steps" and steps_known:
            ok = (
                len(parts) >= 3
                and _is_index(parts[1])
                and 1 <= int(parts[1]) <= nsteps
                and (
                    (parts[2] == "loss" and len(parts) == 3)
                    or (parts[2] in ("params", "update") and "/".join(parts[3:-1]) in layer_paths)
                )
            )
            if not ok:
                errs.append(f"unexpected dataset /{p}")
    for t in range(1, nsteps + 1):
        if f"steps/{t}/loss" not in ds:
            errs.append(f"missing /steps/{t}/loss")
    for t in range(1, nsteps + 1):
        if f"steps/{t}/loss" in ds and ds[f"steps/{t}/loss"].shape != ():
            errs.append(f"/steps/{t}/loss must be a scalar, has shape {ds[f'steps/{t}/loss'].shape}")
    if "forward/logits" not in ds:
        errs.append("missing /forward/logits")
    elif ds["forward/logits"].ndim != 2 or ds["forward/logits"].shape[1] < 1:
        errs.append(f"/forward/logits has shape {ds['forward/logits'].shape}, expected (B, K)")
    elif f"forward/{len(top) - 1}/out" in ds and not np.array_equal(
        ds["forward/logits"], ds[f"forward/{len(top) - 1}/out"]
    ):
        errs.append("/forward/logits differs from the last layer's output")
    elif ds["forward/logits"].shape[0] != x.shape[0]:
        errs.append("/forward/logits has a different batch size from /input/x")
    else:
        K = ds["forward/logits"].shape[1]
        if y.size and (y.min() < 0 or y.max() >= K):
            errs.append(f"/input/y holds labels outside [0, {K})")
    return errs


def _steps_of(attrs, errs):
    """Number of recorded optimiser steps (root attribute ``steps`` with ``optimizer``; 0 when absent, None when
    the attribute is not an integer in [1, MAX_STEPS]: the problem is listed once, not per /steps dataset)."""
    has_s, has_o = "steps" in attrs, "optimizer" in attrs
    if has_s != has_o:
        errs.append("root attributes steps and optimizer come together")
        return 0
    if not has_s:
        return 0
    s = attrs["steps"]
    if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_STEPS:
        errs.append(
            f"root attribute steps is {str(s)[:80]}, expected an integer in [1, {MAX_STEPS}] (the /steps "
            f"datasets are not checked)"
        )
        return None
    try:
        o = json.loads(attrs["optimizer"])
        if not (isinstance(o, dict) and isinstance(o.get("name"), str)):
            errs.append("root attribute optimizer is not a JSON object with a name")
    except (TypeError, ValueError):
        errs.append("root attribute optimizer is not valid JSON")
    return s


# ---------------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------------
def _field_key(p):
    return [(0, int(s), "") if _is_index(s) else (1, 0, s) for s in p.split("/")]


def required_fields(gold_ds):
    """Fields a candidate must provide: ``/forward/loss``, every ``/update``, and (schema 2, multi-step cases)
    every ``/steps/<t>/loss`` and ``/steps/<t>/params``."""
    req = [
        p
        for p in gold_ds
        if p.startswith("update/") or (p.startswith("steps/") and p.split("/")[2:3] in (["loss"], ["params"]))
    ]
    return ["forward/loss"] + sorted(req, key=_field_key)


def optional_fields(gold_ds):
    """Fields compared when the candidate has them: ``/forward/*`` (but the loss), ``/signal/*``,
    ``/steps/<t>/update/*``."""
    opt = [
        p
        for p in gold_ds
        if (p.startswith(("forward/", "signal/")) and p != "forward/loss")
        or (p.startswith("steps/") and p.split("/")[2:3] == ["update"])
    ]
    return sorted(opt, key=_field_key)


def compare_arrays(cand, gold, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL):
    """``(ok, max abs error, max rel error, note)``; rel error over the elements where ``gold != 0``.

    Element test (module docstring): ``cand == gold``, or both finite and ``|cand - gold| <= atol + rtol |gold|``
    with the rtol term 0 where ``gold == 0`` (so infinite tolerances are well defined).
    """
    c, g = np.asarray(cand), np.asarray(gold)
    if not (_numeric(c) and _numeric(g)):
        raise GoldenError(f"cannot compare arrays of dtype {c.dtype} and {g.dtype}")
    c, g = c.astype(np.float64), g.astype(np.float64)
    if c.shape != g.shape:
        return False, math.nan, math.nan, f"shape {c.shape} != {g.shape}"
    if c.size == 0:
        return True, 0.0, 0.0, ""
    with np.errstate(invalid="ignore", over="ignore"):
        same = c == g
        finite = np.isfinite(c) & np.isfinite(g)
        d = np.where(same, 0.0, np.abs(c - g))
        d = np.where(same | finite, d, math.inf)  # NaN or a mismatched infinity: infinitely wrong
        ag = np.abs(g)
        rel_term = np.where(g != 0, rtol * np.where(finite, ag, 0.0), 0.0)
        ok = bool(np.all(same | (finite & (d <= atol + rel_term))))
        mabs = float(np.max(d))
        nz = g != 0
        mrel = float(np.max(np.where(same[nz], 0.0, d[nz] / ag[nz]))) if nz.any() else (0.0 if mabs == 0 else math.inf)
    if math.isnan(mrel):
        mrel = math.inf
    return ok, mabs, mrel, ""


def _check_candidate_attrs(g_attrs, c_attrs, cand_path):
    _schema_of(c_attrs, cand_path)
    for k in ("rule", "model", "variant"):
        cv = _str_attr(c_attrs, k, cand_path, required=False)
        if cv is not None and cv != g_attrs.get(k):
            raise GoldenError(f"{cand_path}: attribute {k}={cv!r} does not match the golden {g_attrs.get(k)!r}")


def compare_case(gold_path, cand_path, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL):
    """Rows ``(field, max abs, max rel, ok, note)`` for one case.

    Required fields (``required_fields``) fail when missing; optional ones (``optional_fields``) are compared
    when the candidate provides them; a candidate field under ``/update``, ``/signal``, ``/forward`` or
    ``/steps`` that the golden file lacks fails ("not in the golden file").
    """
    g_attrs, g_ds, _ = read_golden(gold_path)
    c_attrs, c_ds, _ = read_file(cand_path)
    _check_candidate_attrs(g_attrs, c_attrs, cand_path)
    rows = []
    for p in required_fields(g_ds):
        if p not in c_ds:
            rows.append((p, math.nan, math.nan, False, "missing"))
            continue
        rows.append((p,) + _cmp(c_ds[p], g_ds[p], rtol, atol))
    for p in optional_fields(g_ds):
        if p in c_ds:
            rows.append((p,) + _cmp(c_ds[p], g_ds[p], rtol, atol))
    for p in sorted(c_ds, key=_field_key):
        if p.startswith(("update/", "signal/", "forward/", "steps/")) and p not in g_ds:
            rows.append((p, math.nan, math.nan, False, "not in the golden file"))
    return rows


def _cmp(c, g, rtol, atol):
    ok, ma, mr, note = compare_arrays(c, g, rtol, atol)
    return ma, mr, ok, note


def check_complete(folder, what="folder"):
    """Refuse a folder that holds ``EXPORT_MARKER``: an export was interrupted there, so its set of golden files
    is incomplete (each file present is whole: every file is written atomically)."""
    marker = os.path.join(os.fspath(folder), EXPORT_MARKER)
    if os.path.lexists(marker):
        raise GoldenError(
            f"{what} {os.fspath(folder)!r} holds an interrupted export ({EXPORT_MARKER} is there: "
            f"it lists the files the export was writing); export again with --overwrite"
        )


def _golden_files(golden):
    """``(directory, [file names])`` of the golden set (a directory of ``.h5`` files, or one file)."""
    golden = os.fspath(golden)
    if os.path.isfile(golden):
        d, names = os.path.dirname(golden) or ".", [os.path.basename(golden)]
    elif os.path.isdir(golden):
        d = golden
        check_complete(d, "golden directory")
        names = sorted(n for n in os.listdir(golden) if n.endswith(".h5"))
        if not names:
            raise GoldenError(f"golden directory {golden!r} holds no .h5 files")
    else:
        raise GoldenError(f"golden directory {golden!r} does not exist")
    for n in names:
        read_golden(os.path.join(d, n))
    return d, names


def check_tolerances(rtol, atol):
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise GoldenError(f"tolerances must be numbers >= 0 (inf allowed), got {name}={v!r}")


def check_report_path(path, inputs=(), overwrite=False):
    """Refuse a report path before any work: one of the ``inputs`` (``(flag, path)``: the golden and candidate
    files or folders) or a path inside one (an output never replaces an input), an existing file unless
    ``overwrite``, a folder, a missing or unwritable parent folder."""
    if path is None:
        return None
    path = os.fspath(path)
    real = os.path.realpath(path)
    for what, given in inputs:
        inp = os.path.realpath(os.fspath(given))
        inside = os.path.isdir(inp) and os.path.commonpath([inp, real]) == inp
        same = os.path.exists(path) and os.path.exists(inp) and os.path.samefile(path, inp)
        if real == inp or inside or same:
            raise GoldenError(
                f"--report {path}: is {'inside ' if inside and real != inp else ''}the {what} "
                f"{given}; the report never replaces an input, write it elsewhere"
            )
    if os.path.isdir(path):
        raise GoldenError(f"--report {path}: is a folder, not a file")
    if os.path.lexists(path) and not overwrite:
        raise GoldenError(f"--report {path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise GoldenError(f"--report {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GoldenError(f"--report {path}: folder {parent} is not writable")
    return path


def run_check(golden, candidate, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL):
    """Compare every golden case with the candidate of the same name.

    Returns ``(table, case_ok)``: table rows ``(case, field, max abs, max rel, ok, note)`` and
    ``{case: ok}``.  Raises GoldenError when the check cannot run.
    """
    check_tolerances(rtol, atol)
    gdir, names = _golden_files(golden)
    candidate = os.fspath(candidate)
    single = os.path.isfile(os.fspath(golden))
    if single and os.path.isfile(candidate):
        cand_paths = {names[0]: candidate}
    elif os.path.isdir(candidate):
        check_complete(candidate, "candidate directory")
        cand_paths = {n: os.path.join(candidate, n) for n in names}
    else:
        raise GoldenError(f"candidate directory {candidate!r} does not exist")
    table, case_ok = [], {}
    for n in names:
        case = n[:-3] if n.endswith(".h5") else n
        cp = cand_paths[n]
        if not os.path.exists(cp):
            table.append((case, "(case file)", math.nan, math.nan, False, "missing"))
            case_ok[case] = False
            continue
        rows = compare_case(os.path.join(gdir, n), cp, rtol, atol)
        case_ok[case] = all(r[3] for r in rows)
        table += [(case,) + r for r in rows]
    return table, case_ok


def _fmt(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3e}"


def _result(ok, note):
    return "pass" if ok else "FAIL" + (f" ({note})" if note else "")


def summary_line(table, case_ok, rtol, atol):
    npass = sum(1 for r in table if r[4])
    cpass = sum(case_ok.values())
    return (
        f"fields: {npass} passed / {len(table) - npass} failed; cases: {cpass} passed / "
        f"{len(case_ok) - cpass} failed (rtol={rtol:g}, atol={atol:g})"
    )


def format_table(table, case_ok, rtol, atol, failures_only=False):
    """The console table (one row per field) and the summary line."""
    wc = max([len("case")] + [len(r[0]) for r in table])
    wf = max([len("field")] + [len(r[1]) for r in table])
    lines = [f"{'case':<{wc}}  {'field':<{wf}}  {'max abs err':>11}  {'max rel err':>11}  result"]
    for case, field, ma, mr, ok, note in table:
        if failures_only and ok:
            continue
        lines.append(f"{case:<{wc}}  {field:<{wf}}  {_fmt(ma):>11}  {_fmt(mr):>11}  {_result(ok, note)}")
    lines.append(summary_line(table, case_ok, rtol, atol))
    return "\n".join(lines) + "\n"


def format_report(table, case_ok, rtol, atol, golden="", candidate=""):
    """The markdown conformance report: summary per case, then one table per case (every field)."""
    ok_all = all(case_ok.values()) and all(r[4] for r in table)
    out = [
        "# Golden-vector conformance report",
        "",
        f"- golden: `{golden}`",
        f"- candidate: `{candidate}`",
        f"- tolerances: rtol = {rtol:g}, atol = {atol:g} (element passes when cand == gold, or both finite and "
        f"\\|cand - gold\\| <= atol + rtol \\|gold\\|, the rtol term 0 where gold == 0)",
        f"- result: **{'PASS' if ok_all else 'FAIL'}** ({summary_line(table, case_ok, rtol, atol)})",
        "",
        "## Cases",
        "",
        "| case | fields | passed | failed | result |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    by_case = {c: [r for r in table if r[0] == c] for c in case_ok}
    for c, rows in by_case.items():
        npass = sum(1 for r in rows if r[4])
        out.append(f"| `{c}` | {len(rows)} | {npass} | {len(rows) - npass} | {'pass' if case_ok[c] else 'FAIL'} |")
    for c, rows in by_case.items():
        out += ["", f"## `{c}`", "", "| field | max abs err | max rel err | result |", "| --- | ---: | ---: | --- |"]
        for _, field, ma, mr, ok, note in rows:
            out.append(f"| `{field}` | {_fmt(ma)} | {_fmt(mr)} | {_result(ok, note)} |")
    return "\n".join(out) + "\n"


def write_report(path, text):
    """Write ``text`` to ``path`` atomically (a unique temporary file in the same folder, then ``os.replace``).

    A copy of ``ssaref.atomic.write_text`` on purpose: this file must run on its own, with NumPy and h5py only."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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
    """Compare, print the table and the summary to ``out`` (stdout), write ``report`` (markdown) if given.

    Returns the exit status: 0 all passed, 1 some field or case failed or is missing.
    Raises GoldenError when the check cannot run (then nothing is printed or written).
    """
    out = out if out is not None else sys.stdout
    check_tolerances(rtol, atol)
    report = check_report_path(report, (("golden input", golden_dir), ("candidate input", candidate_dir)), overwrite)
    table, case_ok = run_check(golden_dir, candidate_dir, rtol, atol)
    text = format_table(table, case_ok, rtol, atol, failures_only)
    if report is not None:
        try:
            write_report(
                report, format_report(table, case_ok, rtol, atol, os.fspath(golden_dir), os.fspath(candidate_dir))
            )
        except OSError as exc:
            raise GoldenError(f"--report {report}: cannot write ({exc.strerror or exc})") from None
    out.write(text)
    ok = all(case_ok.values()) and all(r[4] for r in table)
    return EXIT_OK if ok else EXIT_FAIL


def validate_paths(paths, out=None):
    """Validate files and directories of files; print one line per file (and its problems). Exit status."""
    out = out if out is not None else sys.stdout
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            check_complete(p, "directory")
            found = [os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith(".h5")]
            if not found:
                raise GoldenError(f"directory {p!r} holds no .h5 files")
            files += found
        elif os.path.exists(p):
            files.append(p)
        else:
            raise GoldenError(f"{p!r} does not exist")
    results = [(f, validate_file(f)) for f in files]  # every file read before anything is printed
    bad = 0
    for f, errs in results:
        out.write(f"{f}: {'ok' if not errs else 'INVALID'}\n")
        for e in errs:
            out.write(f"  {e}\n")
        bad += bool(errs)
    return EXIT_FAIL if bad else EXIT_OK


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _tolerance(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (inf allowed), got {s}")
    return v


def add_check_arguments(ap):
    """The ``check`` arguments (shared with ``python -m ssaref.vectors check``)."""
    ap.add_argument("golden_dir", metavar="GOLDEN", help="golden directory (or one golden file)")
    ap.add_argument("candidate_dir", metavar="CANDIDATE", help="candidate directory (or one candidate file)")
    ap.add_argument("--rtol", type=_tolerance, default=DEFAULT_RTOL, help=f"relative tolerance ({DEFAULT_RTOL:g})")
    ap.add_argument("--atol", type=_tolerance, default=DEFAULT_ATOL, help=f"absolute tolerance ({DEFAULT_ATOL:g})")
    ap.add_argument("--failures-only", action="store_true", help="print only the failing rows")
    ap.add_argument(
        "--report",
        metavar="FILE.md",
        default=None,
        help="also write a per-case, per-field markdown conformance report (never one of the inputs)",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --report file")


def main(argv=None, prog=None):
    """``check.py [check] GOLDEN CANDIDATE [options]`` or ``check.py validate PATH...``; returns the exit
    status (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0] or "check.py")
    try:
        if argv[:1] == ["validate"]:
            ap = _Parser(prog=f"{prog} validate", description="Validate golden files against the schema.")
            ap.add_argument("paths", nargs="+", help="files or directories")
            args = ap.parse_args(argv[1:])
            return validate_paths(args.paths)
        if argv[:1] == ["check"]:
            argv = argv[1:]
        ap = _Parser(
            prog=prog,
            description="Compare a candidate implementation's golden-vector files with the "
            "golden ones, field by field (docs/golden-vectors.md).",
            epilog=f"'{prog} validate PATH...' checks golden files against the schema.  Exit status: 0 "
            "all passed (valid), 1 a field or case failed (a file is invalid), 2 cannot run "
            "(one 'error: ...' line on stderr).",
        )
        add_check_arguments(ap)
        args = ap.parse_args(argv)
        return check(
            args.golden_dir,
            args.candidate_dir,
            args.rtol,
            args.atol,
            failures_only=args.failures_only,
            report=args.report,
            overwrite=args.overwrite,
        )
    except GoldenError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError as exc:
        print(f"error: out of memory: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # nothing half-written: the report is written atomically, the inputs only read
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def one_line(exc):
    return "; ".join(s.strip() for s in str(exc).splitlines() if s.strip()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
