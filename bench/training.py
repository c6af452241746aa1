"""Training throughput: the unpadded MLM trainer step vs the same weights fed padded batches.

    python bench/training.py --quick                 # CPU: small token counts, base shape at short length
    python bench/training.py --shapes base --max-length 8192 --tokens 65536 --precision bf16   # a GPU

One step = forward + backward + AdamW update of `MaskedLM` on a batch whose sequence lengths are drawn
log-uniform in [16, max_length] (seeded) and packed up to a token budget; 30% of tokens carry MLM targets.
The padded baseline pads the same sequences to [B, L] and runs the same modules with SDPA attention under a
key-padding mask over [B, heads, L, d], so the work spent on padding shows. Model FLOPs count only real
tokens (3 x forward: linear layers 2·params·T, attention 4·H·Σlen² per layer, the MLM head on masked
tokens); MFU divides achieved model FLOP/s by a peak (--peak-tflops; default the datasheet dense bf16 figure on
an H100/H200/A100, else a measured large matmul). Each row is printed and written to the JSON (--out) as soon as
it is measured; a mode that fails (the padded batch of an 8192 mix may not fit) records its error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from live_report import LiveReport, error_text  # noqa: E402

from encoder.batch import IGNORE_INDEX, UnpaddedBatch  # noqa: E402
from encoder.config import ModelConfig, load_config  # noqa: E402
from encoder.heads import MaskedLM  # noqa: E402
from encoder.training import build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sample_lengths(max_length: int, budget: int, seed: int) -> list[int]:
    """Log-uniform lengths in [16, max_length] until the token budget is full."""
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while True:
        n = int(round(math.exp(rng.uniform(math.log(16), math.log(max_length)))))
        if total + n > budget:
            return lengths or [min(n, budget)]
        lengths.append(n)
        total += n


def make_batch(lengths: list[int], vocab: int, seed: int) -> UnpaddedBatch:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (sum(lengths),), generator=gen)
    chosen = torch.rand(ids.shape, generator=gen) < 0.3
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return UnpaddedBatch.from_packed(ids, lengths, labels=labels)


def padded_forward(model: MaskedLM, batch: UnpaddedBatch) -> torch.Tensor:
    """The same weights on padded [B, L] tensors with masked SDPA; returns the MLM loss."""
    encoder, lengths, device = model.encoder, batch.lengths, batch.input_ids.device
    b, length = len(lengths), max(lengths)
    mask = torch.arange(length, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]  # [B, L]
    ids = torch.full((b, length), encoder.config.pad_token_id, dtype=torch.long, device=device)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long, device=device)
    ids[mask], labels[mask] = batch.input_ids, batch.labels
    emb = encoder.embeddings
    hidden = emb.word_embeddings(ids)  # [B, L, H]
    if emb.token_type_embeddings is not None:
        hidden = hidden + emb.token_type_embeddings.weight[0]
    hidden = emb.dropout(emb.norm(hidden))
    positions = torch.arange(length, device=device).repeat(b)  # [B*L]
    key_mask = mask[:, None, None, :]  # [B, 1, 1, L]: padded keys get no weight
    for layer in encoder.layers:
        attn = layer.attn
        qkv = attn.qkv_proj(hidden).view(b * length, 3, attn.num_heads, attn.head_dim)
        q, k = attn.rotary(qkv[:, 0], qkv[:, 1], positions)
        q, k, v = (x.view(b, length, attn.num_heads, attn.head_dim).transpose(1, 2) for x in (q, k, qkv[:, 2]))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [B, heads, L, d]
        out = attn.o_proj(out.transpose(1, 2).reshape(b, length, -1))
        if layer.post_norm:
            hidden = layer.attn_norm(hidden + layer.dropout(out))
            hidden = layer.mlp_norm(hidden + layer.dropout(layer.mlp(hidden)))
        else:
            hidden = hidden + layer.dropout(out)
            hidden = hidden + layer.dropout(layer.mlp(layer.mlp_norm(hidden)))
    hidden = encoder.final_norm(hidden)
    selected = labels != IGNORE_INDEX
    logits = model.head(hidden[selected])
    return F.cross_entropy(logits.float(), labels[selected])


def model_flops(config: ModelConfig, lengths: list[int], num_masked: int) -> float:
    """Training FLOPs (3 x forward) of the real tokens only."""
    h, layers, t = config.hidden_size, config.num_layers, sum(lengths)
    linear = layers * (h * 3 * h + h * h + h * 2 * config.intermediate_size + config.intermediate_size * h)
    attention = layers * 4 * h * sum(n * n for n in lengths)
    head = num_masked * (h * h + h * config.vocab_size)
    return 3 * (2 * linear * t + attention + 2 * head)


# dense bf16 tensor-core peaks from the datasheets (SXM parts), TFLOP/s
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def measured_peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """A large matmul's rate: 8192^3 on CUDA (synchronised: kernels run asynchronously), 2048^3 on CPU."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def default_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak TFLOP/s for MFU, where it comes from): the datasheet bf16 figure of a known GPU, else measured."""
    if device.type == "cuda" and precision == "bf16":
        name = torch.cuda.get_device_name(device)
        for key, tflops in DATASHEET_BF16_TFLOPS.items():
            if key in name:
                return tflops, f"{key} datasheet, dense bf16"
    dtype = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32
    size = 8192 if device.type == "cuda" else 2048
    return measured_peak_tflops(device, dtype), f"measured {size}^3 {str(dtype).removeprefix('torch.')} matmul"


