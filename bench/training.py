"""Training throughput: the unpadded MLM trainer step vs the same weights fed padded batches.

    python bench/training.py --quick                 # CPU: small token counts, base shape at short length
    python bench/training.py --shapes base --max-length 8192 --tokens 65536 --precision bf16   # a GPU

One step = forward + backward + AdamW update of `MaskedLM` on a batch whose sequence lengths are drawn
log-uniform in [16, max_length] (seeded) and packed up to a token budget; 30% of tokens carry MLM targets.
The padded baseline pads the same sequences to [B, L] and runs the same modules with SDPA attention under a
key-padding mask over [B, heads, L, d], so the work spent on padding shows. Model FLOPs count only real
tokens (3 x forward: linear layers 2·params·T, attention 4·H·Σlen² per layer, the MLM head on masked
tokens); MFU divides achieved model FLOP/s by a peak (--peak-tflops, or a measured large matmul on CPU).
Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    encoder, lengths = model.encoder, batch.lengths
    b, length = len(lengths), max(lengths)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]
    ids = torch.full((b, length), encoder.config.pad_token_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    ids[mask], labels[mask] = batch.input_ids, batch.labels
    emb = encoder.embeddings
    hidden = emb.word_embeddings(ids)  # [B, L, H]
    if emb.token_type_embeddings is not None:
        hidden = hidden + emb.token_type_embeddings.weight[0]
    hidden = emb.dropout(emb.norm(hidden))
    positions = torch.arange(length).repeat(b)  # [B*L]
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


def measured_peak_tflops(device: torch.device) -> float:
    a = torch.randn(2048, 2048, device=device)
    for _ in range(2):
        a @ a
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ a
    return 2 * 2048**3 * reps / (time.perf_counter() - start) / 1e12


def time_steps(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_shape(name: str, config: ModelConfig, max_length: int, tokens: int, repeats: int, seed: int,
                precision: str, device: torch.device, peak: float, optimizer_step: bool = True) -> list[dict]:
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

    rows = []
    padded_tokens = len(lengths) * max(lengths)
    for mode, loss_fn in (("unpadded", lambda: model(batch).loss), ("padded", lambda: padded_forward(model, batch))):
        seconds = time_steps(run(loss_fn), repeats)
        rows.append({"shape": name, "mode": mode, "sequences": len(lengths), "tokens": sum(lengths),
                     "computed_tokens": sum(lengths) if mode == "unpadded" else padded_tokens,
                     "max_length": max_length, "step_ms": seconds * 1e3, "tokens_per_s": sum(lengths) / seconds,
                     "model_tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / peak})
    rows[0]["speedup_vs_padded"] = rows[1]["step_ms"] / rows[0]["step_ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--quick", action="store_true",
                        help="CPU sizes: few tokens, base at max length 128, fp32, forward+backward only (the AdamW "
                        "update of 306M parameters, identical in both modes, would dominate a CPU timing)")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=65536, help="token budget of the packed batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (e.g. 989 for H100 bf16 dense)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/training.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    peak = args.peak_tflops or measured_peak_tflops(device)
    sizes = {"tiny": (512, 2048), "base": (128, 1024)} if args.quick else {}
    repeats = 1 if args.quick else args.repeats
    precision = "fp32" if args.quick and device.type == "cpu" else args.precision
    rows = []
    for shape in args.shapes:
        config = load_config(ModelConfig, ROOT / "configs" / f"{shape}.yaml", section="model")
        config.hidden_dropout = 0.0
        max_length, tokens = sizes.get(shape, (args.max_length, args.tokens))
        rows += bench_shape(shape, config, max_length, tokens, repeats, args.seed, precision, device, peak,
                            optimizer_step=not args.quick)
    header = f"{'shape':<6}{'mode':<10}{'seqs':>5}{'tokens':>8}{'computed':>10}{'step ms':>10}{'tok/s':>10}" \
             f"{'TFLOP/s':>9}{'MFU':>7}{'speedup':>9}"
    print(f"device={device} precision={precision} optimizer_step={not args.quick} peak={peak:.3f} TFLOP/s "
          f"({'given' if args.peak_tflops else 'measured 2048^3 matmul'})")
    print(header)
    for r in rows:
        speed = f"{r['speedup_vs_padded']:.2f}x" if "speedup_vs_padded" in r else ""
        print(f"{r['shape']:<6}{r['mode']:<10}{r['sequences']:>5}{r['tokens']:>8}{r['computed_tokens']:>10}"
              f"{r['step_ms']:>10.1f}{r['tokens_per_s']:>10.0f}{r['model_tflops']:>9.4f}{r['mfu']:>7.1%}{speed:>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": str(device), "precision": precision, "peak_tflops": peak, "quick": args.quick,
              "optimizer_step": not args.quick, "rows": rows}
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
