"""GPU validation in one run: the CUDA kernel tests, the model-level Triton test and the three benchmarks.

    make gpu-check OUT=runs/gpu-check          # = python3 scripts/gpu_check.py runs/gpu-check
    make gpu-check ARGS=--help                 # this text
    python3 scripts/gpu_check.py OUT_DIR [--budget-s 420] [--steps NAME ...] [--dry-run]

Needs one CUDA GPU, the image's python3 with torch + triton (+ pytest; pytest-xdist when present compiles the
kernel variants in parallel) and nothing else: no install (the repository goes on sys.path; at most
`pip install -e . --no-deps`), no flash-attn, xformers or DeepSpeed. Expected: about 6 minutes on one H100,
most of it Triton compiling (an estimate from compiling the kernels for sm_90 offline: no GPU has run it yet);
the whole run is capped at --budget-s (default 420 s = 7 minutes), and each step
at its own timeout, whichever ends first. Steps, in order (OUT_DIR gets at most 5 files):

  kernel-tests   tests/kernels on CUDA: attention fp16/bf16 on every length set (1, 7, 129, a mix, 8192, a long
                 mix up to 8192) and head dims 8..128, fp32 on the sets up to 300 tokens; fused RoPE and GLU
  model-test     tests/kernels/test_model_triton.py: the tiny encoder with all three kernels against PyTorch
  bench-kernels  bench/kernels.py -> kernels.json: ours vs PyTorch flash SDPA at equal tokens (8 x 8192 and the
                 log-uniform 16..8192 mix, 65,536 tokens, 12 heads x 64, fp16 + bf16), padded masked SDPA and
                 torch's varlen attention; checked against torch's output before timing
  bench-training bench/training.py -> training.json: base model MLM step, 65,536 tokens up to 8192, bf16:
                 tokens/s and MFU against the datasheet peak; the padded step for comparison
  bench-inference bench/inference.py -> inference.json: base model encoding tokens/s, bf16, ours vs XLM-R
                 (padded and one text at a time), and the peak memory of one 8192-token text

Targets: ours forward+backward >= 1.0x flash SDPA; >= 2x padded SDPA on the log-uniform mix; base-model
encoding tokens/s and MLM MFU at 8192 reported (first figures: no target yet).

When kernel-tests and model-test pass, the device (name, compute capability) and Triton version are recorded
in $LONGENC_GPU_CHECK_RECORD (default ~/.cache/longenc/gpu_check.json): from then on `attention_backend: auto`
(and rope_impl / glu_impl auto) use our Triton kernels on that device; the benchmarks after it already do.

Every step's output goes to the terminal and to OUT_DIR/gpu-check.log as it comes; OUT_DIR/summary.json is
rewritten after every step, and each benchmark rewrites its JSON after every row, so a run that is killed
leaves every finished table. Exit status: 0 all passed; 1 a correctness step (kernel-tests, model-test,
bench-kernels' checks) failed or did not finish; 3 only a benchmark step failed or did not finish; 2 no CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LOG_NAME, SUMMARY_NAME = "gpu-check.log", "summary.json"
RECORD_AFTER = ("kernel-tests", "model-test")  # the steps whose pass verifies the kernels on this device


@dataclass
class Step:
    name: str
    command: list[str]
    timeout_s: float
    correctness: bool  # a failure here is a failed check, not only a missing figure
    outputs: list[str] = field(default_factory=list)  # files under OUT_DIR it writes


def plan(out_dir: Path, workers: int) -> list[Step]:
    parallel = ["-n", str(workers), "--dist", "loadgroup"] if workers > 1 else []
    pytest = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    return [
        Step("kernel-tests", [*pytest, "tests/kernels", "--ignore", "tests/kernels/test_model_triton.py",
                              "--ignore", "tests/kernels/test_bench.py", "--ignore", "tests/kernels/test_gpu_check.py",
                              *parallel], 240, True),
        Step("model-test", [*pytest, "tests/kernels/test_model_triton.py"], 60, True),
        Step("bench-kernels", [PY, "bench/kernels.py", "--out", str(out_dir / "kernels.json")], 150, True,
             ["kernels.json"]),
        Step("bench-training", [PY, "bench/training.py", "--shapes", "base", "--max-length", "8192", "--tokens",
                                "65536", "--precision", "bf16", "--repeats", "3", "--out",
                                str(out_dir / "training.json")], 120, False, ["training.json"]),
        Step("bench-inference", [PY, "bench/inference.py", "--device", "cuda", "--precision", "bf16", "--out",
                                 str(out_dir / "inference.json")], 120, False, ["inference.json"]),
    ]


class Summary:
    """OUT_DIR/summary.json, rewritten (temporary file + rename) after every change."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.data = {**header, "complete": False, "steps": []}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, timeout_s: float, log, env: dict) -> dict:
    """Run one step with its output streamed to the terminal and the log; kill its process group at timeout."""
    banner = f"\n===== {step.name} (timeout {timeout_s:.0f} s): {' '.join(step.command)}\n"
    for stream in (sys.stdout, log):
        stream.write(banner)
        stream.flush()
    start = time.monotonic()
    proc = subprocess.Popen(step.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    result = {"name": step.name, "command": step.command, "timeout_s": round(timeout_s), "outputs": step.outputs}
    try:
        proc.wait(timeout_s)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        status = "timeout"
    finally:  # also on Interrupted / KeyboardInterrupt: leave no step running behind us
        if proc.poll() is None:
            _kill_group(proc)
    reader.join(10)
    result.update(status=status, returncode=proc.returncode, seconds=round(time.monotonic() - start, 1))
    line = f"===== {step.name}: {status} in {result['seconds']:.0f} s\n"
    for stream in (sys.stdout, log):
        stream.write(line)
        stream.flush()
    return result


def run_steps(steps: list[Step], out_dir: Path, budget_s: float, header: dict, env: dict,
              on_verified=None) -> int:
    """Run `steps` within `budget_s`, keeping summary.json current; returns the exit status (module docstring).
    `on_verified()` runs once every RECORD_AFTER step present has passed, and returns what to record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary(out_dir / SUMMARY_NAME, {**header, "budget_s": budget_s})
    deadline = time.monotonic() + budget_s
    # the pass is recorded once every RECORD_AFTER step has run and passed (never on a partial selection)
    gates = list(RECORD_AFTER) if set(RECORD_AFTER) <= {s.name for s in steps} else []
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with open(out_dir / LOG_NAME, "a", encoding="utf-8") as log:
            for step in steps:
                left = deadline - time.monotonic()
                if left < 10:
                    summary.data["steps"].append({"name": step.name, "status": "skipped",
                                                  "reason": f"budget of {budget_s:.0f} s spent"})
                    summary.write()
                    continue
                try:
                    result = run_step(step, min(step.timeout_s, left), log, env)
                except (Interrupted, KeyboardInterrupt) as err:
                    summary.data["steps"].append({"name": step.name, "status": "interrupted", "by": str(err)})
                    summary.data["interrupted"] = str(err) or "SIGINT"
                    summary.write()
                    return 1 if step.correctness or not _correct(summary, steps) else 3
                summary.data["steps"].append(result)
                passed = {s["name"] for s in summary.data["steps"] if s["status"] == "passed"}
                if on_verified and gates and step.name in gates and set(gates) <= passed:
                    summary.data["record"] = on_verified()
                summary.write()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary.data["complete"] = True
    summary.data["correctness_passed"] = _correct(summary, steps)
    summary.write()
    print_summary(summary.data)
    if not summary.data["correctness_passed"]:
        return 1
    return 0 if all(s["status"] == "passed" for s in summary.data["steps"]) else 3


def _correct(summary: Summary, steps: list[Step]) -> bool:
    status = {s["name"]: s["status"] for s in summary.data["steps"]}
    return all(status.get(s.name) == "passed" for s in steps if s.correctness)


def print_summary(data: dict) -> None:
    print("\n===== gpu-check summary")
    for step in data["steps"]:
        seconds = f"{step['seconds']:>6.0f} s" if "seconds" in step else " " * 8
        outputs = ", ".join(step.get("outputs", []))
        print(f"{step['name']:<16} {step['status']:<12} {seconds}  {outputs}")
    if "record" in data:
        print(f"recorded pass: {data['record']}")
    print(f"correctness: {'passed' if data['correctness_passed'] else 'FAILED or unfinished'}")


# ---- environment ---------------------------------------------------------------------------------------------
def environment() -> dict:
    """Versions and the device, printed first and kept in the summary."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    for module in ("triton", "pytest", "xdist", "flash_attn", "xformers"):
        spec = importlib.util.find_spec(module)
        info[module] = _version(module) if spec else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"sm_{props.major}{props.minor}",
                    multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    return info


def _version(module: str) -> str:
    try:
        return str(getattr(__import__(module), "__version__", "installed"))
    except Exception as err:  # noqa: BLE001  (a broken optional package is worth seeing, not fatal)
        return f"import fails: {type(err).__name__}"


def record_pass(info: dict) -> dict:
    from encoder.kernel_switches import device_key, record_gpu_check_pass

    key = device_key("cuda")
    path = record_gpu_check_pass(key, {"torch": info["torch"], "passed": list(RECORD_AFTER)})
    return {"key": key, "path": str(path)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="where the log, summary.json and the benchmark JSONs go")
    parser.add_argument("--budget-s", type=float, default=420, help="cap on the whole run (default 420 s)")
    parser.add_argument("--steps", nargs="+", metavar="NAME", help="run only these steps (default: all, in order)")
    parser.add_argument("--workers", type=int, default=None,
                        help="pytest-xdist workers for kernel-tests (default: min(6, CPUs) when xdist is installed)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = args.workers
    if workers is None:
        # 6: each worker may hold ~10 GB at the 8192-token float64 reference; more compile in parallel, not faster
        workers = min(6, os.cpu_count() or 1) if importlib.util.find_spec("xdist") else 1
    steps = plan(args.out_dir.resolve(), workers)
    names = [s.name for s in steps]
    if args.steps:
        unknown = sorted(set(args.steps) - set(names))
        if unknown:
            print(f"--steps: unknown {unknown}; the steps are {names}", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in args.steps]
    if args.dry_run:
        for step in steps:
            print(f"{step.name:<16} timeout {step.timeout_s:>4.0f} s  {' '.join(step.command)}")
        return 0
    sys.path.insert(0, str(ROOT))
    info = environment()
    print("gpu-check: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    if not info["cuda_available"]:
        print("gpu-check: needs a CUDA device (nothing was run; --dry-run lists the steps)", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    return run_steps(steps, args.out_dir, args.budget_s, {"environment": info, "workers": workers}, env,
                     on_verified=lambda: record_pass(info))


if __name__ == "__main__":
    raise SystemExit(main())
