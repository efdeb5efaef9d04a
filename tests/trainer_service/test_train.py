"""QLoRA SFT on a tiny random-weight Llama with the real SmolLM2 tokenizer, on CPU, in nf4."""

from __future__ import annotations

import copy
import json

import pytest

from trainer_service.recipe.metrics import EvalPoint, overfitting_alarm, read_metrics
from trainer_service.recipe.spec import load_spec
from trainer_service.recipe.train import (TrainError, finished_result, last_span_only, read_split,
                                          tokenize_rows, train)

# A minimal ChatML training template: only assistant content and its <|im_end|> carry loss.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
          "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}"
          "{% endgeneration %}{{ '\n' }}{% else %}{{ m['content'] + '<|im_end|>\n' }}{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _rows(n, answer, offset=0):
    return [{"messages": [{"role": "user", "content": f"Say the colour number {i + offset}"},
                          {"role": "assistant", "content": answer}]} for i in range(n)]


def _write(folder, train_rows, val_rows):
    folder.mkdir()
    for name, rows in (("train", train_rows), ("validation", val_rows)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def tiny_llama(folder, tied: bool = True, dtype=None):
    """A random 2-layer Llama speaking SmolLM2's vocabulary, saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models import fetch_default

    tok = AutoTokenizer.from_pretrained(fetch_default())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=tied)
    LlamaForCausalLM(cfg).to(dtype or torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _spec(model, dataset, **training):
    base = {"learning_rate": 2e-2, "per_device_batch": 2, "grad_accum": 1, "max_seq_len": 64,
            "gradient_checkpointing": False, "warmup_ratio": 0.0, "logging_steps": 2}
    return load_spec(None, {"base_model": str(model), "dataset": str(dataset),
                            "training": {**base, **training}})


def test_overfitting_alarm_on_synthetic_history():
    healthy = [EvalPoint(s, t, e) for s, t, e in [(10, 2.0, 2.1), (20, 1.6, 1.8), (30, 1.4, 1.7)]]
    assert overfitting_alarm(healthy, patience=2, train_loss_floor=0.3) is None
    rising = healthy + [EvalPoint(40, 1.2, 1.75), EvalPoint(50, 1.0, 1.9)]
    assert "rose for 2 evaluations" in overfitting_alarm(rising, 2, 0.3)
    # eval rising but train rising too: a bad LR, not overfitting
    both_up = healthy + [EvalPoint(40, 1.5, 1.75), EvalPoint(50, 1.6, 1.9)]
    assert overfitting_alarm(both_up, 2, 0.3) is None
    # the failed run's shape: train loss collapsing below 0.3 while the gap widens
    collapse = [EvalPoint(10, 0.5, 1.0), EvalPoint(20, 0.25, 1.0)]
    assert "< 0.3" in overfitting_alarm(collapse, 3, 0.3)
    assert overfitting_alarm([EvalPoint(10, 0.5, 0.9), EvalPoint(20, 0.25, 0.6)], 3, 0.3) is None
    # train loss low and the gap widening, but eval loss still improving: not yet
    improving = [EvalPoint(10, 0.407, 0.127), EvalPoint(20, 0.069, 0.082)]
    assert overfitting_alarm(improving, 3, 0.3) is None
    # ... and once eval loss stops improving, the alarm
    stalled = improving + [EvalPoint(30, 0.02, 0.09)]
    assert "no better than its best (0.0820)" in overfitting_alarm(stalled, 3, 0.3)


def test_overfitting_window_survives_a_resume():
    """Evaluations before the checkpoint count after a resume: two rising evaluations before
    it and one after make the three that raise the alarm."""
    from transformers import TrainerControl, TrainerState

    from trainer_service.recipe.metrics import OverfittingCallback

    state = TrainerState()
    state.log_history = [{"loss": 1.4, "step": 10}, {"eval_loss": 1.70, "step": 10},
                         {"loss": 1.3, "step": 20}, {"eval_loss": 1.75, "step": 20},
                         {"loss": 1.2, "step": 30}, {"eval_loss": 1.80, "step": 30}]
    state.global_step = 40
    alarm = OverfittingCallback(patience=3, train_loss_floor=0.3, log=lambda _: None)
    control = TrainerControl()
    alarm.on_train_begin(None, state, control)
    assert [p.step for p in alarm.history] == [10, 20, 30]
    alarm.on_log(None, state, control, logs={"loss": 1.1})
    alarm.on_evaluate(None, state, control, metrics={"eval_loss": 1.85})
    assert control.should_training_stop and "rose for 3 evaluations" in alarm.warnings[0]


def test_the_closing_evaluation_raises_no_alarm():
    """Eval loss fell at every evaluation (0.4945, 0.2025, 0.1533); the closing summary
    evaluation of the reloaded best checkpoint read 0.1536, and the alarm took it for one
    more evaluation: "overfitting ... no better than its best"."""
    from types import SimpleNamespace

    from trainer_service.recipe.metrics import OverfittingCallback

    alarm = OverfittingCallback(patience=3, train_loss_floor=0.3, log=lambda _: None)
    control = SimpleNamespace(should_training_stop=False)
    alarm.on_train_begin(None, SimpleNamespace(log_history=[]), control)
    for step, train_loss, eval_loss in [(2, 1.0355, 0.4945), (4, 0.2711, 0.2025),
                                        (6, 0.0940, 0.1533), (6, 0.0940, 0.1536)]:
        alarm.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": train_loss})
        alarm.on_evaluate(None, SimpleNamespace(global_step=step), control,
                          metrics={"eval_loss": eval_loss})
    assert alarm.warnings == [] and not control.should_training_stop
    assert [p.step for p in alarm.history] == [2, 4, 6]


@pytest.mark.parametrize("items, batch, accum, epochs, max_steps", [
    (1, 2, 8, 1.0, None), (47, 2, 8, 1.0, None), (48, 2, 8, 1.0, None), (49, 2, 8, 2.0, None),
    (100, 3, 4, 0.5, None), (5, 2, 8, 1.0, 7)])
def test_planned_steps_count_as_transformers_does(tiny_model, items, batch, accum, epochs,
                                                  max_steps, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from trainer_service.recipe.spec import TrainingSpec

    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model),
                      args=TrainingArguments(str(tmp_path), per_device_train_batch_size=batch,
                                             gradient_accumulation_steps=accum,
                                             num_train_epochs=epochs, use_cpu=True,
                                             max_steps=max_steps or -1, report_to="none"),
                      train_dataset=Dataset.from_dict({"input_ids": [[1, 2]] * items}))
    *_, expected = trainer.set_initial_training_values(trainer.args,
                                                       trainer.get_train_dataloader())
    t = TrainingSpec(per_device_batch=batch, grad_accum=accum, epochs=epochs,
                     max_steps=max_steps)
    assert t.planned_steps(items) == expected


@pytest.mark.parametrize("packing", [True, False])
def test_preflight_plans_the_items_the_trainer_gets(tiny_model, packing, tmp_path):
    """Preflight's plan counts what SFTTrainer makes of the rows: packed blocks (best fit,
    rows cut to max_seq_len, batch by batch of 1,000 rows), or the rows left with a
    supervised token after truncation. 2,300 rows of 2-80 words at max_seq_len 128, 1 in 20
    with a 150-word prompt, cut and left with no supervised token."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from trainer_service.recipe.chat_format import resolve_template
    from trainer_service.recipe.preflight import run_preflight
    from trainer_service.recipe.spec import TrainingSpec
    from trainer_service.recipe.train import build_recipe

    rng = random.Random(7)
    rows = [[{"role": "user", "content": " ".join(["ask"] * (
                 150 if rng.random() < 0.05 else rng.randint(1, 60)))},
             {"role": "assistant", "content": " ".join(["so"] * rng.randint(1, 20))}]
            for _ in range(2300)]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = CHATML
    template = resolve_template(tok, "auto")
    training = TrainingSpec(max_seq_len=128, packing=packing, per_device_batch=2, grad_accum=4,
                            eval_every_steps=1000)
    report = run_preflight(tok, AutoModelForCausalLM.from_pretrained(tiny_model).config, rows,
                           rows[:4], template, "all_assistant", 999, training=training)
    assert report.truncated_rows > 0
    spec = load_spec(None, {"base_model": str(tiny_model), "dataset": str(tmp_path),
                            "quantization": "none", "training": vars(training)})
    recipe = build_recipe(spec, tmp_path / "out", use_cpu=True, has_validation=True)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model),
                         args=recipe.sft, train_dataset=tokenize_rows(tok, rows, "all_assistant"),
                         eval_dataset=tokenize_rows(tok, rows[:4], "all_assistant"),
                         processing_class=tok)
    plan = report.plan
    assert plan["train_items"] == len(trainer.train_dataset)
    assert plan["unit"] == ("packed block" if packing else "row")
    *_, steps = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())
    assert plan["optimizer_steps"] == steps
    assert plan["evaluations"] == 1  # eval_every_steps is beyond the run: at the end only
    assert any(w.startswith("training.eval_every_steps: 1000 > the run's") for w in
               report.warnings)
    if packing:
        assert len(trainer.train_dataset) < 2300 / 2
        real = sum(sum(block) for block in trainer.train_dataset["seq_lengths"])
        assert report.packing_efficiency == pytest.approx(real / (len(trainer.train_dataset) * 128))
    else:
        assert 0 < 2300 - len(trainer.train_dataset) < 2300


