#!/usr/bin/env python3
"""Generate the numeric reference fixtures for moekit's Qwen2 / Qwen2-MoE parity tests.

Tiny models are built with transformers' own classes (Qwen2ForCausalLM, Qwen2MoeForCausalLM,
attn_implementation="eager", float32), their parameters are re-drawn from a seeded generator,
a forward + backward pass is run, and the results are written to tests/fixtures/<case>/:

    config.json         HF config.json as save_pretrained writes it
    model.safetensors   the weights as save_pretrained writes them (HF names, legacy per-expert layout)
    ref.safetensors     input_ids, logits, losses and d(total_loss)/d(param) for every weight

Every case is additionally checked against a second, independent forward written plainly in torch
below (`plain_forward`): logits, router logits, losses and (through autograd of the plain forward)
the gradients must agree with the HF model.

Usage:
    /usr/bin/python3 tests/reference/gen_fixtures.py --out tests/fixtures              # all cases
    /usr/bin/python3 tests/reference/gen_fixtures.py --out tests/fixtures --case moe_bf16
See tests/reference/README.md for the environment and the file contents.
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F

import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM
from safetensors import safe_open
from safetensors.torch import load_file

from safetensors_util import save_safetensors

GENERATOR = "tests/reference/gen_fixtures.py"
SWITCH_AUX_COEF = 0.01   # aux_coef for loss_form "switch_z"
SWITCH_Z_COEF = 0.001    # z_coef for loss_form "switch_z"
LOGIT_TOL = 1e-5         # HF vs plain forward, max abs difference on logits
# Required p_(k) - p_(k+1) margin for every token and MoE layer (fp32 noise is ~1e-7).  The MoE seeds
# below were chosen (by scanning seeds) so that this margin holds and every expert gets >= 1 token.
MIN_TOPK_GAP = 1e-3

COMMON = dict(vocab_size=96, hidden_size=32, max_position_embeddings=128, rms_norm_eps=1e-6,
              attention_dropout=0.0, hidden_act="silu", initializer_range=0.02)

MOE_BASE = dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=40, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                shared_expert_intermediate_size=24, norm_topk_prob=False, router_aux_loss_coef=0.02,
                output_router_logits=True, decoder_sparse_step=1, mlp_only_layers=[],
                rope_theta=1e6, tie_word_embeddings=False)

DENSE_MHA = dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=48, tie_word_embeddings=False, rope_theta=10000.0)

# name -> spec.  arch: qwen2 | qwen2_moe | qwen_v1.  dtype: storage dtype of model.safetensors.
CASES = {
    "dense_mha": dict(arch="qwen2", cfg=DENSE_MHA, B=2, S=16, loss_form="ce",
                      seed=1001, input_seed=2001, dtype=torch.float32),
    "dense_gqa_tied": dict(arch="qwen2",
                           cfg=dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=40, tie_word_embeddings=True, rope_theta=1e6,
                                    rms_norm_eps=1e-5),
                           B=1, S=80, loss_form="ce", seed=1002, input_seed=2002, dtype=torch.float32),
    "moe_topk_false": dict(arch="qwen2_moe", cfg=MOE_BASE, B=2, S=12, loss_form="hf",
                           seed=1047, input_seed=2003, dtype=torch.float32),
    "moe_topk_true_gqa": dict(arch="qwen2_moe",
                              cfg=dict(MOE_BASE, norm_topk_prob=True, num_key_value_heads=2,
                                       num_experts_per_tok=3, rope_theta=10000.0),
                              B=2, S=20, loss_form="hf", seed=1504, input_seed=2004, dtype=torch.float32),
    "moe_mixed_tied": dict(arch="qwen2_moe",
                           cfg=dict(MOE_BASE, num_hidden_layers=4, mlp_only_layers=[2], decoder_sparse_step=1,
                                    intermediate_size=40, tie_word_embeddings=True, num_experts=6,
                                    num_experts_per_tok=2, moe_intermediate_size=8, num_key_value_heads=2,
                                    shared_expert_intermediate_size=16, rope_theta=10000.0),
                           B=1, S=72, loss_form="hf", seed=2119, input_seed=2005, dtype=torch.float32),
    "moe_sparse_step2": dict(arch="qwen2_moe",
                             cfg=dict(MOE_BASE, num_hidden_layers=4, decoder_sparse_step=2, intermediate_size=24,
                                      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8,
                                      num_key_value_heads=2, shared_expert_intermediate_size=16),
                             B=2, S=10, loss_form="switch_z", seed=2001, input_seed=2006, dtype=torch.float32),
    "moe_bf16": dict(arch="qwen2_moe", cfg=MOE_BASE, B=2, S=12, loss_form="hf",
                     seed=1037, input_seed=2007, dtype=torch.bfloat16),
    # Same weights and input_ids as dense_mha (same seeds), exported in the Qwen v1 layout.
    "qwen_v1": dict(arch="qwen_v1", cfg=DENSE_MHA, B=2, S=16, loss_form="ce",
                    seed=1001, input_seed=2001, dtype=torch.float32),
    "dense_f16": dict(arch="qwen2", cfg=DENSE_MHA, B=2, S=16, loss_form="ce",
                      seed=1009, input_seed=2009, dtype=torch.float16),
}


# ----------------------------------------------------------------------------------------------
# model construction

def build_model(spec):
    if spec["arch"] == "qwen2_moe":
        config = Qwen2MoeConfig(**spec["cfg"])
        cls = Qwen2MoeForCausalLM
    else:
        config = Qwen2Config(**spec["cfg"])
        cls = Qwen2ForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(0)  # HF init (overwritten below) must not depend on global RNG state
    model = cls(config).float()
    model.config._attn_implementation = "eager"
    return model


def redraw_parameters(model, seed):
    """Re-draw every parameter from a seeded generator (HF's init is far too benign for a test)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is not listed separately
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):                 # RMSNorm weights
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):                     # q/k/v biases
                p.copy_(0.1 * noise)
            elif name.endswith("mlp.gate.weight"):           # router: decisive routing, no top-k ties
                p.copy_(0.5 * noise)
            elif name.endswith(".weight"):                   # linear / embedding weights
                p.copy_(0.1 * noise)
            else:
                raise RuntimeError(f"unclassified parameter {name}")


