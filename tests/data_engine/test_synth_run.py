"""`data run` with `synth:` and `judge:` blocks on a real local Ray and the real embedded
model: synthesized rows carry their provenance through the same filters and dedup, the
judge's columns reach the outputs, low scores are dropped with their reason, and changing
the judge re-runs the judge and what follows but not the synthesis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_engine.config import load_config
from data_engine.run import run
from data_engine.writers.outputs import REASONS

SAMPLE = Path(__file__).resolve().parents[2] / "data_engine" / "sample" / "data"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_config(path: Path, judge: str) -> Path:
    rows = path.parent / "rows.jsonl"
    if not rows.exists():  # a dozen clean seed rows keep the model work to a minute
        lines = (SAMPLE / "instructions_en.jsonl").read_text(encoding="utf-8").splitlines()
        rows.write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    path.write_text(f"""
inputs:
  - path: {rows}
engine: {{kind: transformers, model: default, device: cpu}}
synth:
  evol:
    rounds: 1
    max_seeds: 4
    rewrite: {{max_tokens: 64, temperature: 0.0}}
    answer: {{max_tokens: 64, temperature: 0.0}}
judge: {judge}
""", encoding="utf-8")
    return path


@pytest.mark.slow
def test_synth_and_judge_inside_data_run(ray_local, smollm2_dir, tmp_path):
    out = tmp_path / "out"
    # Every row is judged; a threshold above any score and no mass floor drops them all
    # unless they are unscored.
    config = load_config(write_config(tmp_path / "a.yaml",
                                      "{apply_to: all, threshold: 5.0, min_mass: 0.0}"))
    manifest = run(config, out, progress=False).manifest
    counts = manifest["counts"]
    assert counts["input"] == counts["kept"] - counts["repeats"] + sum(counts["rejected"].values())
    assert set(counts["rejected"]) == set(REASONS)

    synth = manifest["synth"]["generators"]["evol"]
    assert synth["made"] == 4 and synth["made"] == synth["kept"] + sum(
        synth["eliminated"].values())
    rejected = read_jsonl(out / "rejected.jsonl")
    evol_rows = [r for r in rejected if (r.get("row") or {}).get("origin") == "evol"]
    kept_rows = [r for s in ("train", "validation", "test") for r in read_jsonl(out / f"{s}.jsonl")]
    made = evol_rows + [r for r in kept_rows if r.get("origin") == "evol"]
    assert len(made) == 4  # every evolution is somewhere: kept, eliminated or dropped later
    for record in evol_rows:
        assert record["row"]["parent_id"] and record["row"]["generator"].startswith(
            "transformers:")
        assert record["stage"] in ("synth", "clean", "judge", "dedup")

    judge = manifest["judge"]
    assert judge["methods"] == {"logprobs": judge["judged"]}
    assert judge["judged"] == judge["scored"] > 0
    # Threshold 5 on a 1..5 expected score: every scored row is below it.
    assert judge["dropped"] == judge["scored"]
    low = [r for r in rejected if r["reason"] == "low_judge_score"]
    assert len(low) == judge["dropped"] and all(r["stage"] == "judge" for r in low)
    # each says the score that dropped it (it used to be only in .stages/judge/)
    assert all(1.0 <= r["judge_score"] < 5.0 and 0.0 < r["judge_mass"] <= 1.0 for r in low)
    assert counts["kept"] == 0
    # the report shows both stages: each generator's eliminations, the judge's scores
    assert sum(judge["score_histogram"].values()) == judge["scored"]
    assert all(1.0 <= float(bucket) <= 5.0 for bucket in judge["score_histogram"])
    assert 0.0 < judge["mean_mass"] <= 1.0
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Synthesis (" in report and "<h2>Judge</h2>" in report
    for reason in synth["eliminated"]:
        assert reason in report

    # A judge that drops nothing: rows keep their scores; the synthesis is reused. With
    # min_mass 1, every score is flagged as untrusted, and the rows say why.
    config = load_config(write_config(tmp_path / "b.yaml", "{apply_to: all, min_mass: 1.0}"))
    manifest = run(config, out, progress=False).manifest
    reused = {s["name"]: s["reused"] for s in manifest["stages"]}
    assert reused["synth"] and reused["clean"] and not reused["judge"]
    kept_rows = [r for s in ("train", "validation", "test") for r in read_jsonl(out / f"{s}.jsonl")]
    assert kept_rows and all(1.0 <= r["judge_score"] <= 5.0 and 0.0 < r["judge_mass"] <= 1.0
                             for r in kept_rows)
    assert manifest["counts"]["rejected"]["low_judge_score"] == 0
    # An evolution sits in its seed's split (35 of 54 did not: a test prompt, rewritten, in
    # train is the test prompt learnt).
    split_of = {r["id"]: s for s in ("train", "validation", "test")
                for r in read_jsonl(out / f"{s}.jsonl")}
    evolved = [r for r in kept_rows if r.get("origin") == "evol" and r["parent_id"] in split_of]
    assert all(split_of[r["id"]] == split_of[r["parent_id"]] for r in evolved)
    flagged = [r["judge_error"] for r in kept_rows if "judge_error" in r]
    assert manifest["judge"]["flagged"] >= len(flagged) == len(kept_rows)
    assert all(e.startswith("judge_low_mass: mass ") and e.endswith("< min_mass 1")
               for e in flagged)
    from datasets import load_from_disk

    hf = load_from_disk(str(out / "hf"))
    assert {"origin", "parent_id", "generator", "judge_score", "judge_mass",
            "judge_error"} <= set(hf["train"].column_names)
    assert set(hf["train"]["origin"]) <= {"seed", "evol"}


@pytest.mark.slow
def test_the_judge_runs_in_parts_and_reports_each(ray_local, smollm2_dir, tmp_path,
                                                  monkeypatch):
    """The judge stage was one actor call: no progress until every row was scored. The rows
    now go in parts, queued at once, each reported as it returns, the scores in row order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_engine.config import EngineConfig
    from data_engine.schema import MESSAGE_TYPE
    from data_engine.synth import stage
    from data_engine.synth.judge import JudgeConfig

    from .helpers import chat

    monkeypatch.setattr(stage, "JUDGE_PART_ROWS", 2)
    worker = stage.start_worker(EngineConfig(kind="transformers", model=str(smollm2_dir),
                                             device="cpu"))
    # The last row ends with a tool call: not scored, and its judge_error is stored too.
    call = chat("Weather in Paris?", "")
    call[1]["tool_calls"] = '[{"function": {"name": "get_weather", "arguments": "{}"}}]'
    rows = pa.table({
        "_idx": pa.array([10, 11, 12, 13, 14, 15], pa.int64()),
        "messages": pa.array([chat(f"What is {i} + {i}?", f"{2 * i}.") for i in range(5)]
                             + [call], pa.list_(MESSAGE_TYPE)),
        "origin": pa.nulls(6, pa.string())})
    seen = []
    facts = stage.run_judge(worker, rows, JudgeConfig(apply_to="all"), tmp_path,
                            on_part=lambda part: seen.append(part.column("_idx").to_pylist()))
    assert seen == [[10, 11], [12, 13], [14, 15]]
    assert (facts["judged"], facts["scored"], facts["methods"]) == (6, 5, {"logprobs": 5})
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.column("_idx").to_pylist() == [10, 11, 12, 13, 14, 15]
    assert all(1.0 <= s <= 5.0 for s in scores.column("judge_score").to_pylist()[:5])
    assert scores.column("judge_error").to_pylist()[5].startswith("tool_call_reply: ")
    seen.clear()
    facts = stage.run_judge(worker, rows.slice(0, 0), JudgeConfig(apply_to="all"), tmp_path,
                            on_part=lambda part: seen.append(part.num_rows))
    assert facts["judged"] == 0 and seen == [0]
    # vLLM's processor starts its actors (loading the model) per call: one call for all rows
    from types import SimpleNamespace

    assert not stage.ModelWorker.judges_in_parts(SimpleNamespace(engine=SimpleNamespace(
        kind="vllm")))