def time_steps(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


HEADER = (f"{'shape':<6}{'mode':<10}{'attention':<10}{'seqs':>5}{'tokens':>8}{'computed':>10}{'step ms':>10}"
          f"{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}")


def row_line(r: dict) -> str:
    lead = f"{r['shape']:<6}{r['mode']:<10}{r.get('attention', ''):<10}"
    if "error" in r:
        return f"{lead} {r['error']}"
    return (f"{lead}{r['sequences']:>5}{r['tokens']:>8}{r['computed_tokens']:>10}{r['step_ms']:>10.1f}"
            f"{r['tokens_per_s']:>10.0f}{r['model_tflops']:>9.4f}{r['mfu']:>7.1%}")


def bench_shape(name: str, config: ModelConfig, max_length: int, tokens: int, repeats: int, seed: int,
                precision: str, device: torch.device, peak: float, report: LiveReport,
                optimizer_step: bool = True) -> None:
    """Time the unpadded step, then the padded one, each row reported as soon as it is measured; a mode that
    fails (out of memory: the padded batch of a long mix is several times the tokens) records its error."""
    config.max_position_embeddings = max(config.max_position_embeddings, max_length)
    torch.manual_seed(seed)
    model = MaskedLM(config).to(device)
    optimizer = build_optimizer(model, lr=1e-4)
    lengths = sample_lengths(max_length, tokens, seed)
    batch = make_batch(lengths, config.vocab_size, seed).to(device)
    num_masked = int((batch.labels != IGNORE_INDEX).sum())
    flops = model_flops(config, lengths, num_masked)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def run(loss_fn):
        def step() -> None:
            with autocast:
                loss = loss_fn()
            loss.backward()
            if optimizer_step:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return step

    padded_tokens = len(lengths) * max(lengths)
    step_ms = {}
    for mode, loss_fn in (("unpadded", lambda: model(batch).loss), ("padded", lambda: padded_forward(model, batch))):
        # the padded path calls SDPA itself; the unpadded one goes through the registry
        attention = model.encoder.resolved_attention_backend(device) if mode == "unpadded" else "sdpa+mask"
        row = {"shape": name, "mode": mode, "attention": attention, "sequences": len(lengths),
               "tokens": sum(lengths), "computed_tokens": sum(lengths) if mode == "unpadded" else padded_tokens,
               "max_length": max_length}
        try:
            seconds = time_steps(run(loss_fn), repeats)
            step_ms[mode] = seconds * 1e3
            row.update(step_ms=seconds * 1e3, tokens_per_s=sum(lengths) / seconds,
                       model_tflops=flops / seconds / 1e12, mfu=flops / seconds / 1e12 / peak)
        except Exception as err:  # noqa: BLE001  (recorded; the next mode still runs)
            row["error"] = error_text(err)
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report.add("rows", row)
        print(row_line(row), flush=True)
    if len(step_ms) == 2:
        speedup = step_ms["padded"] / step_ms["unpadded"]
        report.add("speedups", {"shape": name, "unpadded_vs_padded": speedup})
        print(f"{name}: speed-up of unpadded over padded (step time ratio): {speedup:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="model config overrides, e.g. model.attention_backend=triton")
    parser.add_argument("--shapes", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--quick", action="store_true",
                        help="CPU sizes: few tokens, base at max length 128, fp32, forward+backward only (the AdamW "
                        "update of 306M parameters, identical in both modes, would dominate a CPU timing)")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=65536, help="token budget of the packed batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (default: the datasheet dense bf16 figure of an H100/H200/A100, "
                        "else a measured large matmul)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/training.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = {"tiny": (512, 2048), "base": (128, 1024)} if args.quick else {}
    repeats = 1 if args.quick else args.repeats
    precision = "fp32" if args.quick and device.type == "cpu" else args.precision
    peak, peak_source = (args.peak_tflops, "given") if args.peak_tflops else default_peak(device, precision)
    report = LiveReport(args.out, {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                                   else str(device), "precision": precision, "peak_tflops": peak,
                                   "peak_source": peak_source, "quick": args.quick,
                                   "optimizer_step": not args.quick, "overrides": args.overrides},
                        sections=("rows", "speedups"))
    print(f"device={device} precision={precision} optimizer_step={not args.quick} peak={peak:.3f} TFLOP/s "
          f"({peak_source}); rows -> {args.out}")
    print(HEADER, flush=True)
    for shape in args.shapes:
        config = load_config(ModelConfig, ROOT / "configs" / f"{shape}.yaml", args.overrides, section="model")
        config.hidden_dropout = 0.0
        max_length, tokens = sizes.get(shape, (args.max_length, args.tokens))
        bench_shape(shape, config, max_length, tokens, repeats, args.seed, precision, device, peak, report,
                    optimizer_step=not args.quick)
    report.finish()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