def round_parameters(model, dtype):
    """Round every weight to the storage dtype and back, so the f32 reference sees the stored values."""
    if dtype == torch.float32:
        return
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())


# ----------------------------------------------------------------------------------------------
# losses

def shifted_ce(logits, ids):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1, :].reshape(-1, V).float(), ids[:, 1:].reshape(-1))


def hf_load_balancing(router_logits, E, k):
    """Same formula as transformers' load_balancing_loss_func without attention mask (pooled, k-scaled)."""
    z = torch.cat(list(router_logits), dim=0)
    p = torch.softmax(z.float(), dim=-1)
    top = torch.topk(p, k, dim=-1).indices
    tokens_per_expert = F.one_hot(top, E).float().mean(dim=0)      # [k, E]
    return (tokens_per_expert * p.mean(dim=0).unsqueeze(0)).sum() * E


def switch_loss(router_logits, E, k):
    per_layer = []
    for z in router_logits:
        T = z.shape[0]
        p = torch.softmax(z.float(), dim=-1)
        top = torch.topk(p, k, dim=-1).indices
        counts = torch.zeros(E, dtype=torch.float32).index_add_(0, top.reshape(-1), torch.ones(T * k))
        f = counts / (T * k)
        P = p.mean(dim=0)
        per_layer.append(E * (f * P).sum())
    return torch.stack(per_layer).mean()


def z_loss(router_logits):
    return torch.stack([torch.logsumexp(z.float(), dim=-1).pow(2).mean() for z in router_logits]).mean()


def min_topk_gap(router_logits, k):
    gap = math.inf
    for z in router_logits:
        p = torch.sort(torch.softmax(z.float(), dim=-1), dim=-1, descending=True).values
        gap = min(gap, float((p[:, k - 1] - p[:, k]).min()))
    return gap


# ----------------------------------------------------------------------------------------------
# independent plain-torch implementation (no transformers code), used as a self-check

