"""Encoding throughput and peak memory: our unpadded encoder against Hugging Face XLM-RoBERTa.

Both models have the mGTE-base shape (12 x 768, vocab 250k), random weights, fp32, PyTorch SDPA
attention, and encode the same texts (random token ids) in one run:

  (a) a realistic length mix: lengths log-uniform in [16, 8192];   (b) 512-token texts.

Baselines: XLM-R on padded batches sorted by length (what sentence-transformers does) and XLM-R one text
at a time (no padding). Ours: token-budget unpadded batches in fp32 and under bf16 autocast, with the
cosine similarity of bf16 to fp32 CLS embeddings, and peak memory for one 8192-token text.

    python bench/inference.py [--quick] [--out runs/bench/inference.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from encoder.batch import UnpaddedBatch  # noqa: E402
from encoder.config import ModelConfig, load_config  # noqa: E402
from encoder.model import Encoder  # noqa: E402


def length_mix(count: int, low: int, high: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    return [int(round(math.exp(math.log(low) + x * (math.log(high) - math.log(low))))) for x in u.tolist()]


def make_texts(lengths: list[int], vocab_size: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    # position 0 is the CLS id (0) as a tokenizer would put it
    return [torch.cat([torch.zeros(1, dtype=torch.long), torch.randint(5, vocab_size, (n - 1,), generator=generator)])
            for n in lengths]


def build_ours(config: ModelConfig) -> Encoder:
    torch.manual_seed(0)
    return Encoder(config).eval()


def build_xlmr(config: ModelConfig):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hf_config = XLMRobertaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                 num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                                 intermediate_size=config.intermediate_size,
                                 max_position_embeddings=config.max_position_embeddings + 2,
                                 attn_implementation="sdpa")
    torch.manual_seed(0)
    return XLMRobertaModel(hf_config, add_pooling_layer=False).eval()


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `budget` tokens (a longer text goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, used = [], [], 0
    for i in order:
        if current and used + lengths[i] > budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def encode_ours(model: Encoder, texts: list[torch.Tensor], budget: int, bf16: bool = False) -> torch.Tensor:
    out = torch.empty(len(texts), model.config.hidden_size)
    for batch_ids in token_budget_batches([len(t) for t in texts], budget):
        batch = UnpaddedBatch.from_packed(torch.cat([texts[i] for i in batch_ids]), [len(texts[i]) for i in batch_ids])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cls = model.cls_states(batch)  # [B, H]
        out[batch_ids] = cls.float()
    return out


@torch.inference_mode()
def encode_xlmr_padded(model, texts: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    out = torch.empty(len(texts), model.config.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        ids_in_batch = order[start:start + batch_size]
        longest = max(len(texts[i]) for i in ids_in_batch)
        input_ids = torch.ones(len(ids_in_batch), longest, dtype=torch.long)
        mask = torch.zeros(len(ids_in_batch), longest, dtype=torch.long)
        for row, i in enumerate(ids_in_batch):
            input_ids[row, : len(texts[i])] = texts[i]
            mask[row, : len(texts[i])] = 1
        out[ids_in_batch] = model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, 0]
    return out


@torch.inference_mode()
def encode_xlmr_single(model, texts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([model(input_ids=t[None]).last_hidden_state[0, 0] for t in texts])


def timed(fn, *args, **kwargs) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_memory_subprocess(which: str, args: argparse.Namespace) -> float:
    """Peak resident memory added by encoding one `--max-length` text (MiB), measured in a fresh process."""
    command = [sys.executable, __file__, "--memory-probe", which, "--config", args.config,
               "--max-length", str(args.max_length), *args.overrides]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def memory_probe(which: str, config: ModelConfig, length: int) -> None:
    model = build_ours(config) if which == "ours" else build_xlmr(config)
    text = make_texts([length], config.vocab_size, 0)
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM), so model construction is not counted
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    if which == "ours":
        encode_ours(model, text, length)
    else:
        encode_xlmr_single(model, text)
    print((_rss_kib("VmHWM") - before) / 1024)  # KiB -> MiB


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_workload(name: str, texts: list[torch.Tensor], ours: Encoder, xlmr, budget: int, bf16_sample: int,
                 padded_batch_size: int) -> list[dict]:
    tokens = sum(len(t) for t in texts)
    rows = []

    def add(system: str, seconds: float, n_tokens: int, **extra) -> None:
        rows.append({"workload": name, "system": system, "texts": len(texts), "tokens": n_tokens,
                     "seconds": round(seconds, 3), "tokens_per_s": round(n_tokens / seconds, 1), **extra})

    encode_ours(ours, texts[:1], budget)  # warm-up
    emb_fp32, seconds = timed(encode_ours, ours, texts, budget)
    add(f"ours fp32 (unpadded, token budget {budget})", seconds, tokens)
    _, seconds = timed(encode_xlmr_padded, xlmr, texts, padded_batch_size)
    add(f"XLM-R fp32, sorted padded batches of {padded_batch_size}", seconds, tokens)
    _, seconds = timed(encode_xlmr_single, xlmr, texts)
    add("XLM-R fp32, one text at a time", seconds, tokens)
    # bf16: on CPUs without native bf16 (no AVX512-BF16/AMX) it is emulated and very slow, so it runs on
    # the shortest `bf16_sample` texts; its cosine similarity is taken against fp32 on the same texts.
    sample = sorted(range(len(texts)), key=lambda i: len(texts[i]))[:bf16_sample]
    sample_texts = [texts[i] for i in sample]
    emb_bf16, seconds = timed(encode_ours, ours, sample_texts, budget, bf16=True)
    cosine = F.cosine_similarity(emb_bf16, emb_fp32[sample], dim=-1)
    add("ours bf16 autocast" + ("" if len(sample) == len(texts) else f" ({len(sample)} shortest texts)"),
        seconds, sum(len(t) for t in sample_texts), bf16_cosine_min=round(cosine.min().item(), 6),
        bf16_cosine_mean=round(cosine.mean().item(), 6))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/base.yaml"))
    parser.add_argument("overrides", nargs="*", help="model overrides, e.g. model.num_layers=2")
    parser.add_argument("--texts", type=int, default=24, help="texts in the length mix")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--short-texts", type=int, default=16, help="512-token texts")
    parser.add_argument("--budget", type=int, default=16384, help="tokens per unpadded batch")
    parser.add_argument("--padded-batch-size", type=int, default=8)
    parser.add_argument("--bf16-sample", type=int, default=None, help="texts encoded under bf16 (default: all "
                        "where the CPU has native bf16, else the 8 shortest)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small run: 6 texts up to 2048 tokens")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default=str(ROOT / "runs/bench/inference.json"))
    parser.add_argument("--memory-probe", choices=("ours", "xlmr"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.max_length, args.short_texts = 6, 2048, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    native_bf16 = any(flag in torch.backends.cpu.get_cpu_capability() for flag in ("AVX512", "AMX"))
    bf16_sample = args.bf16_sample if args.bf16_sample is not None else (10**9 if native_bf16 else 8)

    config = load_config(ModelConfig, args.config, args.overrides, section="model")
    config.hidden_dropout = 0.0
    config.max_position_embeddings = max(config.max_position_embeddings, args.max_length)
    if args.memory_probe:
        memory_probe(args.memory_probe, config, args.max_length)
        return 0
    ours, xlmr = build_ours(config), build_xlmr(config)
    mix = make_texts(length_mix(args.texts, 16, args.max_length, args.seed), config.vocab_size, args.seed)
    short = make_texts([512] * args.short_texts, config.vocab_size, args.seed + 7)

    rows = []
    for name, texts in ((f"length mix 16..{args.max_length}", mix), ("512-token texts", short)):
        rows += run_workload(name, texts, ours, xlmr, args.budget, bf16_sample, args.padded_batch_size)
        print(f"[bench] {name}: done", file=sys.stderr)

    memory = {}
    if not args.no_memory:
        for which in ("ours", "xlmr"):
            memory[which] = round(peak_memory_subprocess(which, args), 1)

    print(f"\nEncoding throughput, {config.num_layers}x{config.hidden_size} vocab {config.vocab_size}, "
          f"CPU ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})")
    header = f"{'workload':<22} {'system':<46} {'texts':>5} {'tokens':>8} {'s':>8} {'tok/s':>9}  notes"
    print(header)
    print("-" * len(header))
    for r in rows:
        note = f"cos(bf16,fp32) min {r['bf16_cosine_min']:.5f}" if "bf16_cosine_min" in r else ""
        print(f"{r['workload']:<22} {r['system']:<46} {r['texts']:>5} {r['tokens']:>8} {r['seconds']:>8.2f} "
              f"{r['tokens_per_s']:>9.1f}  {note}")
    speedups = {}
    for workload in {r["workload"] for r in rows}:
        ours_row = next(r for r in rows if r["workload"] == workload and r["system"].startswith("ours fp32"))
        for r in rows:
            if r["workload"] == workload and r["system"].startswith("XLM-R"):
                speedups[f"{workload} | ours fp32 vs {r['system']}"] = round(
                    ours_row["tokens_per_s"] / r["tokens_per_s"], 2)
    print()
    for key, value in speedups.items():
        print(f"speed-up {key}: {value:.2f}x")
    if memory:
        print(f"peak memory added by one {args.max_length}-token text: ours {memory['ours']:.0f} MiB, "
              f"XLM-R (SDPA) {memory['xlmr']:.0f} MiB")
    result = {"config": vars(args), "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                                                 "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                                 "torch": torch.__version__},
              "rows": rows, "speedups": speedups, "peak_memory_mib": memory}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
