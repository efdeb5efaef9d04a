"""`tunesmith synth ...` and `tunesmith judge` from a subprocess, on the real embedded model:
kept and eliminated rows land in their files with provenance and reasons; bad input and
bad config fail with a message and exit code 2, before any model loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("tunesmith"))
SAMPLE = Path(__file__).resolve().parents[2] / "data_engine" / "sample" / "data"


def tunesmith(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_synth_evol_writes_kept_and_eliminated_rows(smollm2_dir, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    lines = (SAMPLE / "instructions_en.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    seeds.write_text("\n".join(lines) + "\n{not json\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text("synth:\n  evol: {rounds: 1, rewrite: {max_tokens: 48, temperature: 0.0},"
                      " answer: {max_tokens: 48, temperature: 0.0}}\n", encoding="utf-8")
    done = tunesmith("synth", "evol", "--input", str(seeds), "--out", "out/evol.jsonl",
                     "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "skipped unreadable rows: {'malformed_json': 1}" in done.stderr
    kept = read_jsonl(tmp_path / "out" / "evol.jsonl")
    eliminated = read_jsonl(tmp_path / "out" / "evol.rejected.jsonl")
    assert len(kept) + len(eliminated) == 2  # one evolution per readable seed, 1 round
    from data_engine.synth.runner import read_rows

    parents = {row["id"] for row in read_rows(seeds)[0]}  # ids the readers derive
    assert len(parents) == 2
    for row in kept + eliminated:
        assert row["origin"] == "evol" and row["parent_id"] in parents
        assert row["generator"].startswith("transformers:")
    assert all(r["reason"] and "detail" in r for r in eliminated)
    assert f"{len(kept)} kept" in done.stdout
    # The replies it made: the 2 rewrites, then (a second call) the answers of those that
    # passed its checks.
    made = re.search(r"progress: evol (\d+)/(\d+) replies \(call (\d)\)", done.stderr)
    assert made, done.stderr
    replies, asked, calls = map(int, made.groups())
    assert replies == asked and (replies, calls) in ((2, 1), (3, 2), (4, 2))


def test_an_out_that_is_a_folder_fails_before_the_engine_runs(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    (tmp_path / "results").mkdir()
    dead = ["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    for command in (["judge", "--all"], ["synth", "evol"]):
        done = tunesmith(*command, "--input", str(rows), "--out", "results", *dead,
                         cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "--out: results: is a folder; name the JSONL file to write" in done.stderr
    same = tunesmith("judge", "--all", "--input", str(rows), "--out", "a.jsonl", "--rejected",
                     "a.jsonl", *dead, cwd=tmp_path)
    assert same.returncode == 2 and "--out and --rejected name the same file" in same.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "rows.jsonl"]


def test_seeds_with_tools_are_left_out_and_all_of_them_is_an_error(tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Weather in city {i}?"},
        {"role": "assistant", "content": "Sunny."}], "tools": tools}) + "\n" for i in range(2)),
        encoding="utf-8")
    done = tunesmith("synth", "evol", "--input", str(seeds), "--out", "evol.jsonl",
                     "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1",
                     "--model", "m", cwd=tmp_path)
    assert done.returncode == 2
    assert "2 of 2 rows offer tools or hold tool calls; evol leaves them out" in done.stderr
    assert not (tmp_path / "evol.jsonl").exists()


@pytest.mark.slow
def test_judge_scores_rows_and_applies_the_threshold(smollm2_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "origin": "evol", "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "2+2 equals 4."}]},
        {"id": "b", "messages": [
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "Apple."}]},
    ]) + "\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text("judge: {min_mass: 0.0}\n", encoding="utf-8")
    done = tunesmith("judge", "--input", str(rows), "--out", "judged.jsonl", "--all",
                     "--threshold", "5", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "progress: judge 2/2 rows" in done.stderr
    dropped = read_jsonl(tmp_path / "judged.rejected.jsonl")
    # A 1..5 expected score is below 5 unless every bit of probability sits on "5".
    assert {r["id"] for r in dropped} == {"a", "b"}
    for row in dropped:
        assert row["reason"] == "low_judge_score" and row["judge_method"] == "logprobs"
        assert 1.0 <= row["judge_score"] < 5.0 and 0.0 < row["judge_mass"] <= 1.0
    assert dropped[0]["origin"] == "evol"  # provenance read back from the input row

    # Without --all only synthesized rows are judged; the seed row keeps null scores.
    done = tunesmith("judge", "--input", str(rows), "--out", "judged.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    kept = {r["id"]: r for r in read_jsonl(tmp_path / "judged.jsonl")}
    assert kept["b"]["judge_score"] is None and kept["a"]["judge_score"] is not None


def test_bad_config_fails_before_a_model_loads(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text("judge: {scale: 7}\nengine: {kind: openai}\n", encoding="utf-8")
    done = tunesmith("judge", "--input", str(rows), "--out", "j.jsonl", "--config", str(config),
                     cwd=tmp_path)
    assert done.returncode == 2
    assert "judge.scale" in done.stderr and "engine.base_url" in done.stderr
    assert not (tmp_path / "j.jsonl").exists()
    # only seed rows and no --all: nothing to judge, said before the model loads
    done = tunesmith("judge", "--input", str(rows), "--out", "j.jsonl", "--model",
                     str(tmp_path / "no-model"), cwd=tmp_path)
    assert done.returncode == 2 and "pass --all to judge them" in done.stderr, done.stderr
    done = tunesmith("synth", "evol", "--input", str(tmp_path / "missing.jsonl"), "--out",
                     "e.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and "missing.jsonl" in done.stderr
    # an unknown generator, from Python: a ConfigError before any engine is built
    from data_engine.config import DataConfig
    from data_engine.errors import ConfigError
    from data_engine.synth.runner import run_generator

    with pytest.raises(ConfigError, match="'evolve' is not one of evol, craft"):
        run_generator("evolve", DataConfig(), lambda: pytest.fail("no engine is built"))


def test_judge_rows_go_in_parts_in_order(smollm2_dir, monkeypatch):
    """`tunesmith judge` judged every row in one call, with nothing shown until the end."""
    from data_engine.config import DataConfig, EngineConfig
    from data_engine.engines import build_engine
    from data_engine.synth import stage
    from data_engine.synth.runner import judge_rows

    monkeypatch.setattr(stage, "JUDGE_PART_ROWS", 2)
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                        {"role": "assistant", "content": f"{i + 1}."}]}
            for i in range(5)]
    heard = []
    judged = judge_rows(rows, DataConfig(), lambda: build_engine(EngineConfig(
        kind="transformers", model=str(smollm2_dir), device="cpu")), apply_to="all",
        progress=lambda done, total: heard.append((done, total)))
    assert heard == [(2, 5), (4, 5), (5, 5)]
    assert [r["id"] for r in judged] == ["0", "1", "2", "3", "4"]
    assert all(r["judge_method"] == "logprobs" for r in judged)