def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _swiglu(x, gate_w, up_w, down_w):
    return F.linear(F.silu(F.linear(x, gate_w)) * F.linear(x, up_w), down_w)


def _attention(x, q_w, q_b, k_w, k_b, v_w, v_b, o_w, nh, nkv, theta):
    B, S, D = x.shape
    hd = D // nh
    q = F.linear(x, q_w, q_b).view(B, S, nh, hd).transpose(1, 2)
    k = F.linear(x, k_w, k_b).view(B, S, nkv, hd).transpose(1, 2)
    v = F.linear(x, v_w, v_b).view(B, S, nkv, hd).transpose(1, 2)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(S, dtype=torch.float32)[:, None] * inv_freq[None, :]
    ang = torch.cat((ang, ang), dim=-1)
    cos, sin = ang.cos(), ang.sin()
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    rep = nh // nkv
    k = k.repeat_interleave(rep, dim=1)   # query head h uses kv head h // rep
    v = v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v
    return F.linear(o.transpose(1, 2).reshape(B, S, D), o_w)


def _moe(x, sd, pre, E, k, norm_topk):
    B, S, D = x.shape
    h = x.reshape(-1, D)
    z = F.linear(h, sd[pre + "gate.weight"])                      # router logits [T, E]
    p = torch.softmax(z.float(), dim=-1)
    w, idx = torch.topk(p, k, dim=-1)
    if norm_topk:
        w = w / w.sum(-1, keepdim=True)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(k):
            e = int(idx[t, j])
            ep = f"{pre}experts.{e}."
            y = _swiglu(h[t], sd[ep + "gate_proj.weight"], sd[ep + "up_proj.weight"], sd[ep + "down_proj.weight"])
            out = out.index_add(0, torch.tensor([t]), (w[t, j] * y)[None])
    sp = pre + "shared_expert."
    shared = _swiglu(h, sd[sp + "gate_proj.weight"], sd[sp + "up_proj.weight"], sd[sp + "down_proj.weight"])
    shared = torch.sigmoid(F.linear(h, sd[pre + "shared_expert_gate.weight"])) * shared
    return (out + shared).reshape(B, S, D), z


