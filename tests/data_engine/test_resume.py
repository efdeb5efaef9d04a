"""Resumable stages: re-runs reuse what is on disk, changed configs redo what they must,
and a run killed mid-stage (SIGKILL) resumes to the same outputs as an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from data_engine.config import DataConfig, InputConfig, MixConfig
from data_engine.run import run

from .test_run import SPLITS, check_contract

OUTPUTS = [f"{s}.jsonl" for s in SPLITS] + ["rejected.jsonl"]
STAGED = ("clean", "dedup", "mix", "split")  # stages with a folder under .stages


def make_lines(rows: int, seed: int, source: str | None = None) -> list[str]:
    """Random-word chat rows with ~3% exact or near copies, some defects and some groups."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(2000)]
    made: list[tuple[str, str]] = []
    lines = []
    for i in range(rows):
        extra = {"source": source} if source else {}
        if rng.random() < 0.15:
            extra["group"] = f"g{rng.randrange(max(rows // 40, 1))}"
        roll = rng.random()
        if roll < 0.01:
            lines.append('{"id": "broken-%d", "messages": [' % i)
            continue
        if roll < 0.02:
            user, reply = f"Tags for post {i}?", "旅行｜京都｜紅葉｜週末"
        elif roll < 0.05 and made:
            user, reply = made[rng.randrange(len(made))]
            if rng.random() < 0.5:  # a near copy: one word changed
                words = reply.split(" ")
                words[rng.randrange(len(words))] = "changed"
                reply = " ".join(words)
        else:
            user = " ".join(rng.choices(vocab, k=12)) + "?"
            reply = " ".join(rng.choices(vocab, k=22)) + "."
            made.append((user, reply))
        lines.append(json.dumps({"id": f"{source or 'r'}{i}", "messages": [
            {"role": "user", "content": user}, {"role": "assistant", "content": reply}],
            **extra}, ensure_ascii=False))
    return lines


