"""Figure 3 of the paper: matrix alignment angle per layer of ResNet-32 on CIFAR-10 over epochs, SSA vs DFA.

Section 5.5 defines the matrix alignment as "the angle between the column spaces of W^T and B"; for DFA and SSA
those spaces have different ambient dimensions, so ssaref compares each hidden segment's B_i with the linear part
of the downstream map, ``(W_N ... W_{i+1})^T`` (docs/decisions.md D3, D4.7), logged at every epoch end as
``/metrics/align.matrix_flat`` (eq. (4) angle between the two matrices, degrees).  It is **undefined (nan)
wherever a convolution, pooling or batch norm lies between the injection point and the logits** (the downstream
map is input-dependent), i.e. for almost every layer of a ResNet: the script plots the layers where it is
defined and lists the others as undefined.  The output layer has no B of its own (it receives e): nan as well.
The training loop's alignment tracker (``--align-every``) is what computes it; the default 390 records the
gradient angle about once per CIFAR-10 epoch, which keeps its BP passes cheap.  No epoch count in the paper:
50 is our choice.  Settings of section 6: Adam, lr 5e-4, batch 128, crop + flip.

    python -m validation.fig3_matrix_alignment
    python -m validation.fig3_matrix_alignment --quick --data-dir DIR      # smoke test

Writes ``<out-dir>/cifar10-resnet32-{ssa,dfa}-seed<s>.h5``, ``results.md`` and ``fig3_matrix_alignment.png``.
"""
from __future__ import annotations

import sys

import numpy as np

from validation import _sweep as sw

SCRIPT = "fig3_matrix_alignment"
EPOCHS = 50             # not stated in the paper: our choice
METHODS = ["ssa", "dfa"]
LABELS = {"ssa": "SSA", "dfa": "DFA"}
PAPER_CLAIM = ("the last layer closest to the output achieves the best alignment; SSA maintains lower alignment "
               "angles than DFA in deeper layers (section 5.5)")
UNDEFINED = ("undefined (nan): a convolution, pooling or BN lies between the layer and the logits, or the layer "
             "is the output layer (docs/decisions.md D3, D4.7)")


def configs(args):
    return sw.grid(args.datasets, [args.model], METHODS, LABELS, flags=["--align-every", str(args.align_every)])


def _series(cfgs, results):
    out = []
    for c in cfgs:
        cols, mean, std = sw.layer_series(results.get(c.name, []), "align.matrix_flat")
        if mean is not None:
            out.append((c, cols, mean, std))
    return out


def matrix_section(cfgs, results):
    series = _series(cfgs, results)
    if not series:
        return "\nNo matrix alignment measured (no run finished).\n"
    lines = ["\n**Matrix alignment angle (degrees, `align.matrix_flat` at each epoch end; mean over seeds where "
             "several)**\n", "| run | layer | epoch 1 | last epoch | status |", "| --- | --- | --- | --- | --- |"]
    defined_any = False
    for c, cols, mean, _ in series:
        for j, name in enumerate(cols):
            col = mean[:, j]
            if np.isfinite(col).any():
                defined_any = True
                lines.append(f"| {c.label} ({c.dataset}) | `{name}` | {sw.fmt_num(col[0], 1)} | "
                             f"{sw.fmt_num(col[-1], 1)} | defined |")
        undefined = [f"`{n}`" for j, n in enumerate(cols) if not np.isfinite(mean[:, j]).any()]
        if undefined:
            lines.append(f"| {c.label} ({c.dataset}) | {len(undefined)} of {len(cols)} layers: "
                         f"{', '.join(undefined)} | nan | nan | {UNDEFINED} |")
    if not defined_any:
        lines.append("\nThe matrix alignment is undefined for every layer of these runs: nothing to plot.")
    lines.append("\nOnly the layers marked *defined* can be compared with the paper's Figure 3; the paper's "
                 "per-layer curves for the convolutional layers have no well-defined counterpart (audit item "
                 "matrix-angle, docs/decisions.md D4.8).")
    return "\n".join(lines)


def plot(cfgs, results, path):
    plt = sw.pyplot()
    series = _series(cfgs, results)
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(5 * max(1, len(series)), 3.6), squeeze=False)
    for ax, (c, cols, mean, _) in zip(axes[0], series):
        ep = np.arange(1, mean.shape[0] + 1)
        n_def = 0
        for j, name in enumerate(cols):
            if np.isfinite(mean[:, j]).any():
                ax.plot(ep, mean[:, j], marker="o" if len(ep) < 3 else None, label=name)
                n_def += 1
        n_undef = len(cols) - n_def
        ax.set_title(f"{c.label} ({c.dataset}, {c.model})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("matrix alignment angle (deg)")
        ax.text(0.02, 0.02, f"{n_undef} of {len(cols)} layers undefined (nan), not plotted",
                transform=ax.transAxes, fontsize=7)
        if n_def:
            ax.legend(fontsize=7, title="layer")
    fig.suptitle("Matrix alignment over epochs (cf. paper Figure 3)", y=1.03)
    return sw.save_figure(fig, path)


def add_model_option(p):
    p.add_argument("--model", default="resnet32", help="model (default resnet32, the paper's)")


def check_model(p, args):
    from ssaref.nn import MODELS as ALL_MODELS

    if args.model not in ALL_MODELS:
        p.error(f"--model: unknown model {args.model!r}; choose from {','.join(sorted(ALL_MODELS))}")


SPEC = sw.Sweep(
    SCRIPT, __doc__, "Figure 3: matrix alignment of SSA and DFA, ResNet-32",
    notes=f"Paper: Figure 3, no numbers printed; claim: {PAPER_CLAIM}.",
    methods=METHODS, configs=configs, epochs=EPOCHS, options=add_model_option, check=check_model,
    align_every=390, align_help="alignment tracker interval in steps (default 390)",
    sections=lambda cfgs, results: [matrix_section(cfgs, results)], plot=plot,
    figure_note=" (defined layers only)")


def main(argv=None):
    return sw.run_script(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