def plain_forward(sd, c, ids):
    """Qwen2 / Qwen2-MoE forward from a qwen2-named state dict `sd` and config dict `c`."""
    is_moe = "num_experts" in c
    x = sd["model.embed_tokens.weight"][ids]
    router_logits = []
    for l in range(c["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        a = pre + "self_attn."
        h = _rms(x, sd[pre + "input_layernorm.weight"], c["rms_norm_eps"])
        x = x + _attention(h, sd[a + "q_proj.weight"], sd[a + "q_proj.bias"], sd[a + "k_proj.weight"],
                           sd[a + "k_proj.bias"], sd[a + "v_proj.weight"], sd[a + "v_proj.bias"],
                           sd[a + "o_proj.weight"], c["num_attention_heads"], c["num_key_value_heads"],
                           c["rope_theta"])
        h = _rms(x, sd[pre + "post_attention_layernorm.weight"], c["rms_norm_eps"])
        sparse = is_moe and l not in c["mlp_only_layers"] and (l + 1) % c["decoder_sparse_step"] == 0
        m = pre + "mlp."
        if sparse:
            y, z = _moe(h, sd, m, c["num_experts"], c["num_experts_per_tok"], c["norm_topk_prob"])
            router_logits.append(z)
        else:
            y = _swiglu(h, sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"], sd[m + "down_proj.weight"])
        x = x + y
    x = _rms(x, sd["model.norm.weight"], c["rms_norm_eps"])
    head = sd["model.embed_tokens.weight"] if c["tie_word_embeddings"] else sd["lm_head.weight"]
    return F.linear(x, head), router_logits


def plain_forward_qwen_v1(v1, c, ids):
    """Forward written against the Qwen v1 (QWenLMHeadModel) layout and semantics, from v1 names."""
    D, nh = c["hidden_size"], c["num_attention_heads"]
    hd = c["kv_channels"]
    x = v1["transformer.wte.weight"][ids]
    B, S, _ = x.shape
    for l in range(c["num_hidden_layers"]):
        p = f"transformer.h.{l}."
        h = _rms(x, v1[p + "ln_1.weight"], c["layer_norm_epsilon"])
        qkv = F.linear(h, v1[p + "attn.c_attn.weight"], v1[p + "attn.c_attn.bias"])
        q, k, v = qkv.split(nh * hd, dim=2)                       # QWenAttention: split(split_size)
        q, k, v = (t.view(B, S, nh, hd).transpose(1, 2) for t in (q, k, v))
        rot = int(hd * c["rotary_pct"])
        inv_freq = 1.0 / (c["rotary_emb_base"] ** (torch.arange(0, rot, 2).float() / rot))
        ang = torch.outer(torch.arange(S, dtype=torch.float32), inv_freq)
        ang = torch.cat((ang, ang), dim=-1)
        q = q * ang.cos() + _rotate_half(q) * ang.sin()
        k = k * ang.cos() + _rotate_half(k) * ang.sin()
        sc = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        sc = sc.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
        o = (torch.softmax(sc, -1) @ v).transpose(1, 2).reshape(B, S, D)
        x = x + F.linear(o, v1[p + "attn.c_proj.weight"])
        h = _rms(x, v1[p + "ln_2.weight"], c["layer_norm_epsilon"])
        a1 = F.linear(h, v1[p + "mlp.w1.weight"])                 # QWenMLP: c_proj(w1(x) * silu(w2(x)))
        a2 = F.linear(h, v1[p + "mlp.w2.weight"])
        x = x + F.linear(a1 * F.silu(a2), v1[p + "mlp.c_proj.weight"])
    x = _rms(x, v1["transformer.ln_f.weight"], c["layer_norm_epsilon"])
    return F.linear(x, v1["lm_head.weight"])


# ----------------------------------------------------------------------------------------------
# Qwen v1 export

def to_qwen_v1(sd, c):
    v1 = {"transformer.wte.weight": sd["model.embed_tokens.weight"]}
    for l in range(c["num_hidden_layers"]):
        q, p = f"model.layers.{l}.", f"transformer.h.{l}."
        a = q + "self_attn."
        v1[p + "ln_1.weight"] = sd[q + "input_layernorm.weight"]
        v1[p + "attn.c_attn.weight"] = torch.cat([sd[a + n + "_proj.weight"] for n in "qkv"], dim=0)
        v1[p + "attn.c_attn.bias"] = torch.cat([sd[a + n + "_proj.bias"] for n in "qkv"], dim=0)
        v1[p + "attn.c_proj.weight"] = sd[a + "o_proj.weight"]
        v1[p + "ln_2.weight"] = sd[q + "post_attention_layernorm.weight"]
        v1[p + "mlp.w1.weight"] = sd[q + "mlp.up_proj.weight"]      # w1 = up
        v1[p + "mlp.w2.weight"] = sd[q + "mlp.gate_proj.weight"]    # w2 = gate (goes through silu)
        v1[p + "mlp.c_proj.weight"] = sd[q + "mlp.down_proj.weight"]
    v1["transformer.ln_f.weight"] = sd["model.norm.weight"]
    v1["lm_head.weight"] = sd["lm_head.weight"]
    return {k: t.detach().contiguous().clone() for k, t in v1.items()}


def qwen_v1_config(c, seq_length):
    assert c["num_key_value_heads"] == c["num_attention_heads"], "Qwen v1 is pure MHA"
    assert not c["tie_word_embeddings"]
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "model_type": "qwen",
        "attn_dropout_prob": 0.0,
        "bf16": False,
        "fp16": False,
        "fp32": True,
        "emb_dropout_prob": 0.0,
        "hidden_size": c["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": 2 * c["intermediate_size"],   # v1 convention: the real MLP width is this // 2
        "kv_channels": c["hidden_size"] // c["num_attention_heads"],
        "layer_norm_epsilon": c["rms_norm_eps"],
        "max_position_embeddings": seq_length,
        "no_bias": True,
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "rotary_emb_base": c["rope_theta"],
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": seq_length,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_dynamic_ntk": False,
        "use_flash_attn": False,
        "use_logn_attn": False,
        "vocab_size": c["vocab_size"],
    }


# ----------------------------------------------------------------------------------------------

def save_hf(model, dtype, outdir):
    """Write config.json and model.safetensors exactly as save_pretrained does (in `dtype`)."""
    m = copy.deepcopy(model).to(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        m.save_pretrained(tmp, safe_serialization=True)
        produced = sorted(os.listdir(tmp))
        assert "model.safetensors" in produced and "config.json" in produced, produced
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(os.path.join(tmp, f), os.path.join(outdir, f))


def assert_close(name, a, b, atol, rtol=0.0):
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    lim = atol + rtol * b.abs().max().item()
    if not diff <= lim:
        raise AssertionError(f"self-check {name}: max|diff|={diff:.3e} > {lim:.3e}")
    return diff


def run_case(name, spec, out_root):
    outdir = os.path.join(out_root, name)
    os.makedirs(outdir, exist_ok=True)
    for f in ("config.json", "model.safetensors", "ref.safetensors"):
        if os.path.exists(os.path.join(outdir, f)):
            os.remove(os.path.join(outdir, f))

    model = build_model(spec)
    redraw_parameters(model, spec["seed"])
    round_parameters(model, spec["dtype"])
    model.eval()  # no dropout anywhere (all dropout probs are 0 anyway); autograd stays on
    cfg = model.config
    c = cfg.to_dict()
    c.setdefault("mlp_only_layers", [])

    g = torch.Generator().manual_seed(spec["input_seed"])
    ids = torch.randint(0, cfg.vocab_size, (spec["B"], spec["S"]), generator=g, dtype=torch.int64)

    is_moe = spec["arch"] == "qwen2_moe"
    form = spec["loss_form"]
    model.zero_grad(set_to_none=True)
    if is_moe:
        out = model(input_ids=ids, labels=ids, output_router_logits=True, use_cache=False, return_dict=True)
        rl = out.router_logits
        E, k = cfg.num_experts, cfg.num_experts_per_tok
        loss = shifted_ce(out.logits, ids)
        aux = out.aux_loss
        sw = switch_loss(rl, E, k)
        zl = z_loss(rl)
        hf_total = loss + cfg.router_aux_loss_coef * aux
        assert abs(hf_total.item() - out.loss.item()) <= 1e-6 * max(1.0, abs(out.loss.item())), \
            (hf_total.item(), out.loss.item())
        assert_close("aux_loss formula", hf_load_balancing(rl, E, k), aux, 1e-6)
        n_sparse = sum(1 for l in range(cfg.num_hidden_layers)
                       if l not in cfg.mlp_only_layers and (l + 1) % cfg.decoder_sparse_step == 0)
        assert len(rl) == n_sparse, (len(rl), n_sparse)
        gap = min_topk_gap(rl, k)
        assert gap > MIN_TOPK_GAP, f"{name}: top-k margin {gap} too small, pick another seed"
        for li, z in enumerate(rl):  # every expert must get tokens, or its gradient would be a trivial 0
            used = torch.topk(z, k, dim=-1).indices.unique().numel()
            assert used == E, f"{name}: MoE layer #{li} routes to only {used}/{E} experts, pick another seed"
        if form == "hf":
            total = out.loss
            aux_coef, z_coef = cfg.router_aux_loss_coef, 0.0
        elif form == "switch_z":
            total = loss + SWITCH_AUX_COEF * sw + SWITCH_Z_COEF * zl
            aux_coef, z_coef = SWITCH_AUX_COEF, SWITCH_Z_COEF
        else:
            raise ValueError(form)
    else:
        out = model(input_ids=ids, labels=ids, use_cache=False, return_dict=True)
        loss = shifted_ce(out.logits, ids)
        assert abs(loss.item() - out.loss.item()) <= 1e-6 * max(1.0, abs(out.loss.item()))
        assert form == "ce"
        total = out.loss
        aux_coef, z_coef = 0.0, 0.0
        gap = None
    total.backward()

    params = dict(model.named_parameters())
    grads = {n: p.grad.detach().clone() for n, p in params.items()}

    # ---------------- self-check against the plain implementation (forward + autograd backward)
    sd = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    plogits, prl = plain_forward(sd, c, ids)
    d_logits = assert_close("logits", plogits, out.logits, LOGIT_TOL)
    ploss = shifted_ce(plogits, ids)
    assert_close("loss", ploss, loss, 1e-5)
    if is_moe:
        assert len(prl) == len(rl)
        for a, b in zip(prl, rl):
            assert_close("router_logits", a, b, LOGIT_TOL)
        paux = hf_load_balancing(prl, E, k)
        assert_close("aux_loss", paux, aux, 1e-5)
        if form == "hf":
            ptotal = ploss + cfg.router_aux_loss_coef * paux
        else:
            ptotal = ploss + SWITCH_AUX_COEF * switch_loss(prl, E, k) + SWITCH_Z_COEF * z_loss(prl)
    else:
        ptotal = ploss
    assert_close("total_loss", ptotal, total, 1e-5)
    ptotal.backward()
    for n in grads:
        pg = sd[n].grad if sd[n].grad is not None else torch.zeros_like(sd[n])  # unrouted expert
        assert_close("grad." + n, pg, grads[n], 1e-6, 1e-4)

    # ---------------- write model + config
    tensors = {"input_ids": ids.contiguous(),
               "logits": out.logits.detach().float().contiguous(),
               "loss": loss.detach().float().reshape(()).contiguous()}
    if is_moe:
        tensors["aux_loss"] = aux.detach().float().reshape(()).contiguous()
        tensors["switch_loss"] = sw.detach().float().reshape(()).contiguous()
        tensors["z_loss"] = zl.detach().float().reshape(()).contiguous()
    tensors["total_loss"] = total.detach().float().reshape(()).contiguous()

    if spec["arch"] == "qwen_v1":
        sd_now = {n: p.detach() for n, p in params.items()}
        v1 = to_qwen_v1(sd_now, c)
        v1cfg = qwen_v1_config(c, seq_length=2048)
        v1logits = plain_forward_qwen_v1(v1, v1cfg, ids)
        assert_close("qwen_v1 logits", v1logits, out.logits, LOGIT_TOL)
        with open(os.path.join(outdir, "config.json"), "w") as f:
            json.dump(v1cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        save_safetensors(v1, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})
        # Gradients are not stored for qwen_v1: the weights and input_ids are those of dense_mha, so
        # its ref.safetensors holds them (bit-identical, under the Qwen2 names).
        weight_names = []
    else:
        save_hf(model, spec["dtype"], outdir)
        with safe_open(os.path.join(outdir, "model.safetensors"), "pt") as f:
            weight_names = list(f.keys())
    for n in weight_names:
        tensors["grad." + n] = grads[n].float().contiguous()

    meta = {"format": "pt", "loss_form": form, "aux_coef": repr(float(aux_coef)), "z_coef": repr(float(z_coef)),
            "generator": GENERATOR, "transformers_version": transformers.__version__,
            "torch_version": torch.__version__}
    save_safetensors(tensors, os.path.join(outdir, "ref.safetensors"), metadata=meta)

    verify_case(name, spec, outdir, model, ids, tensors)

    size = sum(os.path.getsize(os.path.join(outdir, f)) for f in os.listdir(outdir))
    n_params = sum(p.numel() for p in params.values())
    max_grad = max(t.abs().max().item() for t in grads.values())
    return dict(case=name, params=n_params, loss=loss.item(), aux=(aux.item() if is_moe else None),
                total=total.item(), max_grad=max_grad, d_logits=d_logits, gap=gap, size=size)


def verify_case(name, spec, outdir, model, ids, written):
    """Read the fixture back with the safetensors package and check that everything is present."""
    cfg_json = json.load(open(os.path.join(outdir, "config.json")))
    ref = load_file(os.path.join(outdir, "ref.safetensors"))
    with safe_open(os.path.join(outdir, "ref.safetensors"), "pt") as f:
        meta = f.metadata()
    with safe_open(os.path.join(outdir, "model.safetensors"), "pt") as f:
        wmeta = f.metadata()
    weights = load_file(os.path.join(outdir, "model.safetensors"))
    assert wmeta.get("format") == "pt", wmeta
    for key in ("format", "loss_form", "aux_coef", "z_coef", "generator", "transformers_version", "torch_version"):
        assert key in meta, (name, key)
    B, S = spec["B"], spec["S"]
    V = cfg_json["vocab_size"]
    assert ref["input_ids"].dtype == torch.int64 and tuple(ref["input_ids"].shape) == (B, S)
    assert torch.equal(ref["input_ids"], ids)
    assert ref["logits"].dtype == torch.float32 and tuple(ref["logits"].shape) == (B, S, V)
    scalars = ["loss", "total_loss"]
    is_moe = spec["arch"] == "qwen2_moe"
    if is_moe:
        scalars += ["aux_loss", "switch_loss", "z_loss"]
    for s in scalars:
        assert ref[s].dtype == torch.float32 and ref[s].dim() == 0, (name, s)
    expected = set(["input_ids", "logits"] + scalars)
    if spec["arch"] == "qwen_v1":
        assert cfg_json["model_type"] == "qwen"
        params = dict(model.named_parameters())
        twin = os.path.join(os.path.dirname(outdir), "dense_mha", "ref.safetensors")
        if os.path.exists(twin):   # same weights + inputs as dense_mha: identical reference
            tref = load_file(twin)
            for key in ("input_ids", "logits", "loss", "total_loss"):
                assert torch.equal(tref[key], ref[key]), key
            assert all(torch.equal(tref["grad." + n], p.grad) for n, p in params.items())
        v1 = to_qwen_v1({n: p.detach() for n, p in params.items()}, cfg_json)
        assert set(weights) == set(v1), sorted(set(weights) ^ set(v1))
        for n, t in v1.items():
            assert torch.equal(weights[n], t), n
    else:
        want_dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[spec["dtype"]]
        assert cfg_json["torch_dtype"] == want_dtype, cfg_json.get("torch_dtype")
        assert cfg_json["model_type"] == spec["arch"]
        expected |= {"grad." + n for n in weights}
        sd = dict(model.named_parameters())
        assert set(weights) == set(sd) - ({"lm_head.weight"} if cfg_json.get("tie_word_embeddings") else set()), \
            sorted(set(weights) ^ set(sd))
        if cfg_json.get("tie_word_embeddings"):
            assert "lm_head.weight" not in weights
        for n, t in weights.items():
            assert t.dtype == spec["dtype"], (n, t.dtype)
            assert torch.equal(t.float(), sd[n].detach()), n   # stored weights == what the reference used
            assert ref["grad." + n].shape == t.shape and ref["grad." + n].dtype == torch.float32
        if is_moe:
            assert any(".mlp.experts.0.gate_proj.weight" in n for n in weights)
    assert set(ref) == expected, sorted(set(ref) ^ expected)
    for n, t in written.items():
        assert torch.equal(ref[n], t), n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="regenerate only this case (repeatable)")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="nn.functional.sigmoid is deprecated")  # inside HF's Qwen2-MoE

    names = args.case or list(CASES)
    rows = [run_case(n, CASES[n], args.out) for n in names]

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    hdr = f"{'case':<20}{'params':>8}{'loss':>11}{'aux':>11}{'total':>11}{'max|grad|':>11}" \
          f"{'|dlogit|':>10}{'topk gap':>10}{'bytes':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        aux = f"{r['aux']:.6f}" if r["aux"] is not None else "-"
        gap = f"{r['gap']:.4f}" if r["gap"] is not None else "-"
        print(f"{r['case']:<20}{r['params']:>8}{r['loss']:>11.6f}{aux:>11}{r['total']:>11.6f}{r['max_grad']:>11.6f}"
              f"{r['d_logits']:>10.1e}{gap:>10}{r['size']:>9}")
    print(f"total bytes: {sum(r['size'] for r in rows)}")


if __name__ == "__main__":
    main()
