"""The training spec: minimal specs load, unknown keys fail, epoch advice, translation."""

from __future__ import annotations

import os

import pytest

from data_engine.errors import ConfigError
from trainer_service.recipe.spec import TrainSpec, load_spec
from trainer_service.recipe.train import build_recipe


def test_minimal_spec_from_file_gets_defaults(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "spec.yaml"
    path.write_text("base_model: some/model\ndataset: data\n")
    spec = load_spec(path)
    assert spec.base_model == "some/model"
    assert spec.dataset == str(tmp_path / "data")  # relative to the spec file
    assert spec.quantization == "nf4" and spec.loss_on == "all_assistant"
    assert spec.training.epochs == 1 and spec.training.packing
    assert spec.lora.r == 16 and spec.lora.effective_alpha == 32


def test_overrides_replace_file_values_and_none_is_ignored(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base_model: a\ndataset: /d1\n")
    spec = load_spec(path, {"dataset": "/d2", "base_model": None})
    assert spec.dataset == "/d2" and spec.base_model == "a"


def test_unknown_and_bad_keys_are_all_reported(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base_model: m\ndataset: d\nlora: {rank: 8}\ntraining: {epoch: 2}\n"
                    "quantization: fp4\n")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    text = "\n".join(err.value.problems)
    assert "lora.rank: unknown key" in text
    assert "training.epoch: unknown key" in text
    with pytest.raises(ConfigError) as err:
        load_spec(None, {"base_model": "m", "dataset": "d", "quantization": "fp4"})
    assert any("quantization" in p for p in err.value.problems)


def test_train_run_refuses_a_bad_spec_before_the_training_stack_loads(tmp_path):
    """`train run` with a bad spec lists every problem and exits 2 without importing peft,
    transformers' trainer or bitsandbytes (4-5 s here, and bitsandbytes' CPU warning)."""
    import subprocess
    import sys

    path = tmp_path / "spec.yaml"
    path.write_text("base_model: m\ndataset: d\ntraining: {epochs: two, learning_rate: 3}\n")
    probe = ("import sys\nfrom tunesmith.cli import entry\ntry:\n    entry()\n"
             "except SystemExit as exc:\n    print('exit', exc.code, sorted(m for m in "
             "('peft', 'bitsandbytes', 'trl') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe, "train", "run", str(path), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "exit 2 []", done.stdout + done.stderr
    assert "training.epochs: expected float, got 'two'" in done.stderr
    assert "training.learning_rate: must be in (0, 1)" in done.stderr


def test_export_gguf_names_known_forms_only(tmp_path):
    from evaluator.export import TYPES
    from trainer_service.recipe.spec import GGUF_TYPES

    assert GGUF_TYPES == TYPES  # the spec reads without llama.cpp but names the same forms
    path = tmp_path / "spec.yaml"
    path.write_text("base_model: m\ndataset: d\nexport: {gguf: [f16, q4_k_m]}\n")
    assert load_spec(path).export.gguf == ["f16", "q4_k_m"]
    assert load_spec(None, {"base_model": "m", "dataset": "d"}).export.gguf == []
    path.write_text("base_model: m\ndataset: d\nexport: {gguf: [q4_0], onnx: true}\n")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    text = "\n".join(err.value.problems)
    assert "export.onnx: unknown key" in text
    path.write_text("base_model: m\ndataset: d\nexport: {gguf: [q4_0]}\n")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert any(p.startswith("export.gguf: unknown type(s) q4_0") for p in err.value.problems)


def test_missing_base_model_and_dataset_fail():
    with pytest.raises(ConfigError) as err:
        load_spec(None)
    assert {p.split(":")[0] for p in err.value.problems} >= {"base_model", "dataset"}


def test_lora_on_lm_head_is_refused_before_any_loading():
    """TRL computes the loss from lm_head.weight directly, so LoRA there never trains; TRL
    says so only once the model is loaded, the spec says it at once."""
    with pytest.raises(ConfigError) as err:
        load_spec(None, {"base_model": "m", "dataset": "d",
                         "lora": {"target_modules": ["q_proj", "lm_head"]}})
    assert any(p.startswith("lora.target_modules: LoRA on lm_head never trains")
               for p in err.value.problems), err.value.problems
    assert load_spec(None, {"base_model": "m", "dataset": "d",
                            "lora": {"target_modules": ["q_proj", "v_proj"]}})


def test_alpha_defaults_to_twice_r_unless_set():
    assert load_spec(None, {"base_model": "m", "dataset": "d",
                            "lora": {"r": 32}}).lora.effective_alpha == 64
    assert load_spec(None, {"base_model": "m", "dataset": "d",
                            "lora": {"r": 32, "alpha": 32}}).lora.effective_alpha == 32


@pytest.mark.parametrize("epochs,rows,expected", [
    (1, 638, 0), (2, 638, 1), (3, 5000, 0), (4, 5000, 1), (2, 1000, 0)])
def test_epoch_warnings(epochs, rows, expected):
    spec = load_spec(None, {"base_model": "m", "dataset": "d", "training": {"epochs": epochs}})
    found = [w for w in spec.warnings(rows) if w.startswith("training.epochs")]
    assert len(found) == expected


def test_max_steps_silences_epoch_warning_and_rank_outside_range_warns():
    spec = load_spec(None, {"base_model": "m", "dataset": "d", "lora": {"r": 8},
                            "training": {"epochs": 5, "max_steps": 10}})
    warnings = spec.warnings(100)
    assert not any(w.startswith("training.epochs") for w in warnings)
    assert any(w.startswith("lora.r") for w in warnings)


@pytest.mark.parametrize("quant", ["nf4", "int8", "none"])
def test_build_recipe_translates_spec(tmp_path, quant):
    import torch

    spec = load_spec(None, {"base_model": "m", "dataset": "d", "quantization": quant,
                            "lora": {"r": 24, "use_rslora": True, "dropout": 0.1},
                            "training": {"max_steps": 7, "eval_every_steps": 5,
                                         "learning_rate": 1e-4}})
    recipe = build_recipe(spec, tmp_path, use_cpu=True, has_validation=True,
                          trainable_token_indices=[5, 9])
    lora = recipe.lora
    assert (lora.r, lora.lora_alpha, lora.use_rslora, lora.lora_dropout) == (24, 48, True, 0.1)
    assert lora.trainable_token_indices == [5, 9]
    q = recipe.quantization
    if quant == "nf4":
        assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
        assert q.bnb_4bit_compute_dtype == torch.float32  # CPU: no bf16 compute
    elif quant == "int8":
        assert q.load_in_8bit and not q.load_in_4bit
    else:
        assert q is None
    sft = recipe.sft
    assert sft.use_cpu and not sft.bf16
    assert sft.max_steps == 7 and sft.learning_rate == 1e-4 and sft.eval_steps == 5
    assert sft.packing and sft.padding_free and sft.packing_strategy == "bfd"
    assert sft.load_best_model_at_end and sft.metric_for_best_model == "eval_loss"
    assert sft.greater_is_better is False and sft.seed == spec.training.seed


def test_build_recipe_without_validation_disables_eval(tmp_path):
    spec = TrainSpec(base_model="m", dataset="d", allow_no_validation=True)
    sft = build_recipe(spec, tmp_path, use_cpu=True, has_validation=False).sft
    assert sft.eval_strategy == "no" and not sft.load_best_model_at_end


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant", "constant_with_warmup",
                                       "cosine_with_restarts"])
def test_planned_warmup_is_the_schedulers(scheduler, tmp_path):
    """The plan's warmup steps are the steps transformers' scheduler spends below the peak
    learning rate; the constant schedule takes no warmup, and the spec says so."""
    import torch
    from transformers import get_scheduler

    spec = load_spec(None, {"base_model": "m", "dataset": "d",
                            "training": {"lr_scheduler": scheduler, "warmup_ratio": 0.1,
                                         "max_steps": 95}})
    sft = build_recipe(spec, tmp_path, use_cpu=True, has_validation=True).sft
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_scheduler(sft.lr_scheduler_type, optimizer, sft.get_warmup_steps(95), 95)
    rates = []
    for _ in range(95):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    below_peak = next(i for i, rate in enumerate(rates) if rate >= 1.0 - 1e-9)
    assert spec.training.plan(500, True)["warmup_steps"] == below_peak
    ignored = [w for w in spec.warnings() if w.startswith("training.warmup_ratio")]
    assert len(ignored) == (scheduler == "constant")


def test_a_mistyped_field_leaves_its_sections_other_checks_on():
    """`training: {epochs: two, learning_rate: 3}` reports both fields, not just the type."""
    with pytest.raises(ConfigError) as err:
        load_spec(None, {"base_model": "m", "dataset": "d",
                         "training": {"epochs": "two", "learning_rate": 3,
                                      "max_seq_len": "long", "lr_scheduler": "cosine"},
                         "lora": {"r": "8", "dropout": 2.0}})
    assert sorted(p.split(":")[0] for p in err.value.problems) == [
        "lora.dropout", "lora.r", "training.epochs", "training.learning_rate",
        "training.max_seq_len"]


def test_yaml_floats_as_papers_write_them(tmp_path):
    """PyYAML reads `2e-4` (no dot) as a string; a spec reads it as the number it is, while a
    quoted '2e-4' stays a string and a .nan or .inf is refused."""
    path = tmp_path / "spec.yaml"
    path.write_text("base_model: m\ndataset: d\ntraining: {learning_rate: 2e-4, "
                    "warmup_ratio: 5E-2, epochs: 1e0}\n")
    t = load_spec(path).training
    assert (t.learning_rate, t.warmup_ratio, t.epochs) == (2e-4, 0.05, 1.0)
    path.write_text("base_model: m\ndataset: d\ntraining: {learning_rate: '2e-4', "
                    "epochs: .inf, overfit_train_loss: .nan}\n")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert sorted(err.value.problems) == [
        "training.epochs: must be > 0 and finite",
        "training.learning_rate: expected float, got '2e-4'",
        "training.overfit_train_loss: expected a number, got .nan"]


def test_target_modules_as_one_string_is_refused_with_the_list_to_write():
    """PEFT reads a string as a regular expression that must match a module's whole name,
    so `q_proj` alone matches nothing; only 'all-linear' is a string."""
    with pytest.raises(ConfigError) as err:
        load_spec(None, {"base_model": "m", "dataset": "d", "lora": {"target_modules": "q_proj"}})
    assert err.value.problems == ["lora.target_modules: 'q_proj' is neither 'all-linear' nor a "
                                  "list; write a list of module names, e.g. [q_proj]"]
    assert load_spec(None, {"base_model": "m", "dataset": "d"}).lora.target_modules == "all-linear"


def test_relative_base_model_starts_at_the_spec_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "models" / "base").mkdir(parents=True)
    path = tmp_path / "cfg" / "spec.yaml"
    monkeypatch.chdir(tmp_path)
    for written, read in [("models/base", tmp_path / "cfg" / "models" / "base"),
                          ("./models/base", tmp_path / "cfg" / "models" / "base"),
                          ("../cfg/models/base", tmp_path / "cfg" / "models" / "base"),
                          ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),  # a hub id
                          ("default", "default")]:
        path.write_text(f"base_model: {written}\ndataset: d\n")
        assert load_spec(path).base_model == str(read), written
    # the dataset and a template file too, without `..` left in (the service refuses any
    # path that holds one, though this one ends inside its data root)
    path.write_text("base_model: m\ndataset: ../data\nchat_template: ../t/chat.jinja\n")
    spec = load_spec(path)
    assert (spec.dataset, spec.chat_template) == (str(tmp_path / "data"),
                                                  str(tmp_path / "t" / "chat.jinja"))
    path.write_text("base_model: m\ndataset: ~/data\n")  # was <spec folder>/~/data
    assert load_spec(path).dataset == os.path.expanduser("~/data")


@pytest.mark.parametrize("seed", [-1, 2 ** 32])
def test_a_seed_outside_what_numpy_takes_is_refused_by_the_spec(seed):
    """A negative seed passed every check and failed the job at training time as `internal`
    (transformers: "Seed must be between 0 and 2**32 - 1"), with no field named."""
    with pytest.raises(ConfigError) as err:
        load_spec(None, {"base_model": "m", "dataset": "d", "training": {"seed": seed}})
    assert err.value.problems == ["training.seed: must be in [0, 2**32)"]
    assert load_spec(None, {"base_model": "m", "dataset": "d",
                            "training": {"seed": 2 ** 32 - 1}}).training.seed == 2 ** 32 - 1
