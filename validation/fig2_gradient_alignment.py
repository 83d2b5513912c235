"""Figure 2 of the paper: eq. (4) angle between the SSA / DFA update and the BP gradient, per layer, over epochs.

3-layer MLP (3072-256-256-10, docs/decisions.md D1) on CIFAR-10 (section 5.4).  Every ``--align-every`` steps
the training loop runs BP on the same batch and parameters and logs, per weight layer, the angle (degrees)
between the rule's update and BP's gradient (for SSA's SVD layers: the induced change of W,
``dU S V^T + U dS V^T + U S dV^T``, docs/decisions.md D4.7); the figure plots the per-epoch mean
(``/metrics/align.grad_mean``).  The paper prints no numbers for this figure, only the claim "SSA consistently
achieves lower alignment angles across layers compared to DFA"; ``results.md`` states per layer whether the
measured angles agree.  The paper gives no epoch count or alignment interval: 50 epochs and every 50 steps are
our choice.  Settings of section 6: Adam, lr 5e-4, batch 128, crop + flip.

    python -m validation.fig2_gradient_alignment
    python -m validation.fig2_gradient_alignment --quick --data-dir DIR     # smoke test

Writes ``<out-dir>/cifar10-mlp-{ssa,dfa}-seed<s>.h5``, ``results.md`` and ``fig2_gradient_alignment.png``.
"""
from __future__ import annotations

import sys

import numpy as np

from validation import _sweep as sw

SCRIPT = "fig2_gradient_alignment"
EPOCHS = 50             # not stated in the paper: our choice
METHODS = ["ssa", "dfa"]
LABELS = {"ssa": "SSA", "dfa": "DFA"}
PAPER_CLAIM = "SSA consistently achieves lower alignment angles across layers compared to DFA (section 5.4)"


def configs(args):
    return sw.grid(args.datasets, ["mlp"], METHODS, LABELS, flags=["--align-every", str(args.align_every)])


def angle_section(cfgs, results):
    """Per layer: angle at the first and last epoch for each method, and whether SSA < DFA."""
    lines = []
    for ds in sorted({c.dataset for c in cfgs}, key=[c.dataset for c in cfgs].index):
        series = {c.method: sw.layer_series(results.get(c.name, []), "align.grad_mean")
                  for c in cfgs if c.dataset == ds}
        have = {m: s for m, s in series.items() if s[1] is not None}
        if not have:
            lines.append(f"\n**{ds}**: no alignment measured (no run finished).\n")
            continue
        n_layers = max(len(s[0]) for s in have.values())
        lines += [f"\n**{ds}: eq. (4) angle with the BP gradient (degrees, mean over the recorded steps of the epoch; "
                  "over seeds where several)**\n",
                  "| layer | " + " | ".join(f"{LABELS[m]} epoch 1 | {LABELS[m]} last epoch" for m in have) +
                  " | SSA < DFA at the last epoch |",
                  "|" + " --- |" * (2 + 2 * len(have))]
        for j in range(n_layers):
            cells, last = [], {}
            name = None
            for m, (cols, mean, _) in have.items():
                name = name or (cols[j] if j < len(cols) else f"layer {j}")
                a0 = mean[0, j] if j < mean.shape[1] else np.nan
                a1 = mean[-1, j] if j < mean.shape[1] else np.nan
                last[m] = a1
                cells += [sw.fmt_num(a0, 1), sw.fmt_num(a1, 1)]
            if "ssa" in last and "dfa" in last and np.isfinite(last["ssa"]) and np.isfinite(last["dfa"]):
                verdict = "yes" if last["ssa"] < last["dfa"] else "no"
            else:
                verdict = "not measured"
            lines.append(f"| {j + 1} (`{name}`) | " + " | ".join(cells) + f" | {verdict} |")
        lines.append("\nDFA's output layer receives e itself (D3 `dfa_output=e`), so its angle is 0 by construction; "
                     "SSA's output layer is an SVD layer whose induced change of W is compared with BP's gradient.")
    return "\n".join(lines)


def plot(cfgs, results, path):
    plt = sw.pyplot()
    groups = [(c, sw.layer_series(results.get(c.name, []), "align.grad_mean")) for c in cfgs]
    groups = [(c, s) for c, s in groups if s[1] is not None]
    n_layers = max((len(s[0]) for _, s in groups), default=1)
    fig, axes = plt.subplots(1, n_layers, figsize=(4 * n_layers, 3.4), squeeze=False)
    for j, ax in enumerate(axes[0]):
        for c, (cols, mean, std) in groups:
            if j >= mean.shape[1]:
                continue
            ep = np.arange(1, mean.shape[0] + 1)
            lab = c.label + (f" ({c.dataset})" if len({g.dataset for g, _ in groups}) > 1 else "")
            ax.plot(ep, mean[:, j], marker="o" if len(ep) < 3 else None, label=lab)
            if np.any(np.isfinite(std[:, j]) & (std[:, j] > 0)):
                ax.fill_between(ep, mean[:, j] - std[:, j], mean[:, j] + std[:, j], alpha=0.2)
        ax.set_title(f"layer {j + 1}")
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
        if j == 0:
            ax.set_ylabel("angle with BP gradient (deg)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Gradient alignment with BP, 3-layer MLP (cf. paper Figure 2)", y=1.03)
    return sw.save_figure(fig, path)


SPEC = sw.Sweep(
    SCRIPT, __doc__, "Figure 2: gradient alignment of SSA and DFA with BP (3-layer MLP)",
    notes=f"Paper: Figure 2, no numbers printed; claim: {PAPER_CLAIM}.",
    methods=METHODS, configs=configs, epochs=EPOCHS,
    align_every=50, align_help="record the angles every N steps (default 50)",
    sections=lambda cfgs, results: [angle_section(cfgs, results)], plot=plot)


def main(argv=None):
    return sw.run_script(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
