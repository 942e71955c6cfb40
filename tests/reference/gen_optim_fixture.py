#!/usr/bin/env python3
"""Generate the AdamW reference fixture for moekit's optimizer tests (tests/unit/test_optim.cpp).

torch.optim.AdamW (single-tensor path, foreach=False, float32, CPU) runs STEPS updates on three
small tensors with HF-style names: two in a param group with weight decay, one without. Each step
uses its own gradient and learning rate (set on the param groups before the step, as a
scheduler would). One tensor gets gradients around 1e-8, where eps is as large as sqrt(vhat), so
the position of eps in the denominator is tested too.

Written to tests/fixtures/optim/adamw.safetensors:
    init.<name>                    F32  initial weights
    grad.<k>.<name>                F32  gradient of step k (k = 0 .. STEPS-1)
    param.<k>.<name>               F32  weights after step k
    exp_avg.<k>.<name>             F32  first moment after step k
    exp_avg_sq.<k>.<name>          F32  second moment after step k
and __metadata__ (decimal strings; floats as Python repr, which round-trips exactly):
    lrs (comma-separated, one per step), beta1, beta2, eps, weight_decay, steps,
    decay (comma-separated names in the weight-decay group), no_decay (the others),
    generator, torch_version.

Usage:
    /usr/bin/python3 tests/reference/gen_optim_fixture.py --out tests/fixtures/optim
See tests/reference/README.md ("AdamW fixture").
"""

import argparse
import collections
import os

import torch
from safetensors import safe_open

from safetensors_util import save_safetensors

STEPS = 5
LRS = [1e-3, 2e-3, 3e-3, 2.5e-3, 7e-4]
BETA1, BETA2, EPS, WEIGHT_DECAY = 0.9, 0.95, 1e-8, 0.1
# name -> (shape, grad scale, in the weight-decay group)
TENSORS = collections.OrderedDict([
    ("model.layers.0.mlp.down_proj.weight", ((12, 10), 1.0, True)),
    ("model.layers.0.self_attn.q_proj.weight", ((8, 6), 1e-8, True)),
    ("model.layers.0.self_attn.q_proj.bias", ((8,), 0.3, False)),
])


def plain_adamw_f64(w, grads, decays):
    """A second AdamW in float64 written from the paper (Loshchilov & Hutter, decoupled decay), to check
    that torch was called as intended. Returns the weights after every step."""
    w = w.double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    out = []
    for k, (g, lr) in enumerate(zip(grads, LRS)):
        g = g.double()
        t = k + 1
        if decays:
            w = w * (1 - lr * WEIGHT_DECAY)
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        mhat = m / (1 - BETA1 ** t)
        vhat = v / (1 - BETA2 ** t)
        w = w - lr * mhat / (vhat.sqrt() + EPS)
        out.append(w.clone())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (tests/fixtures/optim)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(4242)

    params = collections.OrderedDict()
    grads = collections.OrderedDict()
    for name, (shape, gscale, _) in TENSORS.items():
        params[name] = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float32) * 0.5)
        grads[name] = [torch.randn(shape, generator=gen, dtype=torch.float32) * gscale for _ in range(STEPS)]
    decay = [n for n, (_, _, d) in TENSORS.items() if d]
    no_decay = [n for n, (_, _, d) in TENSORS.items() if not d]

    out = {f"init.{n}": p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(
        [{"params": [params[n] for n in decay], "weight_decay": WEIGHT_DECAY},
         {"params": [params[n] for n in no_decay], "weight_decay": 0.0}],
        lr=LRS[0], betas=(BETA1, BETA2), eps=EPS, foreach=False, amsgrad=False, maximize=False)
    for k in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LRS[k]
        for n, p in params.items():
            p.grad = grads[n][k].clone()
            out[f"grad.{k}.{n}"] = grads[n][k].clone()
        opt.step()
        for n, p in params.items():
            st = opt.state[p]
            out[f"param.{k}.{n}"] = p.detach().clone()
            out[f"exp_avg.{k}.{n}"] = st["exp_avg"].clone()
            out[f"exp_avg_sq.{k}.{n}"] = st["exp_avg_sq"].clone()

    # Self-check against the float64 transcription of the paper.
    for n in params:
        ref = plain_adamw_f64(out[f"init.{n}"], grads[n], n in decay)
        for k in range(STEPS):
            got = out[f"param.{k}.{n}"].double()
            diff = (got - ref[k]).abs().max().item()
            lim = 1e-6 * max(1.0, ref[k].abs().max().item())
            assert diff <= lim, f"self-check {n} step {k}: {diff:.3e} > {lim:.3e}"

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "adamw.safetensors")
    meta = {
        "lrs": ",".join(repr(x) for x in LRS),
        "beta1": repr(BETA1), "beta2": repr(BETA2), "eps": repr(EPS), "weight_decay": repr(WEIGHT_DECAY),
        "steps": str(STEPS), "decay": ",".join(decay), "no_decay": ",".join(no_decay),
        "generator": "tests/reference/gen_optim_fixture.py", "torch_version": torch.__version__,
    }
    save_safetensors({k: v.contiguous() for k, v in out.items()}, path, meta)

    # Read-back: every tensor present and bit-identical.
    with safe_open(path, framework="pt") as f:
        assert set(f.keys()) == set(out), sorted(set(f.keys()) ^ set(out))
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), out[k]), k
        assert f.metadata() == meta
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
