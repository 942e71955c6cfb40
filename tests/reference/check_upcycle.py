#!/usr/bin/env python3
"""Independent check of an upcycled checkpoint with PyTorch / transformers and numpy.

  check_upcycle.py --moe OUT --dense DENSE --tokens 1,2,3 --logits MOEKIT_LOGITS.safetensors

1. transformers loads OUT as Qwen2MoeForCausalLM (float32, eager attention) with no missing or
   unexpected weights, and its logits on --tokens match those of `moekit eval --logits-out`.
2. The plan (OUT/upcycle/plan.json + plan.safetensors) is checked without moekit code: every
   copy's permutation is a permutation; the chunk sources follow the Qwen2 report's procedure
   (concatenate the shuffled copies, cut consecutive chunks); the element re-init rule is
   recomputed with a numpy Philox-4x32-10; every element not re-initialised equals the dense
   element the plan names; the re-initialised fraction matches the recipe and plan.json.

Exit status: 0 all checks passed, 1 a check failed, 77 torch/transformers/numpy unavailable.
Run with /usr/bin/python3 (Debian torch 1.13 + transformers 4.45.2, see tests/reference/README.md).
"""
import argparse
import json
import os
import sys

try:
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2MoeForCausalLM
except Exception as e:  # pragma: no cover - environment dependent
    print("skip: %s" % e)
    sys.exit(77)

MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(c0, c1, k0, k1):
    """Philox-4x32-10 of counters (c0, c1, 0, 0) (uint64 arrays holding 32-bit values)."""
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = 0x9E3779B9, 0xBB67AE85
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    for _ in range(10):
        p0 = m0 * c0
        p1 = m1 * c2
        n0 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0)
        n2 = (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1)
        c1, c3 = p1 & MASK32, p0 & MASK32
        c0, c2 = n0, n2
        k0 = (k0 + w0) & 0xFFFFFFFF
        k1 = (k1 + w1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def stream_key(seed, name):
    h = 1469598103934665603
    for ch in name.encode():
        h = ((h ^ ch) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    h ^= (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    return h & 0xFFFFFFFF, h >> 32


def stream_words(seed, name, n):
    """Word of elements 0..n-1: word (i mod 64) div 16 of block 16 (i div 64) + (i mod 16)."""
    k0, k1 = stream_key(seed, name)
    i = np.arange(n, dtype=np.uint64)
    block = np.uint64(16) * (i // np.uint64(64)) + i % np.uint64(16)
    words = np.stack(philox4x32(block & MASK32, block >> np.uint64(32), k0, k1))
    return words[((i % np.uint64(64)) // np.uint64(16)).astype(np.int64), np.arange(n)]


failures = []


def check(ok, what):
    print(("ok   - " if ok else "FAIL - ") + what)
    if not ok:
        failures.append(what)


def check_transformers(args):
    model, info = Qwen2MoeForCausalLM.from_pretrained(
        args.moe, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    check(not info["missing_keys"] and not info["unexpected_keys"],
          "transformers loads every weight (missing %s, unexpected %s)" % (info["missing_keys"][:3], info["unexpected_keys"][:3]))
    ids = torch.tensor([[int(t) for t in args.tokens.split(",")]])
    with torch.no_grad():
        ref = model(ids).logits[0].float()
    got = load_file(args.logits)["logits"].float()
    diff = (ref - got).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    check(tuple(got.shape) == tuple(ref.shape) and diff <= 1e-4 * scale,
          "moekit eval logits match transformers Qwen2MoeForCausalLM (max |diff| %.3g, scale %.3g)" % (diff, scale))


def check_plan(args):
    plan = json.load(open(os.path.join(args.moe, "upcycle", "plan.json")))
    arrays = load_file(os.path.join(args.moe, "upcycle", "plan.safetensors"))
    moe = load_file(os.path.join(args.moe, "model.safetensors"))
    dense = load_file(os.path.join(args.dense, "model.safetensors"))
    geo, rein = plan["geometry"], plan["reinit"]
    D, W, H = geo["dense_intermediate_size"], geo["expert_intermediate_size"], geo["hidden_size"]
    E, S, C = geo["num_experts"], geo["num_shared_experts"], geo["copies"]
    check(C == -(-(E + S) * W // D), "copies = ceil(n h_E / h_FFN) = %d" % C)
    seed, thr, element = plan["seed"], rein["threshold"], rein["mode"] == "element"
    total = reinit = 0
    for layer in plan["layers"]:
        if layer["kind"] != "sparse":
            continue
        l = layer["layer"]
        perm = arrays["layers.%d.perm" % l].numpy()
        check(all(np.array_equal(np.sort(perm[c]), np.arange(D)) for c in range(C)), "layer %d: every copy is a permutation" % l)
        concat = [(c, int(perm[c, p])) for c in range(C) for p in range(D)]
        r0, s0 = geo["routed_chunk0"], geo["shared_chunk0"]
        src_r = arrays["layers.%d.experts.source_index" % l].numpy()
        cop_r = arrays["layers.%d.experts.source_copy" % l].numpy()
        want = np.array([concat[(r0 + e) * W + j] for e in range(E) for j in range(W)])
        ok = np.array_equal(cop_r.reshape(-1), want[:, 0]) and np.array_equal(src_r.reshape(-1), want[:, 1])
        if S:
            src_s = arrays["layers.%d.shared_expert.source_index" % l].numpy()
            want_s = np.array([concat[s0 * W + j][1] for j in range(S * W)])
            ok = ok and np.array_equal(src_s, want_s)
        check(ok, "layer %d: chunk sources follow the report's cut of the concatenated copies" % l)
        p = "model.layers.%d.mlp." % l
        dg, du, dd = (dense[p + k + ".weight"].float().numpy() for k in ("gate_proj", "up_proj", "down_proj"))
        experts = [("experts.%d." % e, src_r[e], e) for e in range(E)]
        if S:
            experts.append(("shared_expert.", src_s, None))
        bad = []
        for prefix, src, e in experts:
            w = len(src)
            for k, want_w in (("gate_proj", dg[src, :]), ("up_proj", du[src, :]), ("down_proj", dd[:, src])):
                name = p + prefix + k + ".weight"
                x = moe[name].float().numpy()
                if element:
                    mask = (stream_words(seed, name, x.size) < np.uint64(thr)).reshape(x.shape)
                    if e is None and not rein["shared"]:
                        mask[:] = False
                else:
                    flags = arrays["layers.%d.%s" % (l, "experts.reinit_neurons" if e is not None else "shared_expert.reinit_neurons")].numpy()
                    f = (flags[e] if e is not None else flags).astype(bool)
                    mask = np.broadcast_to(f[:, None] if k != "down_proj" else f[None, :], x.shape)
                scale = plan["scaling"]["shared_down" if e is None else "routed_down"] if k == "down_proj" else \
                    plan["scaling"]["shared_gate_up" if e is None else "routed_gate_up"]
                if not np.array_equal(x[~mask], (want_w * np.float32(scale))[~mask]):
                    bad.append(name)
                count = plan["layers"][l]["shared_reinit" if e is None else "routed_reinit"]
                count = count[("gate_proj", "up_proj", "down_proj").index(k)] if e is None else count[e][("gate_proj", "up_proj", "down_proj").index(k)]
                if int(mask.sum()) != count:
                    bad.append(name + " (count)")
                total += x.size
                reinit += int(mask.sum())
        check(not bad, "layer %d: kept elements equal the dense elements the plan names; counts match plan.json %s" % (l, bad[:3]))
    frac = reinit / max(1, total)
    tol = 5 * (rein["ratio"] * (1 - rein["ratio"]) / max(1, total)) ** 0.5 + 1e-9
    if element:
        check(abs(frac - rein["ratio"]) <= tol, "re-initialised fraction %.4f matches the recipe's %.3f" % (frac, rein["ratio"]))
    check(reinit == rein["total_reinitialised"], "total re-initialised %d matches plan.json" % reinit)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moe", required=True)
    ap.add_argument("--dense", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--logits", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    check_transformers(args)
    check_plan(args)
    print("%d failure(s)" % len(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