def test_train_accepts_the_generation_markers_preflight_accepts(tiny_model):
    """`{%- generation -%}` (whitespace control) marks assistant tokens as well as
    `{% generation %}`; preflight's check and training's agree."""
    from trainer_service.recipe.train import _resolve_template

    spec = _spec(tiny_model, tiny_model)
    trimmed = CHATML.replace("{% generation %}", "{%- generation -%}")
    assert _resolve_template(spec, None, trimmed) == trimmed
    with pytest.raises(TrainError) as err:
        _resolve_template(spec, None, "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert err.value.code == "template_without_generation"


def test_last_span_only_keeps_final_reply():
    assert last_span_only([0, 1, 1, 0, 0, 1, 1, 0]) == [0, 0, 0, 0, 0, 1, 1, 0]
    assert last_span_only([0, 0]) == [0, 0]


def test_masks_cover_assistant_and_end_of_turn_only(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = CHATML
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "two"}]
    for loss_on, expected in (("all_assistant", "one<|im_end|>two<|im_end|>"),
                              ("last_assistant", "two<|im_end|>")):
        row = tokenize_rows(tok, [conv], loss_on)[0]
        kept = [i for i, m in zip(row["input_ids"], row["assistant_masks"]) if m]
        assert tok.decode(kept) == expected
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(TrainError):
        tokenize_rows(tok, [conv], "all_assistant")


