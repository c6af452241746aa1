"""bench/kernels.py writes every row as it goes, survives a kill with valid JSON, and records a failing row."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# the bench's CPU path (--quick through the interpreter); on a GPU `make gpu-check` runs the bench itself
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU --quick path of bench/kernels.py")

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "kernels.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def test_quick_run_killed_after_the_first_row_leaves_valid_json(tmp_path):
    out = tmp_path / "kernels.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick", "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            report = read_json(out)  # written by rename: never a half-written file
            if report and report["results"]:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the quick run ended before it could be killed:\n" + proc.stdout.read()
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["complete"] is False
    first = report["results"][0]
    assert first["backend"] == "triton" and first["dtype"] == "float32" and first["fwd_bwd_ms"] > 0
    assert report["checks"][0]["passed"] is True and report["checks"][0]["out_relative"] < 1e-4
    printed = proc.stdout.read()
    assert "check quick-mix float32" in printed and "quick-mix              float32   triton" in printed


def test_a_triton_compilation_error_is_recorded_and_the_other_rows_still_run(tmp_path, monkeypatch):
    from triton.compiler.errors import CompilationError

    import kernels.attention

    def fails_to_compile(*args, **kwargs):
        raise CompilationError("x = 1", ast.parse("x = 1").body[0], "out of resource: shared memory")

    monkeypatch.setattr(kernels.attention, "triton_varlen_attention", fails_to_compile)
    bench = load_bench()
    out = tmp_path / "kernels.json"
    assert bench.main(["--quick", "--dtypes", "float32", "--out", str(out)]) == 1  # our kernel failed
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["complete"] is True and report["passed"] is False
    assert report["checks"][0]["passed"] is False and "CompilationError" in report["checks"][0]["error"]
    rows = {row["backend"]: row for row in report["results"]}
    assert rows["triton"]["error"].startswith("CompilationError: out of resource")
    assert rows["sdpa-flash"]["fwd_bwd_ms"] > 0 and rows["sdpa-padded"]["fwd_bwd_ms"] > 0


def test_check_fails_on_a_wrong_kernel(monkeypatch):
    """The pre-timing check has teeth: attention with a wrong scale is caught."""
    import torch

    bench = load_bench()
    lengths = [3, 9]
    cu_seqlens = torch.tensor([0, 3, 12], dtype=torch.int32)
    backends = bench.make_backends(cu_seqlens, lengths, "cpu")
    right = backends["sdpa-flash"]
    backends["triton"] = lambda q, k, v: right(q * 1.5, k, v)
    qkv = torch.randn(12, 3, 1, 16, generator=torch.Generator().manual_seed(0))
    dout = torch.randn(12, 1, 16, generator=torch.Generator().manual_seed(1))
    wrong = bench.check(backends, qkv, dout, "float32")
    assert not wrong["passed"] and wrong["out_relative"] > 1e-2
    backends["triton"] = right
    assert bench.check(backends, qkv, dout, "float32")["passed"]


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_names_the_comparisons_and_targets(argv, capsys):
    with pytest.raises(SystemExit):
        load_bench().parse_args(argv)
    text = capsys.readouterr().out
    for phrase in ("sdpa-flash", "sdpa-padded", "torch-varlen", ">= 1.0x", ">= 2x", "--quick"):
        assert phrase in text