@pytest.mark.slow
def test_a_generator_reports_its_replies_while_it_runs(ray_local, smollm2_dir, tmp_path):
    """A generator is one actor call (every round of Evol-Instruct): the driver asks the
    worker for its replies so far while the call runs (the worker answers from a thread of
    its own), where it heard nothing before the generator's end."""
    import ray

    from data_engine.synth import stage
    from data_engine.synth.runner import read_rows

    config = load_config(write_config(tmp_path / "a.yaml", "null"))
    config.engine.batch_size = 1  # a reply at a time: the count moves within each round
    seeds, _ = read_rows(tmp_path / "rows.jsonl")
    tool_seed = {**seeds[0], "id": "with-tools",
                 "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    worker = stage.start_worker(config.engine)
    heard, logged = [], []
    facts = stage.run_synth(worker, config, [tool_seed] + seeds, 100, tmp_path, logged.append,
                            on_progress=lambda name, counts: heard.append((name, counts)),
                            poll_s=0.05)
    assert facts["generators"]["evol"]["made"] == 4
    # A seed offering tools is left out, and the log says so.
    assert facts["seeds_with_tools"] == 1
    assert logged[0].startswith("synth: 1 of 13 seed rows offer tools")
    assert len(heard) >= 3 and {name for name, _ in heard} == {"evol"}
    done = [counts["done"] for _, counts in heard]
    assert done == sorted(done) and done[-1] > done[0]
    # The rewrites (4 seeds), then the answers of the rewrites that passed: 2 calls. A poll
    # can land before the first (the generator still writing its prompts): nothing asked yet.
    assert all(0 <= c["done"] <= c["asked"] <= 8 and 0 <= c["calls"] <= 2
               and (c["calls"] or not c["asked"]) for _, c in heard)
    assert max(c["calls"] for _, c in heard) >= 1
    assert ray.get(worker.progress.remote()) is None  # no generator runs now


def test_the_report_counts_seeds_with_tools():
    from data_engine.writers.report import _synth_section

    synth = {"seeds": 10, "seeds_with_tools": 3,
             "generators": {"evol": {"made": 7, "kept": 5, "eliminated": {"evol_no_gain": 2}}}}
    html = "".join(_synth_section(synth, None))
    assert "seeds drawn from 10 kept rows" in html and "3 of those rows offer tools" in html
    assert "offer tools" not in "".join(_synth_section({**synth, "seeds_with_tools": 0}, None))
