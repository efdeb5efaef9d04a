"""`tunesmith pipeline run`: the whole chain on a scripted tiny model, a gate that stops it,
and --resume continuing from the first unfinished stage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TOPICS = ["tea", "rain", "maps", "bread", "owls", "trains", "snow", "ink", "kites", "soap",
          "clocks", "moss", "salt", "bells", "cranes", "dunes", "ferns", "glass", "honey",
          "jade", "lamps", "mint", "nets", "opals", "pears", "quilts", "reeds", "silk", "tides",
          "vines"]


@pytest.fixture
def pipeline_dir(tmp_path, polite_model_dir):
    rows = [{"id": f"r{i}", "messages": [
        {"role": "user", "content": f"Write one short sentence about {topic}, please."},
        {"role": "assistant", "content": f"Here is a thought on {topic}: it matters to many."}],
        "tags": ["json"]} for i, topic in enumerate(TOPICS)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "data.yaml").write_text("inputs:\n  - path: rows.jsonl\nclean:\n"
                                        "  languages: [en]\nseed: 0\n")
    (tmp_path / "train.yaml").write_text(
        f"base_model: {polite_model_dir}\nquantization: none\ntraining: {{max_steps: 2, "
        "per_device_batch: 2, grad_accum: 1, max_seq_len: 128, eval_every_steps: 1, "
        "learning_rate: 1.0e-3, gradient_checkpointing: false}\n")
    # "Hello there" is no JSON: this gate fails on the rows tagged json
    (tmp_path / "gate.yaml").write_text("usability_min: 0.95\njson_validity_min: 1.0\n")
    (tmp_path / "pipeline.yaml").write_text(
        "workdir: work\ndata: {config: data.yaml}\ntrain: {spec: train.yaml}\n"
        "eval: {max_tokens: 16, gate: gate.yaml}\nserve: {prompt: Say hello., max_tokens: 8}\n")
    return tmp_path


def _run(folder, *args):
    return subprocess.run([sys.executable, "-m", "tunesmith", "pipeline", "run",
                           str(folder / "pipeline.yaml"), *args], capture_output=True, text=True,
                          timeout=900, cwd=folder)


@pytest.mark.slow
def test_the_gate_stops_the_chain_and_resume_continues_from_there(pipeline_dir):
    failed = _run(pipeline_dir)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "eval: gate_failed" in failed.stderr and "JSON validity 0.000" in failed.stderr
    state = json.loads((pipeline_dir / "work" / "pipeline.json").read_text())
    stages = state["stages"]
    assert [stages[s]["status"] for s in ("data", "train", "eval", "serve")] == [
        "succeeded", "succeeded", "failed", "pending"]
    assert stages["eval"]["error"]["code"] == "gate_failed" and stages["eval"]["error"]["fix"]
    assert {c["name"] for c in stages["data"]["checks"]} == {"train_rows", "validation_rows",
                                                             "test_rows"}
    job_id = stages["train"]["outputs"]["job_id"]
    assert (pipeline_dir / "work" / "report.html").read_text().count("gate_failed") >= 1

    # the thresholds were wrong, not the model: fix them and continue
    (pipeline_dir / "gate.yaml").write_text("usability_min: 0.95\njson_validity_min: null\n")
    resumed = _run(pipeline_dir, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "[data] done in an earlier run, kept" in resumed.stderr
    assert "[train] done in an earlier run, kept" in resumed.stderr
    state = json.loads((pipeline_dir / "work" / "pipeline.json").read_text())
    assert state["status"] == "succeeded"
    assert state["stages"]["train"]["outputs"]["job_id"] == job_id  # not trained again
    serve = state["stages"]["serve"]
    assert serve["request"]["reply"].startswith("Hello")
    assert serve["checks"][0]["passed"]
    assert "summary:" in resumed.stdout and "eval report:" in resumed.stdout
    summary = (pipeline_dir / "work" / "report.html").read_text()
    assert 'href="eval/report.html"' in summary and 'href="data/report.html"' in summary


@pytest.mark.slow
def test_a_train_stage_that_leaves_no_model_stops_the_chain(pipeline_dir):
    train = pipeline_dir / "train.yaml"
    train.write_text(train.read_text() + "dry_run: true\n")  # preflight only: no model
    failed = _run(pipeline_dir)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "train: no_merged_model" in failed.stderr and "Traceback" not in failed.stderr
    stages = json.loads((pipeline_dir / "work" / "pipeline.json").read_text())["stages"]
    assert [stages[s]["status"] for s in ("data", "train", "eval")] == [
        "succeeded", "failed", "pending"]
    assert stages["train"]["error"]["fix"]


def test_a_bad_pipeline_file_lists_every_problem(tmp_path):
    (tmp_path / "pipeline.yaml").write_text("wrkdir: x\ndata: {config: nope.yaml}\n"
                                            "eval: {limt: 3}\n")
    done = _run(tmp_path)
    assert done.returncode == 2
    for text in ("wrkdir: unknown key", "data.config:", "train.spec: required",
                 "eval.limt: unknown key"):
        assert text in done.stderr


def test_a_bad_train_spec_fails_before_the_data_stage(tmp_path):
    """`lora: {r: 0}` stopped the chain after the data stage (93 s in the demo), and the
    fix then made --resume refuse: the data stage ran again for a typo in the spec."""
    (tmp_path / "data.yaml").write_text("inputs: [{path: rows.jsonl}]\n")
    (tmp_path / "train.yaml").write_text("base_model: default\nlora: {r: 0}\nepoch: 2\n")
    (tmp_path / "pipeline.yaml").write_text("data: {config: data.yaml}\n"
                                            "train: {spec: train.yaml}\n")
    done = _run(tmp_path)
    assert done.returncode == 2, done.stderr
    assert "bad_pipeline_file" in done.stderr and "lora.r: must be >= 1" in done.stderr
    assert "epoch: unknown key" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_eval_and_serve_settings_are_checked_before_anything_runs(tmp_path):
    """A typo in `eval.split` stopped the chain after data and training (exit 1), and the
    fix made --resume refuse (`pipeline_changed`): a full retrain for a typo."""
    from tunesmith.pipeline import PipelineConfig, digest, load_pipeline

    (tmp_path / "data.yaml").write_text("inputs: [{path: rows.jsonl}]\n")
    (tmp_path / "train.yaml").write_text("base_model: default\n")
    (tmp_path / "pipeline.yaml").write_text(
        "data: {config: data.yaml}\ntrain: {spec: train.yaml}\n"
        "eval: {split: tset, limit: 0, backend: vlm, judge: nonsense, "
        "gate: {usability_min: 2, ppl_max_ratoi: 1.1}}\n"
        "serve: {backend: tranformers, max_tokens: 0}\n")
    done = _run(tmp_path)
    assert done.returncode == 2, done.stderr
    for text in ("eval.split: 'tset' is not one of train, validation, test",
                 "eval.limit: 0 is below 1", "eval.backend: 'vlm' is not one of",
                 "eval.judge: 'nonsense' is not KIND:MODEL", "eval.gate.usability_min:",
                 "eval.gate.ppl_max_ratoi: unknown key", "serve.backend: 'tranformers'",
                 "serve.max_tokens: 0 is below 1"):
        assert text in done.stderr, (text, done.stderr)
    assert not (tmp_path / "runs").exists()  # nothing ran

    (tmp_path / "pipeline.yaml").write_text(
        "data: {config: data.yaml}\ntrain: {spec: train.yaml}\neval: {gate: nope.yaml}\n")
    done = _run(tmp_path)
    assert done.returncode == 2 and "eval.gate: cannot read:" in done.stderr, done.stderr

    # a baseline folder is relative to the pipeline file, as every other path
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "pipeline.yaml").write_text(
        "data: {config: data.yaml}\ntrain: {spec: train.yaml}\n"
        "eval: {baseline: models/base, split: test}\n")
    config = load_pipeline(tmp_path / "pipeline.yaml")
    assert config.eval.baseline == str(tmp_path / "models" / "base")
    # fixing eval (or serve) settings keeps what data and training made
    before = digest(config)
    config.eval.split, config.eval.gate, config.serve.max_tokens = "validation", {"x": 1}, 3
    assert digest(config) == before
    config.train.timeout_s = 60.0
    assert digest(config) != before and isinstance(config, PipelineConfig)


def test_resume_refuses_when_a_data_file_changed(tmp_path):
    """Rows fixed after a failed gate: every stage said "done in an earlier run, kept" and
    the chain passed on a model trained on the old rows."""
    from tunesmith.pipeline import PIPELINE_JSON, Chain, PipelineError, digest, digests, \
        load_pipeline

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a?", "completion": "b."}\n')
    (tmp_path / "data.yaml").write_text("inputs: [{path: rows.jsonl}]\n")
    (tmp_path / "train.yaml").write_text("base_model: default\n")
    (tmp_path / "pipeline.yaml").write_text("data: {config: data.yaml}\n"
                                            "train: {spec: train.yaml}\n")
    config = load_pipeline(tmp_path / "pipeline.yaml")
    before = digests(config)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / PIPELINE_JSON).write_text(json.dumps({
        "digest": digest(config, before), "digests": before,
        "stages": {"data": {"status": "succeeded"}}}))
    Chain(config, tmp_path / "pipeline.yaml", workdir, True, print)  # unchanged: resumes
    rows.write_text('{"prompt": "a?", "completion": "a better b."}\n')
    after = digests(config)
    assert [k for k in after if after[k] != before[k]] == ["data files"]
    with pytest.raises(PipelineError) as refused:
        Chain(config, tmp_path / "pipeline.yaml", workdir, True, print)
    assert refused.value.code == "pipeline_changed"
    assert refused.value.message == "changed since the stopped run: data files"


def test_the_bundled_demo_pipeline_is_valid():
    """`tunesmith demo` runs this file: its data config and training spec must load."""
    from importlib import resources
    from pathlib import Path

    from data_engine.config import load_config
    from trainer_service.jobs.validate import to_train_spec
    from tunesmith.pipeline import load_pipeline, train_spec

    path = Path(str(resources.files("tunesmith").joinpath("demo", "pipeline.yaml")))
    config = load_pipeline(path)
    data = load_config(config.path(config.data.config), [], None)
    assert data.synth.evol is not None and data.judge is not None
    assert all(Path(i.path).is_file() for i in data.inputs)
    spec, _ = train_spec(config, str(path.parent))
    assert spec.base_model and Path(spec.base_model).is_dir()
    # QLoRA for one epoch: the recipe's defaults, which the demo shows rather than overrides
    recipe = to_train_spec(spec)
    assert recipe.quantization == "nf4" and recipe.training.max_steps is None
    assert recipe.training.epochs == 1


@pytest.mark.slow
@pytest.mark.demo
def test_the_demo_runs_the_whole_chain_and_the_model_learns_to_stop(tmp_path):
    """`tunesmith demo` itself (4-7 minutes on 2 cores; `make test-demo`): every stage
    passes, the planted defects are rejected, the fine-tune stops on every held-out prompt
    and beats the base model's perplexity, and the served model answers with a title."""
    done = subprocess.run([sys.executable, "-m", "tunesmith", "demo", "--workdir",
                           str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    chain = json.loads((tmp_path / "demo" / "pipeline.json").read_text())
    assert chain["status"] == "succeeded"
    stages = chain["stages"]
    assert all(stages[name]["status"] == "succeeded" for name in ("data", "train", "eval",
                                                                  "serve"))
    rejected = stages["data"]["counts"]["rejected"]
    for reason in ("tag_list", "degenerate_repetition", "exact_duplicate", "near_duplicate"):
        assert rejected.get(reason, 0) > 0, reason
    run = json.loads(open(stages["train"]["outputs"]["run"]).read())
    assert run["spec"]["quantization"] == "nf4"
    verify = json.loads(open(stages["train"]["outputs"]["verify"]).read())
    assert verify["sanity"]["stop_rate"] == 1.0 and verify["sanity"]["degenerate"] == 0
    metrics = json.loads(open(stages["eval"]["outputs"]["metrics"]).read())
    assert all(check["passed"] for check in stages["eval"]["checks"])
    assert metrics["gate"]["passed"] and metrics["perplexity"]["ratio"] < 1.0
    reply = stages["serve"]["request"]
    assert reply["finish_reason"] == "stop" and 0 < len(reply["reply"]) <= 120
    for line in ("data report:", "train report:", "eval report:", "pipeline:", "summary:"):
        assert line in done.stdout, line
