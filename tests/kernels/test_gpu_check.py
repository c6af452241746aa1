"""scripts/gpu_check.py's machinery on CPU: steps in order under timeouts and a budget, summary after each step,
the pass record only after the kernel tests pass, a killed run leaves its summary. (The GPU run itself cannot
happen here.)"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
PY = sys.executable


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def python_step(gpu_check, name: str, code: str, timeout_s: float = 60, correctness: bool = True):
    return gpu_check.Step(name, [PY, "-c", code], timeout_s, correctness)


def test_help_says_what_runs_how_long_and_against_what(capsys):
    with pytest.raises(SystemExit):
        load_gpu_check().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("make gpu-check OUT=runs/gpu-check", "make gpu-check ARGS=--help", "about 6 minutes on one H100",
                   "420 s = 7 minutes", "kernel-tests", "model-test", "bench-kernels", "bench-training",
                   "bench-inference", "flash SDPA at equal tokens", ">= 1.0x flash SDPA",
                   ">= 2x padded SDPA on the log-uniform mix", "MFU", "tokens/s", "gpu_check.json"):
        assert phrase in text, phrase


def test_steps_timeouts_budget_summary_and_record(tmp_path):
    gpu_check = load_gpu_check()
    recorded = []
    steps = [
        python_step(gpu_check, "kernel-tests", "print('kernels ok')"),
        python_step(gpu_check, "model-test", "print('model ok')"),
        python_step(gpu_check, "bench-kernels", "import time; print('started', flush=True); time.sleep(60)",
                    timeout_s=2),
        python_step(gpu_check, "bench-training", "print('never')", correctness=False),
    ]
    start = time.monotonic()
    # budget 12 s: after the 2 s timeout fewer than 10 s are left, too few to start another step
    status = gpu_check.run_steps(steps, tmp_path, budget_s=12, header={"environment": {}}, env=None,
                                 on_verified=lambda: recorded.append("pass") or {"key": "test"})
    assert time.monotonic() - start < 30  # the sleeping step was killed at its timeout
    summary = json.loads((tmp_path / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses == {"kernel-tests": "passed", "model-test": "passed", "bench-kernels": "timeout",
                        "bench-training": "skipped"}
    assert recorded == ["pass"] and summary["record"] == {"key": "test"}
    assert summary["complete"] is True and summary["correctness_passed"] is False
    assert status == 1  # bench-kernels (its checks) did not finish
    log = (tmp_path / "gpu-check.log").read_text()
    assert "kernels ok" in log and "model ok" in log and "started" in log
    assert "===== bench-kernels: timeout" in log


def test_no_record_when_a_kernel_test_fails_and_status_3_for_benchmarks_only(tmp_path):
    gpu_check = load_gpu_check()
    recorded = []
    steps = [python_step(gpu_check, "kernel-tests", "raise SystemExit(1)"),
             python_step(gpu_check, "model-test", "pass")]
    assert gpu_check.run_steps(steps, tmp_path / "a", 60, {}, None, lambda: recorded.append(1)) == 1
    assert recorded == []
    steps = [python_step(gpu_check, "kernel-tests", "pass"), python_step(gpu_check, "model-test", "pass"),
             python_step(gpu_check, "bench-training", "raise SystemExit(4)", correctness=False)]
    assert gpu_check.run_steps(steps, tmp_path / "b", 60, {}, None, lambda: recorded.append(1) or {}) == 3
    assert recorded == [1]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["steps"][-1]["status"] == "failed" and summary["steps"][-1]["returncode"] == 4


def test_a_killed_run_leaves_its_summary(tmp_path):
    driver = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("gpu_check", {str(SCRIPT)!r})
        g = importlib.util.module_from_spec(spec); sys.modules["gpu_check"] = g; spec.loader.exec_module(g)
        steps = [g.Step("kernel-tests", [sys.executable, "-c", "print('done', flush=True)"], 60, True),
                 g.Step("model-test", [sys.executable, "-c", "import time; print('waiting', flush=True); "
                                       "time.sleep(120)"], 200, True)]
        sys.exit(g.run_steps(steps, g.Path({str(tmp_path)!r}), 300, {{}}, None))
    """)
    proc = subprocess.Popen([PY, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "waiting" in line:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 1  # interrupted inside a correctness step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["passed", "interrupted"]
    assert summary["interrupted"] == "SIGTERM" and summary["complete"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_cuda_it_refuses_and_runs_nothing(tmp_path, capsys):
    assert load_gpu_check().main([str(tmp_path / "out")]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
