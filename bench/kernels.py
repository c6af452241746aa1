"""Benchmark our varlen attention against PyTorch flash SDPA at equal tokens and padded SDPA.

    python bench/kernels.py [--out runs/bench/kernels.json]   # CUDA: 65,536 tokens, head dim 64, 12 heads, fp16 + bf16
    python bench/kernels.py --quick                         # tiny shapes; on CPU through Triton's interpreter

Batches of 65,536 tokens each: 8 x 8192, and a seeded log-uniform 16..8192 length mix (46 sequences). Rows, per
batch and dtype:
  triton        ours (kernels/attention.py)
  sdpa-flash    unmasked PyTorch SDPA forced to its flash backend, the sequences of one length in one call (8 x 8192
                is one [8, heads, 8192, d] call): the same tokens and the same useful work as ours
  sdpa-padded   SDPA on the zero-padded [B, heads, L, d] batch with a key-padding mask, pad/unpad included (what a
                padded model does; the mask rules the flash backend out)
  torch-varlen  torch.nn.attention.varlen.varlen_attn, when this torch has it; flash / xformers when installed
Before timing, ours is checked against torch-varlen (else sdpa-flash): output and dq, dk, dv, max abs difference
over the largest reference magnitude, bounded per dtype (CHECK_BOUNDS). TFLOP/s count only the useful (unpadded)
work: forward 4 * sum(L^2) * d * heads, forward+backward 3.5x that (FlashAttention's convention), so a padded
backend's figure shows what padding costs. Targets (kernels/README.md): triton forward+backward >= 1.0x sdpa-flash,
>= 2x sdpa-padded on the log-uniform mix.

Every row is printed and written to the JSON (--out, replaced atomically) as soon as it is measured, so a run
killed midway leaves valid JSON with the rows it finished ("complete": false). A row whose backend fails (a
Triton compilation error, out of memory, no kernel for the dtype) records the error and the run goes on. Exit
status 1 when a check fails or our kernel errors.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from live_report import LiveReport, error_text  # noqa: E402

# largest |ours - reference| / max |reference| accepted, per dtype: a few units in the last place (fp16 2^-10,
# bf16 2^-7; both sides round once and tile their softmax differently); a wrong kernel is off by O(1)
CHECK_BOUNDS = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
TARGETS = {"sdpa-flash": 1.0, "sdpa-padded": 2.0}  # forward+backward speed-up of triton over the row
PADDED_TARGET_MIX = "log-uniform-16..8192"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/kernels.json", help="JSON results file")
    parser.add_argument("--quick", "--cpu-smoke", dest="quick", action="store_true",
                        help="tiny shapes (on CPU: Triton's interpreter, timings meaningless): checks the wiring")
    parser.add_argument("--total-tokens", type=int, default=65536)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtypes", default=None, help="default: float16,bfloat16 (--quick on CPU: float32,bfloat16)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def length_mixes(total: int, seed: int, quick: bool) -> dict[str, list[int]]:
    import numpy as np

    if quick:
        return {"quick-mix": [1, 37, 64, 5]}
    rng = np.random.default_rng(seed)
    mix: list[int] = []
    while sum(mix) < total:  # log-uniform 16..8192, last one trimmed to hit the token budget exactly
        mix.append(int(round(math.exp(rng.uniform(math.log(16), math.log(8192))))))
    mix[-1] -= sum(mix) - total
    if mix[-1] == 0:
        mix.pop()
    return {"8x8192": [total // 8] * 8, PADDED_TARGET_MIX: mix}


def attention_flops(lengths: list[int], heads: int, head_dim: int) -> float:
    return 4.0 * sum(n * n for n in lengths) * head_dim * heads


# ---- backends: each returns fn(q, k, v) -> out over packed [T, heads, d] ---------------------------------
def make_backends(cu_seqlens, lengths: list[int], device: str) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from encoder.attention import get_backend, is_available, sdpa_attention
    from kernels.attention import triton_varlen_attention

    max_seqlen = max(lengths)
    backends = {"triton": lambda q, k, v: triton_varlen_attention(q, k, v, cu_seqlens, max_seqlen)}

    def sdpa_flash(q, k, v):  # our registry's sdpa backend (one call per length), flash only
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa_attention(q, k, v, cu_seqlens, max_seqlen)

    backends["sdpa-flash"] = sdpa_flash

    # padded SDPA: scatter to [B, heads, L, d], boolean key mask, gather back (the pad/unpad is counted)
    batch = len(lengths)
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


def outputs_and_grads(fn, qkv, dout):
    qkv = qkv.detach().requires_grad_()
    out = fn(qkv[:, 0], qkv[:, 1], qkv[:, 2])
    out.backward(dout)
    return [out.detach(), *qkv.grad.unbind(1)]


def check(backends: dict, qkv, dout, dtype_name: str) -> dict:
    """Ours against the first reference that runs for this dtype (torch-varlen, sdpa-flash: fp16/bf16 only on
    CUDA; sdpa-padded): out, dq, dk, dv."""
    ours = outputs_and_grads(backends["triton"], qkv, dout)
    refused = {}
    for reference in ("torch-varlen", "sdpa-flash", "sdpa-padded"):
        if reference not in backends:
            continue
        try:
            theirs = outputs_and_grads(backends[reference], qkv, dout)
            break
        except Exception as err:  # noqa: BLE001  (e.g. no flash kernel for fp32: try the next reference)
            refused[reference] = error_text(err)
    else:
        raise RuntimeError(f"no reference ran: {refused}")
    row = {"against": reference, "bound": CHECK_BOUNDS[dtype_name], **({"refused": refused} if refused else {})}
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        diff = (a.double() - b.double()).abs().max().item()  # NaN anywhere (an unwritten output) gives NaN
        scale = b.double().abs().max().item()
        row[f"{name}_max_abs_diff"] = diff
        row[f"{name}_relative"] = diff / scale if scale > 0 else diff
    row["passed"] = all(row[f"{n}_relative"] <= row["bound"] for n in ("out", "dq", "dk", "dv"))
    return row


TABLE_HEADER = (f"{'mix':<22} {'dtype':<9} {'backend':<13} {'fwd ms':>9} {'fwd TF/s':>9} {'f+b ms':>9} "
                f"{'f+b TF/s':>9}")


def table_line(row: dict) -> str:
    lead = f"{row['mix']:<22} {row['dtype']:<9} {row['backend']:<13}"
    if "error" in row:
        return f"{lead} {row['error']}"
    return (f"{lead} {row['fwd_ms']:>9.3f} {row['fwd_tflops']:>9.2f} {row['fwd_bwd_ms']:>9.3f} "
            f"{row['fwd_bwd_tflops']:>9.2f}")


def check_line(row: dict) -> str:
    if "error" in row:
        return f"check {row['mix']} {row['dtype']}: FAILED {row['error']}"
    diffs = " ".join(f"{n} {row[f'{n}_relative']:.1e}" for n in ("out", "dq", "dk", "dv"))
    verdict = "ok" if row["passed"] else "FAILED"
    return (f"check {row['mix']} {row['dtype']} vs {row['against']}: max|diff|/max|ref| {diffs} "
            f"(bound {row['bound']:.0e}) {verdict}")


def summarise(report: LiveReport, mix: str, dtype_name: str, rows: dict[str, dict], judge: bool) -> None:
    """Speed-ups of ours over the baselines; against the targets only when `judge` (full-size runs)."""
    ours = rows.get("triton", {})
    for other, target in TARGETS.items():
        theirs = rows.get(other, {})
        if "fwd_bwd_ms" not in ours or "fwd_bwd_ms" not in theirs:
            continue
        entry = {"mix": mix, "dtype": dtype_name, "triton_vs": other,
                 "fwd_speedup": theirs["fwd_ms"] / ours["fwd_ms"],
                 "fwd_bwd_speedup": theirs["fwd_bwd_ms"] / ours["fwd_bwd_ms"]}
        if judge and (other != "sdpa-padded" or mix == PADDED_TARGET_MIX):
            entry.update(target=target, met=entry["fwd_bwd_speedup"] >= target)
        report.add("summary", entry)
        goal = f" (target >= {target:.1f}x: {'met' if entry['met'] else 'NOT met'})" if "target" in entry else ""
        print(f"  triton vs {other}: forward {entry['fwd_speedup']:.2f}x, forward+backward "
              f"{entry['fwd_bwd_speedup']:.2f}x{goal}", flush=True)


def run(args: argparse.Namespace, report: LiveReport, device: str) -> bool:
    """Measure every row into `report`; True when every check passed and our kernel never errored."""
    import torch

    heads, head_dim = (2, 32) if args.quick else (args.heads, args.head_dim)
    dtypes = (args.dtypes or ("float32,bfloat16" if device == "cpu" else "float16,bfloat16")).split(",")
    ok = True
    print(TABLE_HEADER, flush=True)
    for mix_name, lengths in length_mixes(args.total_tokens, args.seed, args.quick).items():
        total = sum(lengths)
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        flops = attention_flops(lengths, heads, head_dim)
        backends = make_backends(cu_seqlens, lengths, device)
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            generator = torch.Generator().manual_seed(args.seed)
            qkv = torch.randn(total, 3, heads, head_dim, generator=generator).to(device, dtype).requires_grad_()
            dout = torch.randn(total, heads, head_dim, generator=generator).to(device, dtype)
            lead = {"mix": mix_name, "sequences": len(lengths), "tokens": total, "dtype": dtype_name}
            try:
                checked = {**lead, **check(backends, qkv, dout, dtype_name)}
            except Exception as err:  # noqa: BLE001  (a compile error, no kernel for the dtype: recorded)
                checked = {**lead, "error": error_text(err), "passed": False}
            report.add("checks", checked)
            print(check_line(checked), flush=True)
            ok &= checked["passed"]
            rows = {}
            for name, fn in backends.items():
                row = {**lead, "backend": name}
                try:
                    fwd, both = measure(fn, qkv, dout, device)
                    row.update(fwd_ms=fwd, fwd_bwd_ms=both, fwd_tflops=flops / fwd / 1e9,
                               fwd_bwd_tflops=3.5 * flops / both / 1e9)
                except Exception as err:  # noqa: BLE001  (recorded; the other rows still run)
                    row["error"] = error_text(err)
                    ok &= name != "triton"
                rows[name] = row
                report.add("results", row)
                print(table_line(row), flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
            summarise(report, mix_name, dtype_name, rows, judge=not args.quick)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not args.quick:
            print("bench/kernels.py: needs a CUDA device for timings (--quick checks the wiring on CPU)")
            return 0
        os.environ["TRITON_INTERPRET"] = "1"  # before kernels/ imports triton
    import triton

    heads, head_dim = (2, 32) if args.quick else (args.heads, args.head_dim)
    mode = "quick" + (" (Triton interpreter; timings meaningless)" if device == "cpu" else "") if args.quick else "full"
    header = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "mode": mode, "torch": torch.__version__, "triton": triton.__version__, "heads": heads,
              "head_dim": head_dim, "check_bounds": CHECK_BOUNDS, "targets": TARGETS}
    report = LiveReport(args.out, header, sections=("checks", "results", "summary"))
    print(f"# {mode} on {header['device']}, heads {heads}, head_dim {head_dim}; rows -> {args.out}", flush=True)
    ok = run(args, report, device)
    report.finish(passed=ok)
    print(f"wrote {args.out}" + ("" if ok else " (a check FAILED or our kernel errored)"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
