#!/usr/bin/python3
"""PyTorch-eager counterpart of tests/bench/bench_moe.cpp: the same Qwen2-MoE written plainly
(the way transformers' modeling_qwen2_moe computes it, eager attention, per-expert loop), the
same sizes from the same YAML, f32, all cores. Times forward + backward per step and prints the
same fields (one JSON line with --json). Run with /usr/bin/python3 (Debian's python3-torch).

FLOPs per token (fwd + bwd), as in bench_moe.cpp: 6 * N_act + 12 * L * S * heads * head_dim,
N_act = GEMM weights one token passes through (attention projections, router, top_k routed
experts, shared expert and its gate, dense MLPs, lm_head; no embeddings, biases or norms).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def load_yaml(path):
    try:
        import yaml
        with open(path) as f:
            return yaml.safe_load(f)
    except ImportError:
        pass
    # Fallback: flat "key: value" lines (all bench model configs are flat).
    out = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or ":" not in line:
                continue
            k, v = (s.strip() for s in line.split(":", 1))
            if v in ("true", "false"):
                out[k] = v == "true"
            elif v.startswith("["):
                out[k] = [int(x) for x in v.strip("[]").split(",") if x.strip()]
            else:
                for cast in (int, float):
                    try:
                        out[k] = cast(v)
                        break
                    except ValueError:
                        pass
                else:
                    out[k] = v
    return out


class Cfg:
    def __init__(self, d):
        self.vocab = int(d["vocab_size"])
        self.hidden = int(d["hidden_size"])
        self.inter = int(d.get("intermediate_size", 0))
        self.layers = int(d["num_hidden_layers"])
        self.heads = int(d["num_attention_heads"])
        self.kv_heads = int(d.get("num_key_value_heads", self.heads))
        self.head_dim = int(d.get("head_dim", 0) or self.hidden // self.heads)
        self.rope_theta = float(d.get("rope_theta", 10000.0))
        self.eps = float(d.get("rms_norm_eps", 1e-6))
        self.tie = bool(d.get("tie_word_embeddings", False))
        self.qkv_bias = bool(d.get("qkv_bias", True))
        self.experts = int(d.get("num_experts", 0))
        self.topk = int(d.get("num_experts_per_tok", 0))
        self.moe_inter = int(d.get("moe_intermediate_size", 0))
        self.shared_inter = int(d.get("shared_expert_intermediate_size", 0))
        self.norm_topk = bool(d.get("norm_topk_prob", False))
        self.sparse_step = int(d.get("decoder_sparse_step", 1))
        self.mlp_only = list(d.get("mlp_only_layers", []) or [])
        self.is_moe = d.get("model_type") == "qwen2_moe" and self.experts > 0

    def sparse(self, l):
        return self.is_moe and l not in self.mlp_only and (l + 1) % self.sparse_step == 0


class RMSNorm(nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kvh, self.d = c.heads, c.kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)

    def forward(self, x, cos, sin, mask):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, S, self.kvh, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.kvh, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kvh != self.h:
            rep = self.h // self.kvh
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.d) + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32)
        o = torch.matmul(w, v).transpose(1, 2).reshape(B, S, self.h * self.d)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, h, i):
        super().__init__()
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoeBlock(nn.Module):
    """transformers' Qwen2MoeSparseMoeBlock: softmax -> top-k, a loop over experts."""

    def __init__(self, c):
        super().__init__()
        self.E, self.k, self.norm_topk = c.experts, c.topk, c.norm_topk
        self.gate = nn.Linear(c.hidden, c.experts, bias=False)
        self.experts = nn.ModuleList([MLP(c.hidden, c.moe_inter) for _ in range(c.experts)])
        self.shared_expert = MLP(c.hidden, c.shared_inter) if c.shared_inter > 0 else None
        self.shared_expert_gate = nn.Linear(c.hidden, 1, bias=False) if c.shared_inter > 0 else None

    def forward(self, x):
        B, S, H = x.shape
        x = x.view(-1, H)
        logits = self.gate(x)
        rw = F.softmax(logits, dim=1, dtype=torch.float)
        rw, sel = torch.topk(rw, self.k, dim=-1)
        if self.norm_topk:
            rw = rw / rw.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        mask = F.one_hot(sel, num_classes=self.E).permute(2, 1, 0)
        for e in range(self.E):
            idx, top_x = torch.where(mask[e])
            if top_x.numel() == 0:
                continue
            y = self.experts[e](x[top_x]) * rw[top_x, idx, None]
            out.index_add_(0, top_x, y)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.view(B, S, H), logits


