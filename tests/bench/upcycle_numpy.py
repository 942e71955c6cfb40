#!/usr/bin/env python3
"""A straightforward numpy implementation of moekit's qwen-mode upcycle, the baseline that
tests/bench/bench_upcycle.sh times against `moekit upcycle` in the same run.

Same algorithm and same output layout (Qwen2 report §2.2.2, docs/UPCYCLE.md): per layer,
replicate the FFN ceil(n h_E / h_FFN) times, permute each copy, cut n chunks of h_E, fuse the
first S into the shared expert, re-initialise each element with probability `reinit_ratio`
from N(mean, std) of the dense tensor, random router N(0, std), zero shared gate, bf16 output in
5 GB shards with an index. It reads the input with numpy memmaps and writes each tensor as it
is produced, layer by layer, as a careful numpy user would. The random numbers come from
numpy's PCG64 generator, so the values differ from moekit's (which uses Philox streams);
the work is the same.

  upcycle_numpy.py --dense DIR --out DIR --recipe RECIPE.yaml [--layers K]
(--layers K converts only the first K layers' MLPs, for a quick estimate.)
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np


def read_recipe(path):
    out = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            out[k] = v
    return out


class SafetensorsDir:
    def __init__(self, d):
        idx = os.path.join(d, "model.safetensors.index.json")
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
        self.where = {}
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            mm = np.memmap(p, dtype=np.uint8, mode="r")
            for name, meta in header.items():
                if name != "__metadata__":
                    self.where[name] = (mm, 8 + n, meta)

    def f32(self, name):
        mm, base, meta = self.where[name]
        b, e = meta["data_offsets"]
        raw = mm[base + b:base + e]
        if meta["dtype"] == "BF16":
            x = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif meta["dtype"] == "F32":
            x = raw.view(np.float32)
        else:
            x = raw.view(np.float16).astype(np.float32)
        return x.reshape(meta["shape"])


def to_bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--layers", type=int, default=0)
    args = ap.parse_args()
    r = read_recipe(args.recipe)
    cfg = json.load(open(os.path.join(args.dense, "config.json")))
    H, D, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    E, S, W, k = int(r["num_experts"]), int(r["num_shared_experts"]), int(r["expert_intermediate_size"]), int(r["num_experts_per_tok"])
    ratio, seed = float(r["reinit_ratio"]), int(r["seed"])
    std_router = float(r.get("router_init_std", "0.02"))
    n = E + S
    C = math.ceil(n * W / D)
    layers = args.layers or L
    dense = SafetensorsDir(args.dense)
    rng = np.random.default_rng(seed)

    # Output tensor list in HF order (as moekit writes it).
    qd, kvd = cfg["num_attention_heads"] * (H // cfg["num_attention_heads"]), cfg["num_key_value_heads"] * (H // cfg["num_attention_heads"])
    names = [("model.embed_tokens.weight", [V, H])]
    for l in range(L):
        p = "model.layers.%d." % l
        names += [(p + "input_layernorm.weight", [H]), (p + "self_attn.q_proj.weight", [qd, H]), (p + "self_attn.q_proj.bias", [qd]),
                  (p + "self_attn.k_proj.weight", [kvd, H]), (p + "self_attn.k_proj.bias", [kvd]),
                  (p + "self_attn.v_proj.weight", [kvd, H]), (p + "self_attn.v_proj.bias", [kvd]),
                  (p + "self_attn.o_proj.weight", [H, qd]), (p + "post_attention_layernorm.weight", [H])]
        if l >= layers:
            names += [(p + "mlp.%s.weight" % t, s) for t, s in (("gate_proj", [D, H]), ("up_proj", [D, H]), ("down_proj", [H, D]))]
            continue
        names.append((p + "mlp.gate.weight", [E, H]))
        for e in range(E):
            names += [(p + "mlp.experts.%d.%s.weight" % (e, t), s) for t, s in (("gate_proj", [W, H]), ("up_proj", [W, H]), ("down_proj", [H, W]))]
        names += [(p + "mlp.shared_expert.%s.weight" % t, s) for t, s in (("gate_proj", [S * W, H]), ("up_proj", [S * W, H]), ("down_proj", [H, S * W]))]
        names.append((p + "mlp.shared_expert_gate.weight", [1, H]))
    names += [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]

    # Greedy 5 GB shards; headers written first, tensors appended in order.
    limit, shards, cur = 5 * 10**9, [[]], 0
    for name, shape in names:
        nb = 2 * int(np.prod(shape))
        if shards[-1] and cur + nb > limit:
            shards.append([])
            cur = 0
        shards[-1].append((name, shape))
        cur += nb
    os.makedirs(args.out)
    files, shard_of = [], {}
    for i, sh in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in sh:
            nb = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nb]}
            off += nb
            shard_of[name] = i
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        fh = open(os.path.join(args.out, fname), "wb")
        fh.write(struct.pack("<Q", len(h)) + h)
        files.append((fname, fh))
    if len(shards) > 1:
        json.dump({"metadata": {"total_size": sum(2 * int(np.prod(s)) for _, s in names)},
                   "weight_map": {nm: files[shard_of[nm]][0] for nm, _ in names}},
                  open(os.path.join(args.out, "model.safetensors.index.json"), "w"), indent=2)

    def put(name, x):
        files[shard_of[name]][1].write(to_bf16(x).tobytes())

    def reinit(x, mean, std):
        mask = rng.random(x.shape, dtype=np.float32) < ratio
        vals = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std) + np.float32(mean)
        return np.where(mask, vals, x)

    for name, _ in names:
        if ".mlp." not in name or not name.startswith("model.layers.") or int(name.split(".")[2]) >= layers:
            if name in dense.where:
                put(name, dense.f32(name))
            continue
        l = int(name.split(".")[2])
        p = "model.layers.%d.mlp." % l
        if name != p + "gate.weight":
            continue  # a layer's MoE tensors are all written when its router comes up
        gate, up, down = dense.f32(p + "gate_proj.weight"), dense.f32(p + "up_proj.weight"), dense.f32(p + "down_proj.weight")
        stats = [(float(t.mean()), float(t.std())) for t in (gate, up, down)]
        order = np.concatenate([rng.permutation(D) for _ in range(C)])[:n * W].reshape(n, W)
        put(name, rng.standard_normal((E, H), dtype=np.float32) * np.float32(std_router))
        for e in range(E):
            idx = order[S + e]
            for t, x, (m, s) in (("gate_proj", gate[idx], stats[0]), ("up_proj", up[idx], stats[1]), ("down_proj", down[:, idx], stats[2])):
                put(p + "experts.%d.%s.weight" % (e, t), reinit(x, m, s))
        idx = order[:S].reshape(-1)
        for t, x, (m, s) in (("gate_proj", gate[idx], stats[0]), ("up_proj", up[idx], stats[1]), ("down_proj", down[:, idx], stats[2])):
            put(p + "shared_expert.%s.weight" % t, reinit(x, m, s))
        put(p + "shared_expert_gate.weight", np.zeros((1, H), np.float32))
    for _, fh in files:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
    moe = dict(cfg, model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"], num_experts=E, num_experts_per_tok=k,
               moe_intermediate_size=W, shared_expert_intermediate_size=S * W, norm_topk_prob=False,
               decoder_sparse_step=1, mlp_only_layers=list(range(layers, L)), router_aux_loss_coef=0.001,
               torch_dtype="bfloat16")
    json.dump(moe, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    print(json.dumps({"out": args.out, "layers": layers, "shards": len(shards)}))


if __name__ == "__main__":
    sys.exit(main())
