"""Encoding throughput and peak memory: our unpadded encoder against Hugging Face XLM-RoBERTa.

Both models have the mGTE-base shape (12 x 768, vocab 250k), random weights, PyTorch SDPA attention for XLM-R
(ours: its `attention_backend`, `auto` unless overridden), and encode the same texts (random token ids):

  (a) a realistic length mix: lengths log-uniform in [16, 8192];   (b) 512-token texts.

Baselines: XLM-R on padded batches sorted by length (what sentence-transformers does) and XLM-R one text at a
time (no padding). Ours: token-budget unpadded batches, in the run's precision (--precision: fp32, or bf16
autocast for both models), plus the other precision of ours for the cosine similarity of bf16 to fp32 CLS
embeddings, and the peak memory one 8192-token text adds.

    python bench/inference.py [--quick] [--out runs/bench/inference.json]                 # CPU, fp32
    python bench/inference.py --device cuda --precision bf16 [model.attention_backend=triton]   # a GPU

On CUDA the whole workload runs once untimed first (Triton compiles and autotunes per length bucket), timings
synchronise the device, and peak memory is the CUDA allocator's. Each row is printed and written to the JSON
(--out) as soon as it is measured; a system that fails records its error.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from live_report import LiveReport, error_text  # noqa: E402

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


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def encode_ours(model: Encoder, texts: list[torch.Tensor], budget: int, bf16: bool = False) -> torch.Tensor:
    device = _device(model)
    out = torch.empty(len(texts), model.config.hidden_size, device=device)
    for batch_ids in token_budget_batches([len(t) for t in texts], budget):
        ids = torch.cat([texts[i] for i in batch_ids]).to(device)
        batch = UnpaddedBatch.from_packed(ids, [len(texts[i]) for i in batch_ids])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            cls = model.cls_states(batch)  # [B, H]
        out[batch_ids] = cls.float()
    return out.cpu()


@torch.inference_mode()
def encode_xlmr_padded(model, texts: list[torch.Tensor], batch_size: int, bf16: bool = False) -> torch.Tensor:
    device = _device(model)
    out = torch.empty(len(texts), model.config.hidden_size, device=device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        ids_in_batch = order[start:start + batch_size]
        longest = max(len(texts[i]) for i in ids_in_batch)
        input_ids = torch.ones(len(ids_in_batch), longest, dtype=torch.long)
        mask = torch.zeros(len(ids_in_batch), longest, dtype=torch.long)
        for row, i in enumerate(ids_in_batch):
            input_ids[row, : len(texts[i])] = texts[i]
            mask[row, : len(texts[i])] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            states = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        out[ids_in_batch] = states[:, 0].float()
    return out.cpu()


@torch.inference_mode()
def encode_xlmr_single(model, texts: list[torch.Tensor], bf16: bool = False) -> torch.Tensor:
    device = _device(model)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return torch.stack([model(input_ids=t[None].to(device)).last_hidden_state[0, 0].float()
                            for t in texts]).cpu()


def timed(fn, *args, **kwargs) -> tuple[torch.Tensor, float]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)  # returns host tensors: the device work is done
    return result, time.perf_counter() - start


def peak_memory_cuda(which: str, model, length: int, vocab_size: int) -> float:
    """Peak CUDA memory (MiB) that encoding one `length`-token text adds on top of the loaded model."""
    text = make_texts([length], vocab_size, 0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    if which == "ours":
        encode_ours(model, text, length)
    else:
        encode_xlmr_single(model, text)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


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
                 padded_batch_size: int, precision: str, report: LiveReport) -> list[dict]:
    """Rows: ours, XLM-R padded, XLM-R one at a time (all in `precision`), then ours in the other precision
    (bf16 on CPU runs on the shortest `bf16_sample` texts) with the cosine of bf16 to fp32 embeddings."""
    tokens = sum(len(t) for t in texts)
    bf16 = precision == "bf16"
    rows = []
    embeddings = {}

    def measure(system: str, fn, *args, n_tokens: int = tokens, key: str | None = None, **kwargs) -> None:
        row = {"workload": name, "system": system, "texts": len(texts), "tokens": n_tokens}
        try:
            result, seconds = timed(fn, *args, **kwargs)
            row.update(seconds=round(seconds, 3), tokens_per_s=round(n_tokens / seconds, 1))
            if key:
                embeddings[key] = result
        except Exception as err:  # noqa: BLE001  (recorded; the other systems still run)
            row["error"] = error_text(err)
        rows.append(row)
        report.add("rows", row)
        print(row_line(row), flush=True)

    if torch.cuda.is_available():  # Triton compiles and autotunes per length bucket: all of it before timing
        encode_ours(ours, texts, budget, bf16=bf16)
    else:
        encode_ours(ours, texts[:1], budget, bf16=bf16)  # warm-up
    measure(f"ours {precision} (unpadded, token budget {budget})", encode_ours, ours, texts, budget, bf16=bf16,
            key=precision)
    measure(f"XLM-R {precision}, sorted padded batches of {padded_batch_size}", encode_xlmr_padded, xlmr, texts,
            padded_batch_size, bf16=bf16)
    measure(f"XLM-R {precision}, one text at a time", encode_xlmr_single, xlmr, texts, bf16=bf16)
    # the other precision of ours, for the cosine of bf16 to fp32. bf16 on CPUs without native bf16 (no
    # AVX512-BF16/AMX) is emulated and very slow, so there it runs on the shortest `bf16_sample` texts.
    other = "fp32" if bf16 else "bf16"
    sample = sorted(range(len(texts)), key=lambda i: len(texts[i]))[:bf16_sample] if other == "bf16" else \
        list(range(len(texts)))
    sample_texts = [texts[i] for i in sample]
    label = f"ours {other} autocast" if other == "bf16" else f"ours {other}"
    measure(label + ("" if len(sample) == len(texts) else f" ({len(sample)} shortest texts)"), encode_ours, ours,
            sample_texts, budget, bf16=other == "bf16", n_tokens=sum(len(t) for t in sample_texts), key=other)
    if "bf16" in embeddings and "fp32" in embeddings:
        reference = embeddings["fp32"] if bf16 else embeddings["fp32"][sample]
        cosine = F.cosine_similarity(embeddings["bf16"], reference, dim=-1)
        bf16_row = rows[0] if bf16 else rows[-1]
        bf16_row.update(bf16_cosine_min=round(cosine.min().item(), 6), bf16_cosine_mean=round(cosine.mean().item(), 6))
        report.write()
        print(f"{name}: cos(bf16, fp32) of ours: min {cosine.min().item():.5f} mean {cosine.mean().item():.5f}",
              flush=True)
    return rows


HEADER = f"{'workload':<22} {'system':<46} {'texts':>5} {'tokens':>8} {'s':>8} {'tok/s':>9}"


def row_line(r: dict) -> str:
    lead = f"{r['workload']:<22} {r['system']:<46} {r['texts']:>5} {r['tokens']:>8}"
    if "error" in r:
        return f"{lead} {r['error']}"
    return f"{lead} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/base.yaml"))
    parser.add_argument("overrides", nargs="*", help="model overrides, e.g. model.num_layers=2")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="of both models' timed runs (bf16: autocast); ours also runs in the other one")
    parser.add_argument("--texts", type=int, default=24, help="texts in the length mix")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--short-texts", type=int, default=16, help="512-token texts")
    parser.add_argument("--budget", type=int, default=16384, help="tokens per unpadded batch")
    parser.add_argument("--padded-batch-size", type=int, default=8)
    parser.add_argument("--bf16-sample", type=int, default=None, help="texts encoded under bf16 on CPU (default: "
                        "all where the CPU has native bf16, else the 8 shortest)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small run: 6 texts up to 2048 tokens")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--out", default=str(ROOT / "runs/bench/inference.json"))
    parser.add_argument("--memory-probe", choices=("ours", "xlmr"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.max_length, args.short_texts = 6, 2048, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    native_bf16 = device.type == "cuda" or any(flag in torch.backends.cpu.get_cpu_capability()
                                               for flag in ("AVX512", "AMX"))
    bf16_sample = args.bf16_sample if args.bf16_sample is not None else (10**9 if native_bf16 else 8)

    config = load_config(ModelConfig, args.config, args.overrides, section="model")
    config.hidden_dropout = 0.0
    config.max_position_embeddings = max(config.max_position_embeddings, args.max_length)
    if args.memory_probe:
        memory_probe(args.memory_probe, config, args.max_length)
        return 0
    ours, xlmr = build_ours(config).to(device), build_xlmr(config).to(device)
    if device.type == "cuda":
        machine = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
    else:
        machine = {"platform": platform.platform(), "threads": torch.get_num_threads(),
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    attention = ours.resolved_attention_backend(device)
    report = LiveReport(args.out, {"config": vars(args), "machine": machine, "ours_attention": attention},
                        sections=("rows",))
    print(f"Encoding throughput, {config.num_layers}x{config.hidden_size} vocab {config.vocab_size}, {machine}, "
          f"precision {args.precision}, ours with {attention} attention; rows -> {args.out}")
    print(HEADER)
    print("-" * len(HEADER), flush=True)
    mix = make_texts(length_mix(args.texts, 16, args.max_length, args.seed), config.vocab_size, args.seed)
    short = make_texts([512] * args.short_texts, config.vocab_size, args.seed + 7)

    rows = []
    for name, texts in ((f"length mix 16..{args.max_length}", mix), ("512-token texts", short)):
        rows += run_workload(name, texts, ours, xlmr, args.budget, bf16_sample, args.padded_batch_size,
                             args.precision, report)

    speedups = {}
    ours_prefix = f"ours {args.precision} "
    for workload in dict.fromkeys(r["workload"] for r in rows):
        ours_row = next(r for r in rows if r["workload"] == workload and r["system"].startswith(ours_prefix))
        for r in rows:
            measured = "error" not in r and "error" not in ours_row
            if r["workload"] == workload and r["system"].startswith("XLM-R") and measured:
                speedups[f"{workload} | {ours_row['system'].split(' (')[0]} vs {r['system']}"] = round(
                    ours_row["tokens_per_s"] / r["tokens_per_s"], 2)
    print()
    for key, value in speedups.items():
        print(f"speed-up {key}: {value:.2f}x")
    report.data["speedups"] = speedups
    report.write()

    memory = {}
    if not args.no_memory:
        for which, model in (("ours", ours), ("xlmr", xlmr)):
            try:
                memory[which] = round(peak_memory_cuda(which, model, args.max_length, config.vocab_size)
                                      if device.type == "cuda" else peak_memory_subprocess(which, args), 1)
            except Exception as err:  # noqa: BLE001  (e.g. out of memory: recorded)
                memory[which] = error_text(err)
        print(f"peak memory added by one {args.max_length}-token text (MiB): ours {memory['ours']}, "
              f"XLM-R (SDPA) {memory['xlmr']}")
    report.finish(peak_memory_mib=memory)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
