#!/usr/bin/python3
"""Plots for `moekit report` (embedded in the binary, written beside the report so the figures
can be re-made): loss against training FLOPs and against wall time, one line per run, train
loss (thin, smoothed) and evaluation loss (markers), the target loss as a dashed line.
    plot_report.py REPORT.json OUT_DIR
Needs matplotlib (Debian: python3-matplotlib)."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smooth(xs, k=9):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    report = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    target = report.get("target_loss")
    made = []
    for key, label, fname, scale in (("flops", "training FLOPs", "loss_vs_flops.png", 1.0),
                                     ("wall_seconds", "wall time (s)", "loss_vs_time.png", 1.0)):
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
        for i, run in enumerate(report["runs"]):
            color = f"C{i}"
            xs = [m[key] * scale for m in run["train"]]
            ax.plot(xs, smooth([m["loss"] for m in run["train"]]), color=color, lw=1.2, alpha=0.8,
                    label=f"{run['name']} (train)")
            if run["eval"]:
                ax.plot([e[key] * scale for e in run["eval"]], [e["loss"] for e in run["eval"]], "o-",
                        color=color, ms=4, lw=1.8, label=f"{run['name']} (eval)")
        if target is not None:
            ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.3f}")
        ax.set_xlabel(label)
        ax.set_ylabel("loss (nats/token)")
        if key == "flops":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"loss against {label}")
        fig.tight_layout()
        path = os.path.join(out, fname)
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    print(json.dumps({"plots": made}))


if __name__ == "__main__":
    main()
