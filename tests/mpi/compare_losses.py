#!/usr/bin/env python3
"""Per-step losses of a run against a reference run of the same config in another layout.

  compare_losses.py REF_RUN_DIR RUN_DIR NAME [--first N] [--last N] [--tol 1e-5]

CE loss ("loss" in metrics.jsonl): |loss - ref| <= tol * ref at every step from --first to --last
(all of them must be there). The layouts add the same f32 terms in different orders, which
moves the weights by ~1e-7 relative over 20 steps; a real bug moves step 2 by >= 1e-3.

Aux loss ("aux_loss"): the same tolerance, at every step before the first step whose expert
counts (expert_load.jsonl) differ from the reference. The aux loss is E * sum_e F_e * P_e with
F_e the *count* of top-k slots on expert e: a token whose k-th and (k+1)-th router
probabilities are closer than the layouts' rounding difference picks another expert in one
layout, which moves F by 1/(layers x tokens) and the aux loss by ~1e-5..1e-4 relative in one
jump, while the CE (one token of thousands) moves by ~1e-6 (measured on tiny-moe: the first such
step was step 38 of 150, aux 7.0e-5, CE 4.8e-6; before it aux <= 2.5e-7). At least --min-aux
steps (default 10) must be compared: a selection flip that early would need weights that already
differ far beyond reduction order.
"""
import argparse
import json
import sys


def load(path):
    with open(path) as f:
        return {r["step"]: r for r in map(json.loads, filter(str.strip, f))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("run")
    ap.add_argument("name")
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--last", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--min-aux", type=int, default=10)
    a = ap.parse_args()
    ref, got = load(a.ref + "/metrics.jsonl"), load(a.run + "/metrics.jsonl")
    steps = list(range(a.first, a.last + 1))
    missing = [s for s in steps if s not in got or s not in ref]
    if missing:
        print(f"FAIL - {a.name}: steps {missing} missing (has {sorted(got)})")
        return 1
    ce = max(abs(got[s]["loss"] - ref[s]["loss"]) / ref[s]["loss"] for s in steps)
    ok = ce <= a.tol
    msg = f"{a.name}: steps {a.first}..{a.last}, worst relative CE difference {ce:.2e}"
    if got[steps[0]].get("aux_loss") is not None:
        ref_load, got_load = load(a.ref + "/expert_load.jsonl"), load(a.run + "/expert_load.jsonl")
        same = []
        for s in steps:
            if s not in ref_load or s not in got_load or ref_load[s]["layers"] != got_load[s]["layers"]:
                break
            same.append(s)
        aux = max((abs(got[s]["aux_loss"] - ref[s]["aux_loss"]) / abs(ref[s]["aux_loss"]) for s in same), default=0.0)
        ok = ok and aux <= a.tol and len(same) >= min(a.min_aux, len(steps))
        msg += f", aux {aux:.2e} over {len(same)} steps with the same expert counts"
        if len(same) < len(steps):
            msg += f" (counts differ from step {steps[len(same)]})"
    print(f"{'ok  ' if ok else 'FAIL'} - {msg} (tolerance {a.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
