"""Benchmark varlen attention backends: forward and forward+backward time and TFLOP/s.

    python bench/kernels.py                      # CUDA: 64k tokens, head dim 64, 12 heads, fp16 + bf16
    python bench/kernels.py --cpu-smoke          # no GPU: a tiny run through Triton's interpreter (checks wiring)

Backends: triton (kernels/attention.py), PyTorch SDPA on a padded batch with a key padding mask (what a
padded model does), PyTorch's own varlen attention (torch.nn.attention.varlen, when present), and
flash-attn / xformers when installed. Batches: (a) 8 x 8192, (b) a seeded log-uniform 16..8192 length mix,
both 65,536 tokens. TFLOP/s count only the useful (unpadded) work: forward 4 * sum(L^2) * d * heads,
backward 2.5x that (FlashAttention's convention), so a padded backend's figure shows what padding costs.
Prints a table and writes JSON (--out, default runs/bench/kernels.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench/kernels.json", help="JSON results file")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes in Triton's interpreter, no GPU")
    parser.add_argument("--total-tokens", type=int, default=65536)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def length_mixes(total: int, seed: int, smoke: bool) -> dict[str, list[int]]:
    import numpy as np

    if smoke:
        return {"smoke-mix": [1, 37, 64, 5]}
    rng = np.random.default_rng(seed)
    mix: list[int] = []
    while sum(mix) < total:  # log-uniform 16..8192, last one trimmed to hit the token budget exactly
        mix.append(int(round(math.exp(rng.uniform(math.log(16), math.log(8192))))))
    mix[-1] -= sum(mix) - total
    if mix[-1] == 0:
        mix.pop()
    return {"8x8192": [total // 8] * 8, "log-uniform-16..8192": mix}


def attention_flops(lengths: list[int], heads: int, head_dim: int) -> float:
    return 4.0 * sum(n * n for n in lengths) * head_dim * heads


# ---- backends: each returns fn(q, k, v) -> out over packed [T, heads, d] ---------------------------------
def make_backends(cu_seqlens, lengths: list[int], device: str) -> dict:
    import torch
    import torch.nn.functional as F

    from encoder.attention import get_backend, is_available
    from kernels.attention import triton_varlen_attention

    max_seqlen = max(lengths)
    backends = {"triton": lambda q, k, v: triton_varlen_attention(q, k, v, cu_seqlens, max_seqlen)}

    # padded SDPA: scatter to [B, heads, L, d], boolean key mask, gather back (the pad/unpad is counted)
    batch, total = len(lengths), sum(lengths)
    positions = torch.arange(max_seqlen, device=device)
    valid = positions[None, :] < torch.tensor(lengths, device=device)[:, None]  # [B, L]
    flat_index = valid.flatten().nonzero().squeeze(1)  # [T]
    key_mask = valid[:, None, None, :]  # [B, 1, 1, L]

    def sdpa_padded(q, k, v):
        def pad(x):
            padded = x.new_zeros(batch * max_seqlen, *x.shape[1:])
            padded[flat_index] = x
            return padded.view(batch, max_seqlen, *x.shape[1:]).transpose(1, 2)

        out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=key_mask)
        return out.transpose(1, 2).reshape(batch * max_seqlen, *q.shape[1:])[flat_index]

    backends["sdpa-padded"] = sdpa_padded
    assert total == flat_index.numel()

    if device == "cuda":
        try:
            from torch.nn.attention.varlen import varlen_attn

            backends["torch-varlen"] = lambda q, k, v: varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen,
                                                                   max_seqlen)
        except ImportError:
            pass
        for name in ("flash", "xformers"):
            if is_available(name, device):
                fn = get_backend(name, device)
                backends[name] = lambda q, k, v, fn=fn: fn(q, k, v, cu_seqlens, max_seqlen)
    else:
        reference = get_backend("reference", device)
        backends["reference"] = lambda q, k, v: reference(q, k, v, cu_seqlens, max_seqlen)
    return backends


def time_ms(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # the interpreter has no compile step, but the first call imports and allocates
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def measure(fn, qkv, dout, device: str) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of fn on views of the packed qkv, as the model calls it."""
    import torch

    with torch.no_grad():
        fwd = time_ms(lambda: fn(qkv[:, 0], qkv[:, 1], qkv[:, 2]), device)

    def fwd_bwd():
        qkv.grad = None
        fn(qkv[:, 0], qkv[:, 1], qkv[:, 2]).backward(dout)

    return fwd, time_ms(fwd_bwd, device)


def run(args: argparse.Namespace) -> dict:
    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    heads, head_dim = (2, 32) if args.cpu_smoke else (args.heads, args.head_dim)
    dtypes = ["float32"] if args.cpu_smoke else args.dtypes.split(",")
    results = []
    for mix_name, lengths in length_mixes(args.total_tokens, args.seed, args.cpu_smoke).items():
        total = sum(lengths)
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        flops = attention_flops(lengths, heads, head_dim)
        backends = make_backends(cu_seqlens, lengths, device)
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            generator = torch.Generator().manual_seed(args.seed)
            qkv = torch.randn(total, 3, heads, head_dim, generator=generator).to(device, dtype).requires_grad_()
            dout = torch.randn(total, heads, head_dim, generator=generator).to(device, dtype)
            for name, fn in backends.items():
                row = {"mix": mix_name, "sequences": len(lengths), "tokens": total, "dtype": dtype_name,
                       "backend": name}
                try:
                    fwd, both = measure(fn, qkv, dout, device)
                except (RuntimeError, NotImplementedError, ValueError) as err:  # e.g. out of memory, no kernel
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    results.append(row)
                    continue
                row.update(fwd_ms=fwd, fwd_bwd_ms=both, fwd_tflops=flops / fwd / 1e9,
                           fwd_bwd_tflops=3.5 * flops / both / 1e9)
                results.append(row)
                if device == "cuda":
                    torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "mode": "cpu-smoke (Triton interpreter; timings meaningless)" if args.cpu_smoke else "cuda",
            "torch": torch.__version__, "heads": heads, "head_dim": head_dim, "results": results}


def print_table(report: dict) -> None:
    print(f"# {report['mode']} on {report['device']}, heads {report['heads']}, head_dim {report['head_dim']}")
    header = f"{'mix':<22} {'dtype':<9} {'backend':<13} {'fwd ms':>9} {'fwd TF/s':>9} {'f+b ms':>9} {'f+b TF/s':>9}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        lead = f"{row['mix']:<22} {row['dtype']:<9} {row['backend']:<13}"
        if "error" in row:
            print(f"{lead} {row['error']}")
        else:
            print(f"{lead} {row['fwd_ms']:>9.3f} {row['fwd_tflops']:>9.2f} {row['fwd_bwd_ms']:>9.3f} "
                  f"{row['fwd_bwd_tflops']:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench/kernels.py: needs a CUDA device for timings (run with --cpu-smoke to check the wiring on CPU)")
        return 0
    sys.path.insert(0, str(ROOT))
    report = run(args)
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