def write_input(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def reused(manifest: dict) -> dict[str, bool]:
    return {s["name"]: s["reused"] for s in manifest["stages"]}


def marker(out: Path, stage: str) -> dict:
    return json.loads((out / ".stages" / stage / "_SUCCESS.json").read_text(encoding="utf-8"))


def marker_times(out: Path) -> dict[str, int]:
    return {s: (out / ".stages" / s / "_SUCCESS.json").stat().st_mtime_ns for s in STAGED}


def two_source_config(folder: Path) -> DataConfig:
    return DataConfig(inputs=[InputConfig(path=str(folder / "in.jsonl"))])


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    # One file (one shard), its rows naming their source: two sources to mix.
    folder = tmp_path_factory.mktemp("resume")
    write_input(folder / "in.jsonl", make_lines(300, 1, "chat") + make_lines(120, 2, "wiki"))
    out = folder / "first"
    result = run(two_source_config(folder), out, progress=False)
    check_contract(out)
    assert not any(reused(result.manifest).values())
    return folder, out


def _copy(first: Path, to: Path) -> Path:
    shutil.copytree(first, to)
    return to


@pytest.mark.slow
def test_rerun_of_a_finished_run_recomputes_nothing(first_run):
    folder, first = first_run
    out = _copy(first, folder / "again")
    before = marker_times(out)
    run(two_source_config(folder), out, progress=False)
    assert marker_times(out) == before
    assert outputs(out) == outputs(first)
    assert not list((out / ".stages").glob("*.partial"))


@pytest.mark.slow
def test_rerun_reuses_every_stage_but_export(first_run):
    """A run whose export did not finish (no manifest yet) redoes only the export."""
    folder, first = first_run
    out = _copy(first, folder / "no-manifest")
    (out / "manifest.json").unlink()
    (out / "train.jsonl").write_text("half a line")  # as a killed export leaves it
    before = marker_times(out)
    result = run(two_source_config(folder), out, progress=False)
    assert reused(result.manifest) == {"ingest": True, "clean": True, "dedup": True,
                                       "mix": True, "split": True, "export": False}
    assert marker_times(out) == before
    assert outputs(out) == outputs(first)
    manifest = check_contract(out)
    first_manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["counts"] == first_manifest["counts"]
    # Reused stages report the figures they recorded when they ran.
    for now, then in zip(manifest["stages"][:5], first_manifest["stages"][:5]):
        assert (now["rows"], now["rejected"]) == (then["rows"], then["rejected"])


@pytest.mark.slow
def test_changed_mix_reruns_mix_split_and_export_only(first_run):
    folder, first = first_run
    out = _copy(first, folder / "remixed")
    before = marker_times(out)
    config = two_source_config(folder)
    config.mix = MixConfig(strategy="resample", weights={"chat": 1, "wiki": 1}, total=300)
    result = run(config, out, progress=False)
    assert reused(result.manifest) == {"ingest": True, "clean": True, "dedup": True,
                                       "mix": False, "split": False, "export": False}
    after = marker_times(out)
    assert {s: after[s] == before[s] for s in STAGED} == {"clean": True, "dedup": True,
                                                          "mix": False, "split": False}
    assert marker(out, "mix")["key"] != marker(first, "mix")["key"]
    assert marker(out, "split")["key"] != marker(first, "split")["key"]
    manifest = check_contract(out)
    assert manifest["counts"]["kept"] == 300
    assert {n: s["after"] for n, s in manifest["mix"]["sources"].items()} == {"chat": 150,
                                                                             "wiki": 150}
    # And back: the first config again matches the first outputs, byte for byte.
    run(two_source_config(folder), out, progress=False)
    assert outputs(out) == outputs(first)


@pytest.mark.slow
def test_dedup_signs_again_when_its_signature_settings_change(first_run):
    """The clean stage stores each part's dedup signatures and dedup reuses them; under
    other n-grams dedup signs the stored rows itself, as a fresh run would."""
    folder, first = first_run
    assert list((first / ".stages" / "clean").glob("signatures-*.parquet"))
    assert not list((first / ".stages" / "dedup").glob("signatures-*.parquet"))
    config = two_source_config(folder)
    config.dedup.ngram = 4
    out = _copy(first, folder / "ngram4")
    result = run(config, out, progress=False)
    assert reused(result.manifest) == {"ingest": True, "clean": True, "dedup": False,
                                       "mix": False, "split": False, "export": False}
    assert list((out / ".stages" / "dedup").glob("signatures-*.parquet"))
    fresh = folder / "ngram4-fresh"
    run(config, fresh, progress=False)
    assert outputs(out) == outputs(fresh)
    assert json.loads((out / "manifest.json").read_text())["dedup"]["candidate_pairs"] == \
        json.loads((fresh / "manifest.json").read_text())["dedup"]["candidate_pairs"]


@pytest.mark.slow
def test_junk_partial_and_stale_marker_are_cleared(first_run):
    folder, first = first_run
    out = _copy(first, folder / "junk")
    (out / "manifest.json").unlink()  # the state a run killed mid-stage leaves behind
    stages = out / ".stages"
    junk = stages / "dedup.partial"
    junk.mkdir()
    (junk / "signatures-00000.parquet").write_bytes(b"not parquet")
    (junk / "_SUCCESS.json").write_text('{"key": "half-written')
    good_key = marker(first, "dedup")["key"]
    stale = marker(out, "dedup")
    stale["key"] = "0123456789abcdef0123"
    (stages / "dedup" / "_SUCCESS.json").write_text(json.dumps(stale))
    (stages / "dedup" / "decisions.parquet").write_bytes(b"stale decisions")
    result = run(two_source_config(folder), out, progress=False)
    flags = reused(result.manifest)
    assert flags["clean"] is True and flags["dedup"] is False
    assert marker(out, "dedup")["key"] == good_key
    assert not list(stages.glob("*.partial"))
    assert outputs(out) == outputs(first)
    check_contract(out)


# --- SIGKILL mid-stage --------------------------------------------------------------------------


def _start(out: str, cwd: Path, started: list[subprocess.Popen]) -> subprocess.Popen:
    """`tunesmith data run` in a session of its own (so all it starts can be found), output
    logged to OUT.log; local Ray (no RAY_ADDRESS)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(cwd / f"{out}.log", "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "data", "run", "--input",
                                 "in.jsonl", "--out", out, "--no-progress"], cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(proc)
    return proc


def _finish(proc: subprocess.Popen, cwd: Path, out: str) -> None:
    assert proc.wait(timeout=300) == 0, (cwd / f"{out}.log").read_text()[-3000:]


def _session_members(session: int) -> list[int]:
    """Live processes of session ``session``: a run started with start_new_session=True and
    everything it started. Ray workers put themselves in process groups of their own (so
    os.killpg misses them) but stay in the session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def _kill_session(session: int) -> None:
    """SIGKILLs, by pid, what is left in a run's session, and waits for it to go."""
    deadline = time.time() + 20
    while (left := _session_members(session)) and time.time() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_an_uninterrupted_run():
    # A short folder, so the runs keep Ray's temp dir inside it (`OUT/.ray`) and the killed
    # run's stale Ray session is there when the next run starts.
    base = Path(tempfile.mkdtemp(prefix="tsk", dir="/tmp"))
    started: list[subprocess.Popen] = []
    try:
        write_input(base / "in.jsonl", make_lines(20_000, seed=5))
        ref = _start("ref", base, started)  # the uninterrupted run, alongside
        proc = _start("k", base, started)
        stages = base / "k" / ".stages"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (stages / "dedup.partial").exists():  # clean is committed, dedup under way
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _kill_session(proc.pid)  # Ray's workers of the killed run
        assert not _session_members(proc.pid)
        assert (stages / "clean" / "_SUCCESS.json").exists()
        assert not (stages / "dedup").exists() and (stages / "dedup.partial").exists()
        assert not (base / "k" / "manifest.json").exists()
        _finish(ref, base, "ref")

        _finish(_start("k", base, started), base, "k")
        manifest = check_contract(base / "k")
        flags = reused(manifest)
        assert flags["clean"] is True and flags["dedup"] is False
        assert not list(stages.glob("*.partial"))
        assert outputs(base / "k") == outputs(base / "ref")
        ref_manifest = json.loads((base / "ref" / "manifest.json").read_text())
        assert manifest["counts"] == ref_manifest["counts"]
        assert manifest["counts"]["rejected"]["near_duplicate"] > 0
        assert manifest["counts"]["rejected"]["exact_duplicate"] > 0
    finally:
        for proc in started:  # whatever is left of any run, on any failure
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            _kill_session(proc.pid)
        shutil.rmtree(base, ignore_errors=True)