class Block(nn.Module):
    def __init__(self, c, l):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden, c.eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.eps)
        self.sparse = c.sparse(l)
        self.mlp = SparseMoeBlock(c) if self.sparse else MLP(c.hidden, c.inter)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        if self.sparse:
            m, logits = self.mlp(h)
            return x + m, logits
        return x + self.mlp(h), None


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList([Block(c, l) for l in range(c.layers)])
        self.norm = RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        if c.tie:
            self.lm_head.weight = self.embed_tokens.weight

    def init(self, seed, std):
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" in name:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=g)

    def forward(self, ids, targets, aux_coef):
        c = self.c
        B, S = ids.shape
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        freqs = torch.outer(torch.arange(S, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((S, S), float("-inf")).triu(1)[None, None]
        x = self.embed_tokens(ids)
        router_logits = []
        for layer in self.layers:
            x, logits = layer(x, cos, sin, mask)
            if logits is not None:
                router_logits.append(logits)
        logits = self.lm_head(self.norm(x))
        ce = F.cross_entropy(logits.view(-1, c.vocab), targets.view(-1), ignore_index=-100)
        loss = ce
        if router_logits:
            loss = loss + aux_coef * load_balancing_loss(router_logits, c.experts, c.topk)
        return loss, ce


def load_balancing_loss(router_logits, E, k):
    """transformers' load_balancing_loss_func without an attention mask."""
    gate = torch.cat(router_logits, dim=0)
    rw = F.softmax(gate, dim=-1)
    _, sel = torch.topk(rw, k, dim=-1)
    expert_mask = F.one_hot(sel, E)
    tokens_per_expert = torch.mean(expert_mask.float(), dim=0)
    prob_per_expert = torch.mean(rw, dim=0)
    return torch.sum(tokens_per_expert * prob_per_expert.unsqueeze(0)) * E


def activated_params(c):
    H, qd, kvd = c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim
    n = 0
    for l in range(c.layers):
        n += H * qd + 2 * H * kvd + qd * H
        if c.sparse(l):
            n += c.experts * H + c.topk * 3 * c.moe_inter * H
            if c.shared_inter > 0:
                n += 3 * c.shared_inter * H + H
        else:
            n += 3 * c.inter * H
    return n + c.vocab * H


def flops_per_token(c, seq):
    return 6.0 * activated_params(c) + 12.0 * c.layers * seq * c.heads * c.head_dim


def gemm_gflops(n=1024, reps=5):
    g = torch.Generator().manual_seed(7)
    a = torch.rand(n, n, generator=g) * 2 - 1
    b = torch.rand(n, n, generator=g) * 2 - 1
    torch.mm(a, b.t())
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b.t())
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "configs/models/bench-moe.yaml"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--train", action="store_true",
                    help="time a whole training step: forward, backward, clip_grad_norm_(1.0), AdamW step")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    c = Cfg(load_yaml(a.model))
    model = Model(c)
    model.init(1, 0.02)
    g = torch.Generator().manual_seed(1234)
    seqs = torch.randint(0, c.vocab, (a.batch, a.seq + 1), generator=g)
    ids, targets = seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1) if a.train else None
    times, first = [], None
    for i in range(a.warmup + a.steps):
        for p in model.parameters():
            p.grad = None  # outside the timed region, like moekit's zero_grad
        t0 = time.perf_counter()
        loss, ce = model(ids, targets, 0.001)
        loss.backward()
        if opt is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        dt = time.perf_counter() - t0
        if first is None:
            first = (loss.item(), ce.item())
        if i >= a.warmup:
            times.append(dt)

    T = a.batch * a.seq
    t_med, t_min = statistics.median(times), min(times)
    fpt = flops_per_token(c, a.seq)
    tok_s = T / t_med
    gflops = fpt * tok_s / 1e9
    peak = gemm_gflops()
    total = sum(p.numel() for p in model.parameters())
    # The BLAS torch loaded: Debian's torch goes through the libblas.so.3 alternative, so the peer's
    # speed depends on which OpenBLAS build (OpenMP, pthreads) or the reference BLAS that is.
    blas = sorted({os.path.realpath(l.split()[-1]) for l in open("/proc/self/maps") if "blas" in l.split()[-1]})
    if a.json:
        print(json.dumps({
            "impl": "pytorch", "torch": torch.__version__, "train_step": a.train, "model": a.model, "batch": a.batch, "seq": a.seq,
            "steps": a.steps, "warmup": a.warmup, "threads": torch.get_num_threads(), "blas": blas, "tokens_per_step": T,
            "activated_params": activated_params(c), "total_params": total, "flops_per_token": fpt,
            "ms_per_step": round(t_med * 1e3, 3), "ms_per_step_min": round(t_min * 1e3, 3),
            "tokens_per_s": round(tok_s, 2), "gflops": round(gflops, 3), "gemm_gflops": round(peak, 3),
            "frac_of_gemm_peak": round(gflops / peak, 5), "first_loss": round(first[0], 6),
            "first_ce": round(first[1], 6), "step_ms": [round(t * 1e3, 1) for t in times]}))
    else:
        print(f"PyTorch {torch.__version__} eager CPU bench: {a.model}, batch {a.batch} x seq {a.seq}, "
              f"{a.steps} timed steps (+{a.warmup} warm-up), {torch.get_num_threads()} threads")
        print(f"  BLAS: {', '.join(blas) or 'none mapped'}")
        print(f"  params: {total} total, {activated_params(c)} activated per token")
        print(f"  first step loss {first[0]:.4f} (ce {first[1]:.4f})")
        print(f"  step: {t_med * 1e3:.1f} ms median, {t_min * 1e3:.1f} ms min "
              f"(all: {', '.join(f'{t * 1e3:.1f}' for t in times)})")
        print(f"  tokens/s: {tok_s:.1f} (median step)")
        print(f"  model FLOPs/token (fwd+bwd): {fpt:.4g} -> {gflops:.2f} GFLOP/s")
        print(f"  f32 GEMM 1024^3 (torch.mm, best of 5): {peak:.2f} GFLOP/s -> "
              f"{100 * gflops / peak:.1f}% of that")
    return 0


if __name__ == "__main__":
    sys.exit(main())