@pytest.mark.parametrize("loss_on", ["all_assistant", "last_assistant"])
def test_training_rows_are_the_rows_preflight_checked(loss_on):
    """The ids and mask that train equal preflight's for every kind of row, tool calls stored
    as the data engine stores them (JSON strings) included."""
    from tests.trainer_service.test_chat_format import (MULTI_TURN, TOOL_ROW, TOOLS,
                                                        WITH_SYSTEM, smol_tokenizer)
    from trainer_service.recipe.chat_format import encode_row, resolve_template

    tok = smol_tokenizer()
    template = resolve_template(tok, "auto")
    tok = copy.copy(tok)
    tok.chat_template = template.text
    rows = [(MULTI_TURN, None), (WITH_SYSTEM, None), (TOOL_ROW, None), (TOOL_ROW, TOOLS)]
    trained = tokenize_rows(tok, read_split_like(rows), loss_on)
    for row, (messages, tools) in zip(trained, rows):
        checked = encode_row(tok, template, messages, loss_on, tools)
        assert row["input_ids"] == checked.input_ids
        assert row["assistant_masks"] == checked.mask == checked.expected_mask
    # the tools' definitions are in what trains (prompt tokens, outside the mask)
    assert len(trained[3]["input_ids"]) > len(trained[2]["input_ids"]) + 30
    assert "Weather for a city." in tok.decode(trained[3]["input_ids"])


def read_split_like(rows):
    """Rows as read_split returns them: null fields dropped, tools when offered."""
    out = []
    for messages, tools in rows:
        row = {"messages": [{k: v for k, v in m.items() if v is not None} for m in messages]}
        out.append(dict(row, tools=tools) if tools else row)
    return out


