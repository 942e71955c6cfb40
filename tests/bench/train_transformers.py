#!/usr/bin/env python3
"""The transformers peer of `moekit train` in tests/bench/run_gpu_bench.sh: the same model config
(a moekit YAML uses Hugging Face's field names) as Qwen2ForCausalLM / Qwen2MoeForCausalLM, trained
the usual eager way: fp32 parameters, bf16 autocast, the aux loss on (output_router_logits),
clip_grad_norm_(1.0), torch.optim.AdamW, random tokens. Prints the median step time, tokens/s and
the peak memory PyTorch allocated (one JSON line with --json).

Runs on CUDA when there is a device, else on the CPU (how it is checked on a machine without a
GPU, with a tiny config).
"""
import argparse
import json
import statistics
import time

import torch
import yaml


def hf_model(cfg):
    import transformers
    kind = cfg.pop("model_type")
    cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM)}[kind]
    keep = {k: v for k, v in cfg.items() if k not in ("qkv_bias", "shared_expert_gate", "head_dim")}
    config = cls[0](**keep)
    if kind == "qwen2_moe":
        config.output_router_logits = True
    return cls[1](config)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="moekit model YAML")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    with open(a.model) as f:
        cfg = yaml.safe_load(f)
    vocab = int(cfg["vocab_size"])
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = hf_model(dict(cfg)).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, vocab, (a.batch, a.seq + 1), device=dev)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    times, losses = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            out = model(input_ids=inputs)
            logits = out.logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1))
            if getattr(out, "aux_loss", None) is not None:
                loss = loss + model.config.router_aux_loss_coef * out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    step = statistics.median(times)
    r = {"impl": "transformers", "device": torch.cuda.get_device_name() if cuda else "cpu",
         "transformers": __import__("transformers").__version__, "torch": torch.__version__,
         "batch": a.batch, "seq": a.seq, "ms_per_step": step * 1e3, "tokens_per_s": a.batch * a.seq / step,
         "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
         "first_loss": losses[0], "last_loss": losses[-1]}
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