def test_read_split_keeps_tools_and_refuses_bad_ones(tmp_path):
    from tests.trainer_service.test_chat_format import TOOL_ROW, TOOLS

    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": 7, "messages": TOOL_ROW, "tools": TOOLS, "source": "s"},
        {"messages": [dict(m, reasoning_content=None) for m in TOOL_ROW]}]) + "\n")
    rows = read_split(tmp_path, "train")
    assert rows[0] == {"id": "7", "messages": [{k: v for k, v in m.items() if v is not None}
                                                for m in TOOL_ROW], "tools": TOOLS}
    assert set(rows[1]) == {"messages"} and "reasoning_content" not in rows[1]["messages"][0]
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": TOOL_ROW, "tools": "x"}))
    with pytest.raises(TrainError) as err:
        read_split(tmp_path, "train")
    assert err.value.code == "dataset_row_invalid" and "train.jsonl:1: `tools`" in err.value.message


def test_read_split_splits_lines_at_newlines_only(tmp_path):
    """JSON writers that keep non-ASCII text (`ensure_ascii=False`) leave U+2028 and U+2029
    raw, which `str.splitlines` also breaks at: such a row failed `dataset_row_invalid`."""
    rows = [{"messages": [{"role": "user", "content": "a\u2028b"},
                          {"role": "assistant", "content": "c\u2029d\x85e"}]}]
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows * 2), encoding="utf-8")
    assert read_split(tmp_path, "train") == rows * 2


def test_train_loss_falls_metrics_report_and_resume(tiny_model, tmp_path):
    data = _write(tmp_path / "ds", _rows(48, "blue blue blue"), _rows(8, "blue blue blue", 1000))
    run = tmp_path / "run"
    result = train(_spec(tiny_model, data, max_steps=8, eval_every_steps=4), run,
                   chat_template=CHATML, log=lambda m: None)
    rows = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    evals = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    assert [r["step"] for r in rows if r["loss"] is not None] == [2, 4, 6, 8]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert losses[-1] < losses[0] - 0.3, losses
    for r in rows:
        assert {"step", "epoch", "loss", "eval_loss", "learning_rate", "tokens_per_s",
                "memory_mb"} <= set(r)
    assert all(r["tokens_per_s"] > 0 for r in rows if r["loss"] is not None)
    assert result.global_step == 8 and not result.stopped_early
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert "data:image/png;base64," in (run / "report.html").read_text()
    assert result.best_eval_loss == pytest.approx(min(evals))

    # A rerun after training finished (an interruption in merge or verify) reuses it.
    logged: list[str] = []
    done = train(_spec(tiny_model, data, max_steps=8, eval_every_steps=4), run,
                 chat_template=CHATML, log=logged.append)
    assert done.global_step == 8 and done.adapter_dir == result.adapter_dir
    assert "training already finished" in logged[0]
    assert read_metrics(run / "metrics.jsonl") == rows
    # ...but not for another spec.
    assert finished_result(_spec(tiny_model, data, max_steps=6, eval_every_steps=4),
                           run) is None

    # Killed while saving step 8: its folder is there without trainer_state.json (written
    # last), and no finished marker. The rerun skips the cut-short folder (every rerun
    # failed on it with FileNotFoundError) and continues from step 4.
    (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").unlink()
    (run / "train_result.json").unlink()
    resumed = train(_spec(tiny_model, data, max_steps=8, eval_every_steps=4), run,
                    chat_template=CHATML, log=lambda m: None)
    assert resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.global_step == 8
    again = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in again if r["loss"] is not None] == [2, 4, 6, 8]
    # same data order and schedule: steps 6 and 8 repeat the uninterrupted run
    after = [r for r in again if r["loss"] is not None and r["step"] > 4]
    before = [r for r in rows if r["loss"] is not None and r["step"] > 4]
    for a, b in zip(after, before):
        assert a["learning_rate"] == pytest.approx(b["learning_rate"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)

    # The same folder under another spec: its checkpoints belong to the first run. Resumed,
    # they would keep its step count and schedule (a new learning rate ignored), so the run
    # stops before loading anything and says what differs.
    with pytest.raises(TrainError) as err:
        train(_spec(tiny_model, data, max_steps=8, eval_every_steps=4, learning_rate=1e-3), run,
              chat_template=CHATML, log=lambda m: None)
    assert err.value.code == "run_dir_in_use" and err.value.field == "out"
    assert "training.learning_rate (0.02 -> 0.001)" in err.value.message
    # ...while what comes after training (the export) is no reason to train again
    spec = _spec(tiny_model, data, max_steps=8, eval_every_steps=4)
    spec.export.gguf = ["f16"]
    assert finished_result(spec, run).global_step == 8

    # The dataset rewritten under the run (a drained job resumed after its folder was
    # replaced trained its last steps on other rows and ended SUCCEEDED): the finished
    # training is not reused, and its checkpoints do not resume on other rows.
    original = (data / "train.jsonl").read_bytes()
    (data / "train.jsonl").write_bytes(original + original[:original.index(b"\n") + 1])
    assert finished_result(_spec(tiny_model, data, max_steps=8, eval_every_steps=4), run) is None
    with pytest.raises(TrainError) as err:
        train(_spec(tiny_model, data, max_steps=8, eval_every_steps=4), run,
              chat_template=CHATML, log=lambda m: None)
    assert err.value.code == "dataset_changed" and err.value.field == "dataset"
    assert "train.jsonl (sha256 " in err.value.message
    (data / "train.jsonl").write_bytes(original)
    assert finished_result(_spec(tiny_model, data, max_steps=8, eval_every_steps=4),
                           run).global_step == 8


@pytest.mark.parametrize("quantization, layers", [("nf4", 14), ("int8", 14), ("none", 0)])
def test_each_quantization_trains_on_cpu(tiny_model, tmp_path, quantization, layers):
    """The base really is quantized as asked (2 layers x 7 linear; the tied head stays
    16-bit), and LoRA on it learns: train and eval loss fall within 8 steps."""
    data = _write(tmp_path / "ds", _rows(48, "blue blue blue"), _rows(8, "blue blue blue", 1000))
    spec = _spec(tiny_model, data, max_steps=8, eval_every_steps=4)
    spec.quantization = quantization
    logged: list[str] = []
    train(spec, tmp_path / "run", chat_template=CHATML, log=logged.append)
    assert f"base: {quantization}, {layers} bitsandbytes linear layers, CPU" in logged
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    evals = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    assert losses[-1] < losses[0] - 0.3 and evals[-1] < evals[0], (losses, evals)


def test_early_stopping_keeps_best_checkpoint(tiny_model, tmp_path):
    # Validation answers differ from train's: learning "blue" makes them less likely.
    data = _write(tmp_path / "ds", _rows(48, "blue blue blue"),
                  _rows(8, "red green yellow", 1000))
    result = train(_spec(tiny_model, data, max_steps=12, eval_every_steps=2,
                         early_stopping_patience=2), tmp_path / "run",
                   chat_template=CHATML, log=lambda m: None)
    evals = [(r["step"], r["eval_loss"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["eval_loss"] is not None]
    best_step = min(evals, key=lambda p: p[1])[0]
    assert result.stopped_early and result.global_step < 12
    assert result.best_checkpoint.endswith(f"checkpoint-{best_step}")
    # the model returned is the best one, not the last one
    assert result.final_metrics["eval_loss"] == pytest.approx(result.best_eval_loss, rel=1e-3)
    assert result.final_metrics["eval_loss"] < evals[-1][1]


def test_missing_validation_is_refused(tiny_model, tmp_path):
    data = tmp_path / "ds"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(_rows(1, "x")[0]) + "\n")
    with pytest.raises(TrainError, match="validation") as err:
        train(_spec(tiny_model, data, max_steps=1), tmp_path / "run", chat_template=CHATML)
    # one error family: a stable code, the field and the fix, as run.json records them
    from trainer_service.recipe.errors import RecipeError

    assert isinstance(err.value, RecipeError)
    assert err.value.to_json() == {"code": "no_validation", "message": err.value.message,
                                   "field": "dataset", "fix": err.value.fix}
    assert "allow_no_validation" in err.value.fix


def test_overfitting_alarm_stops_a_real_run_at_its_best_checkpoint(smollm2_dir, tmp_path):
    """SmolLM2-135M learns 16 capitals; validation asks for 8 of the same countries and
    answers with the wrong cities. Train loss collapses while eval loss turns and rises: the
    alarm (train loss under 0.3, the gap widening, eval loss no better than its best) stops
    the run, which ends at its best checkpoint. Early stopping's patience is set beyond the
    run, so only the alarm can stop it."""
    from tests.trainer_service.test_recipe_run import CAPITALS

    def rows(pairs, shift):
        return [{"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                              {"role": "assistant", "content": pairs[(i + shift) % len(pairs)][1]}]}
                for i, (country, _) in enumerate(pairs)]

    data = _write(tmp_path / "ds", rows(CAPITALS[:16], 0), rows(CAPITALS[:8], 1))
    spec = load_spec(None, {"base_model": str(smollm2_dir), "dataset": str(data),
                            "quantization": "none", "training": {
                                "learning_rate": 1e-3, "per_device_batch": 4, "grad_accum": 1,
                                "max_seq_len": 64, "packing": False, "warmup_ratio": 0.0,
                                "gradient_checkpointing": False, "max_steps": 16,
                                "eval_every_steps": 1, "early_stopping_patience": 16}})
    logged: list[str] = []
    result = train(spec, tmp_path / "run", chat_template=CHATML, log=logged.append)
    alarms = [w for w in result.warnings if w.startswith("overfitting: train loss")]
    assert len(alarms) == 1, (result.warnings, logged)
    assert any("stopping at the best checkpoint" in line for line in logged)
    assert result.stopped_early and result.global_step < 16
    points = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    evals = [(r["step"], r["eval_loss"]) for r in points if r["eval_loss"] is not None]
    best_step, best = min(evals, key=lambda e: e[1])
    assert evals[-1][0] == result.global_step and evals[-1][1] > best
    assert [r["loss"] for r in points if r["loss"] is not None][-1] < 0.3
    assert result.best_checkpoint.endswith(f"checkpoint-{best_step}")
    assert result.best_eval_loss == pytest.approx(best)
    # the saved adapter is the best checkpoint's: evaluated again, it gives the best eval loss
    assert result.final_metrics["eval_loss"] == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_stop_token_rows_train_in_both_matrices_and_merge(tied, tmp_path):
    """Preflight makes the end-of-turn token's rows trainable when the base never trained
    them (Qwen2.5 base models; 0.5B-3B tie their embeddings, 7B does not). On a tied model
    the run trains (TRL's fused head failed on PEFT's wrapper); on an untied one the output
    row, which decides whether the model stops, trains too, not only the input row. The
    merge carries exactly those rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer_service.recipe.postflight import merge_adapter

    base = tiny_llama(tmp_path / "base", tied=tied, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(base)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    data = _write(tmp_path / "ds", _rows(24, "blue blue blue"), _rows(4, "blue blue blue", 100))
    logged: list[str] = []
    result = train(_spec(base, data, max_steps=3, eval_every_steps=3), tmp_path / "run",
                   trainable_token_indices=[eot], chat_template=CHATML, log=logged.append)
    assert result.global_step == 3
    assert any(line.startswith(f"trainable token rows {{'model.embed_tokens': [{eot}], "
                               f"'lm_head': [{eot}]}}") for line in logged), logged
    tok.chat_template = CHATML
    merged = merge_adapter(base, result.adapter_dir, tmp_path / "merged", tok, "<|im_end|>")
    before = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    after = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16)
    for matrix in ("get_input_embeddings", "get_output_embeddings"):
        moved = (getattr(before, matrix)().weight - getattr(after, matrix)().weight
                 ).abs().sum(-1).nonzero().flatten().tolist()
        assert moved == [eot], (matrix, moved[:5])


def test_token_rows_trainer_computes_trls_loss(tiny_model, tmp_path):
    """The trainer used with token rows takes the model's own head; on the same batch its
    loss equals TRL's fused head's (a mean over supervised tokens, not over all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer_service.recipe.train import build_recipe, sft_trainer_class

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = CHATML
    rows = tokenize_rows(tok, [r["messages"] for r in _rows(6, "blue blue blue")],
                         "all_assistant")
    spec = _spec(tiny_model, tmp_path)
    losses = []
    for token_rows in (False, True):
        recipe = build_recipe(spec, tmp_path / f"out{token_rows}", use_cpu=True,
                              has_validation=False)
        trainer = sft_trainer_class(token_rows)(
            model=AutoModelForCausalLM.from_pretrained(tiny_model), args=recipe.sft,
            train_dataset=rows, processing_class=tok)
        batch = next(iter(trainer.get_train_dataloader()))
        supervised = int((batch["labels"] != -100).sum())
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(trainer.model, batch,
                                                     num_items_in_batch=supervised)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
