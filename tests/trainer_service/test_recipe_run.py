"""`tunesmith train run` end to end on the real SmolLM2-135M-Instruct, on CPU: preflight,
a few QLoRA steps, merge into the 16-bit base, parity and the sanity generation; and the
failures that must stop a run before its first step. The NF4 path on a scripted model of
Qwen3's architecture with Qwen's tokenizer, on CPU and (marked `gpu`) on CUDA."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("tunesmith"))
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Canada", "Ottawa"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Norway", "Oslo"),
            ("Sweden", "Stockholm"), ("Greece", "Athens"), ("Poland", "Warsaw"),
            ("Austria", "Vienna"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
            ("Cuba", "Havana"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
            ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"),
            ("Belgium", "Brussels")]


def dataset(folder: Path, validation: bool = True) -> Path:
    """A data engine output folder of short answers (which the base model stops after)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"c{i}", "messages": [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"The capital of {country} is {city}."}]}
        for i, (country, city) in enumerate(CAPITALS)]
    splits = {"train": rows[:16], "validation": rows[16:20] if validation else [],
              "test": rows[20:]}
    for name, part in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def spec(path: Path, base: Path, data: Path, extra: str = "") -> Path:
    path.write_text(f"base_model: {base}\ndataset: {data}\n"
                    "training: {max_steps: 3, per_device_batch: 4, grad_accum: 1, "
                    "max_seq_len: 128, eval_every_steps: 1, learning_rate: 5.0e-4}\n" + extra)
    return path


def train_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "train", "run", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ}, timeout=900)


@pytest.mark.slow
def test_recipe_trains_merges_and_verifies(smollm2_dir, tmp_path):
    data = dataset(tmp_path / "data")
    done = train_run(str(spec(tmp_path / "spec.yaml", smollm2_dir, data)), "--out", "run",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "succeeded" and state["global_step"] == 3
    assert state["best_eval_loss"] is not None
    for name in ("preflight", "adapter", "checkpoints", "train_result", "merged", "verify",
                 "metrics", "report"):
        assert Path(state["artifacts"][name]).exists(), name

    preflight = json.loads((run / "preflight.json").read_text())
    assert preflight["end_of_turn_token"] == "<|im_end|>" == preflight["eos_token"]
    assert preflight["end_of_turn_id"] in preflight["generation_eos_ids"]
    assert "<|im_end|>]]" in preflight["sample"]  # the stop token is supervised

    merged = run / "merged"
    assert not list(merged.glob("adapter_*"))
    generation = json.loads((merged / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert preflight["end_of_turn_id"] in (eos if isinstance(eos, list) else [eos])

    verify = json.loads((run / "verify.json").read_text())
    assert verify["parity"]["mean_kl"] <= verify["parity"]["mean_kl_tol"]
    assert verify["parity"]["base_mean_kl"] > verify["parity"]["mean_kl"]  # it trained
    assert verify["sanity"]["stop_rate"] >= 0.8 and verify["sanity"]["degenerate"] == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("eval_loss") is not None] == [1, 2, 3]

    # The finished run's record survives runs refused in its folder: a dry run (it wrote
    # `validated` over `succeeded`) and another spec (refused, after rewriting run.json as
    # failed with the refused spec, which the evaluator then read for the base model)
    record = {name: (run / name).read_bytes() for name in ("run.json", "preflight.json")}
    for extra in ("dry_run: true\n", "lora: {r: 8}\n"):
        refused = train_run(str(spec(tmp_path / "again.yaml", smollm2_dir, data, extra)),
                            "--out", "run", cwd=tmp_path)
        assert refused.returncode == 4 and "run_dir_in_use" in refused.stderr, refused.stderr
        assert {name: (run / name).read_bytes() for name in record} == record


@pytest.mark.slow
def test_dry_run_and_missing_validation_stop_before_training(smollm2_dir, tmp_path):
    data = dataset(tmp_path / "data")
    done = train_run(str(spec(tmp_path / "dry.yaml", smollm2_dir, data, "dry_run: true\n")),
                     "--out", "dry", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((tmp_path / "dry" / "run.json").read_text())
    assert state["status"] == "validated" and (tmp_path / "dry" / "preflight.json").exists()
    assert not (tmp_path / "dry" / "adapter").exists()

    bare = dataset(tmp_path / "bare", validation=False)
    done = train_run(str(spec(tmp_path / "bare.yaml", smollm2_dir, bare)), "--out", "bare",
                     cwd=tmp_path)
    assert done.returncode == 4
    state = json.loads((tmp_path / "bare" / "run.json").read_text())
    assert state["status"] == "failed" and state["error"]["code"] == "no_validation"
    assert state["error"]["field"] and state["error"]["fix"]
    assert not (tmp_path / "bare" / "checkpoints").exists()


@pytest.fixture(scope="module")
def polite_qwen3_dir(tmp_path_factory):
    """A scripted 2-layer model of Qwen3's architecture with Qwen's real tokenizer (built
    offline) that answers "Hello there" and stops (tests/evaluator/models.py): small enough
    to travel to a GPU machine, unlike SmolLM2's 98 MB GGUF."""
    from tests.evaluator import models
    from tests.trainer_service.test_chat_format import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    return models.scripted_model(tokenizer, tmp_path_factory.mktemp("qwen3") / "polite",
                                 models.chain_of(tokenizer, "Hello there"), arch="qwen3")


def test_minimal_spec_runs_on_the_defaults_and_says_what_they_do_to_16_rows(polite_qwen3_dir,
                                                                            tmp_path):
    """`base_model` and `dataset` alone: every default applies (NF4, packing into 2,048-token
    blocks, an effective batch of 16 blocks, eval every 50 steps). 16 short rows fill one
    block, so the run is one optimizer step, all warmup at learning rate 0: the adapter
    cannot change anything, and the run says so before training and fails after."""
    data = dataset(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(f"base_model: {polite_qwen3_dir}\ndataset: {data}\n")
    done = train_run("spec.yaml", "--out", "run", cwd=tmp_path)
    assert done.returncode == 4, done.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["spec"]["quantization"] == "nf4" and state["spec"]["training"]["packing"]
    assert state["error"]["code"] == "merge_noop"
    assert any(w.startswith("training: only 1 optimizer step (16 train rows in 1 packed block, "
                            "2 x 8 packed blocks a step)") for w in state["warnings"])
    assert any(w.startswith("training.eval_every_steps: 50 > the run's 1 optimizer step")
               for w in state["warnings"])
    # said by preflight, before the base was loaded for training, and said once
    preflight = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert preflight["plan"] == {"train_items": 1, "unit": "packed block", "optimizer_steps": 1,
                                 "warmup_steps": 1, "evaluations": 1}
    assert sum(w.startswith(("training: only", "training.eval_every_steps"))
               for w in preflight["warnings"]) == 2
    log = re.sub(r"\s+", " ", done.stderr)  # the run log goes to stderr
    assert log.count("only 1 optimizer step") == 1 and log.count("> the run's 1") == 1
    assert log.index("preflight: plan 1 packed block, 1 optimizer step (1 warmup), 1 evaluation") < log.index("base: nf4")


def test_dry_run_counts_the_steps_of_the_founding_mistake(polite_qwen3_dir, tmp_path):
    """3 epochs on a small dataset, checked without training: the dry run says what the
    run would be (3 optimizer steps over one packed block) and what is wrong with it."""
    data = dataset(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(f"base_model: {polite_qwen3_dir}\ndataset: {data}\n"
                                        "training: {epochs: 3}\n")
    done = train_run("spec.yaml", "--out", "run", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["status"] == "validated" and state["spec"]["dry_run"]
    preflight = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert preflight["plan"]["optimizer_steps"] == 3
    assert preflight["warnings"] == state["warnings"]  # the spec's advice is on file too
    said = "\n".join(state["warnings"])
    assert "training.epochs: 3 epochs on 16 train rows (< 1000)" in said
    assert "training: only 3 optimizer steps (16 train rows in 1 packed block" in said
    assert "training.eval_every_steps: 50 > the run's 3 optimizer steps" in said
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert f"preflight: {tmp_path / 'run' / 'preflight.json'}" in done.stdout


@pytest.mark.parametrize("case, code, field", [
    ("no dataset folder", "dataset_missing", "dataset"),
    ("a broken line", "dataset_row_invalid", "dataset"),
    ("no base folder", "base_model_unavailable", "base_model"),
    ("misnamed LoRA layer", "lora_targets_unknown", "lora.target_modules"),
    ("a block as LoRA layer", "lora_targets_unknown", "lora.target_modules"),
    ("flash-attn missing", "attention_unavailable", "training.attention"),
    ("most stop tokens cut", "truncated_stop_tokens", "training.max_seq_len"),
    # validation rows are scored every evaluation and test rows prompt the sanity check:
    # these crashed after preflight (or after training and merge), or were scored as given
    ("a stop token in a validation reply", "row_holds_stop_token", "chat_template"),
    ("a validation turn without a role", "row_invalid", "chat_template"),
    ("unreadable tool calls in a test row", "row_invalid", "dataset"),
])
def test_a_dry_run_finds_what_would_fail_later(polite_qwen3_dir, tmp_path, case, code, field):
    """Each of these used to pass a dry run and fail (or, truncation, train a model that runs
    on) only once training started, or to crash with a traceback and no run.json."""
    from dataclasses import replace

    from trainer_service.recipe.errors import RecipeError
    from trainer_service.recipe.run import run_recipe
    from trainer_service.recipe.spec import TrainSpec, TrainingSpec

    data = dataset(tmp_path / "data")
    spec = TrainSpec(base_model=str(polite_qwen3_dir), dataset=str(data), dry_run=True)
    if case == "no dataset folder":
        spec.dataset = str(tmp_path / "nope")
    elif case == "a broken line":
        lines = (data / "train.jsonl").read_text().splitlines()
        (data / "train.jsonl").write_text("\n".join([lines[0], '{"messages": [', *lines[2:]]))
    elif case == "no base folder":
        spec.base_model = str(tmp_path / "models" / "nope")
    elif case == "misnamed LoRA layer":
        spec.lora.target_modules = ["q_proj", "q_projj"]
    elif case == "a block as LoRA layer":
        spec.lora.target_modules = ["mlp"]
    elif case == "flash-attn missing":
        spec.training = replace(TrainingSpec(), attention="flash_attention_2")
    elif "validation" in case or "test row" in case:
        split = "test" if "test row" in case else "validation"
        rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
        if case.startswith("a stop token"):
            rows[1]["messages"][1]["content"] += "<|im_end|>"
        elif case.endswith("without a role"):
            del rows[1]["messages"][0]["role"]
        else:
            rows[1]["messages"][1]["tool_calls"] = "{not json"
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        spec.training = replace(TrainingSpec(), max_seq_len=12)
    with pytest.raises(RecipeError) as err:
        run_recipe(spec, tmp_path / "run", log=lambda _: None)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["status"] == "failed"
    assert (state["error"]["code"], state["error"]["field"]) == (code, field), state["error"]
    assert err.value.code == code and state["error"]["fix"]
    if case == "no dataset folder":
        assert str(tmp_path / "nope") in state["error"]["message"]
    elif case == "a broken line":
        assert f"{data / 'train.jsonl'}:2: not a JSON object" in state["error"]["message"]
    elif case.endswith("LoRA layer"):
        assert ("'q_projj' matches no module" if case.startswith("misnamed") else
                "'mlp' matches Qwen3MLP blocks, not layers") in state["error"]["message"]
        assert "q_proj, up_proj, v_proj" in state["error"]["fix"]


def test_an_unexpected_failure_is_on_record(polite_qwen3_dir, tmp_path, monkeypatch):
    """Anything the checks do not know (a bug, the machine) still leaves run.json saying
    failed, with the exception, before it propagates."""
    from trainer_service.recipe import run
    from trainer_service.recipe.spec import TrainSpec

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run, "run_preflight", broken)
    spec = TrainSpec(base_model=str(polite_qwen3_dir), dataset=str(dataset(tmp_path / "data")))
    with pytest.raises(RuntimeError):
        run.run_recipe(spec, tmp_path / "run", log=lambda _: None)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["status"] == "failed"
    assert state["error"]["code"] == "internal"
    assert state["error"]["message"] == "RuntimeError: disk full"


def check_nf4_recipe(model_dir: Path, tmp_path: Path, device: str) -> None:
    """The 4-bit path as users run it: an NF4 base (bf16 compute on a GPU), LoRA on every
    linear layer, then the merge into the 16-bit base (never the 4-bit weights), parity and
    the sanity generation."""
    data = dataset(tmp_path / "data")
    done = train_run(str(spec(tmp_path / "spec.yaml", model_dir, data,
                              "quantization: nf4\n")), "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    base = re.search(r"base: nf4, (\d+) bitsandbytes linear layers, (\w+)",
                     done.stdout + done.stderr)
    assert base and int(base[1]) >= 14 and base[2] == device  # 2 layers x 7 projections
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["status"] == "succeeded" and state["global_step"] == 3
    assert state["attention"].startswith("varlen")  # packed rows, attended row by row
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32
    projections = {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]}
    assert projections >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"}
    assert not list((tmp_path / "run" / "merged").glob("adapter_*"))
    verify = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert verify["parity"]["mean_kl"] <= verify["parity"]["mean_kl_tol"]
    assert verify["sanity"]["stop_rate"] >= 0.8 and verify["sanity"]["degenerate"] == 0
    # verified where it trained: a GPU's sanity generation in bf16, as servers run it
    assert verify["parity"]["device"] == verify["sanity"]["device"] == device.lower()
    assert verify["sanity"]["dtype"] == ("bfloat16" if device == "CUDA" else "float32")


def test_nf4_recipe_on_a_qwen3_model(polite_qwen3_dir, tmp_path):
    check_nf4_recipe(polite_qwen3_dir, tmp_path, "CPU")


@pytest.mark.gpu
def test_nf4_recipe_on_cuda(polite_qwen3_dir, tmp_path):
    check_nf4_recipe(polite_qwen3_dir, tmp_path, "CUDA")


def test_a_base_whose_eos_is_not_its_end_of_turn_trains_with_align_eos(tmp_path):
    """A base model of Qwen2.5's kind: ChatML turns end with <|im_end|>, but its tokenizer's eos
    and its generation config's eos id are <|endoftext|> (as Qwen2.5-0.5B ships), so a model
    trained from it as it is would not stop in a runtime reading the eos (a GGUF). The run
    refuses it before loading any weights and names the setting; with `align_eos: true` it
    trains, says what it changed, and saves adapter/ and merged/ stopping on <|im_end|>,
    leaving the base's folder as it was."""
    from transformers import AutoTokenizer, GenerationConfig

    from tests.evaluator import models
    from tests.trainer_service.test_chat_format import qwen_tokenizer

    tokenizer = qwen_tokenizer(eos="<|endoftext|>", fresh=True)
    base = models.scripted_model(tokenizer, tmp_path / "qwen-base",
                                 models.chain_of(tokenizer, "Hello there"), arch="qwen3",
                                 end_of_turn="<|endoftext|>")
    data = dataset(tmp_path / "data")
    plain = spec(tmp_path / "plain.yaml", base, data, "quantization: none\n")
    done = train_run(str(plain), "--out", "plain", "--dry-run", cwd=tmp_path)
    assert done.returncode == 4, done.stderr[-3000:]
    error = json.loads((tmp_path / "plain" / "run.json").read_text())["error"]
    assert (error["code"], error["field"]) == ("eos_not_end_of_turn", "tokenizer.eos_token")
    assert error["fix"].startswith("set align_eos: true in the spec")

    aligned = spec(tmp_path / "aligned.yaml", base, data, "quantization: none\nalign_eos: true\n")
    done = train_run(str(aligned), "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "succeeded" and state["global_step"] == 3
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",
                                                                      "<|endoftext|>"))
    assert state["warnings"][:2] == [
        "align_eos: tokenizer.eos_token: '<|endoftext|>' -> '<|im_end|>', in this run and in "
        "adapter/ and merged/",
        f"align_eos: generation_config.eos_token_id: [{endoftext}] -> [{endoftext}, {im_end}], "
        "in this run and in adapter/ and merged/"]
    preflight = json.loads((run / "preflight.json").read_text())
    assert preflight["eos_token"] == "<|im_end|>" and im_end in preflight["generation_eos_ids"]
    for folder in (run / "adapter", run / "merged"):
        assert AutoTokenizer.from_pretrained(folder).eos_token == "<|im_end|>", folder
    eos = GenerationConfig.from_pretrained(run / "merged").eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    sanity = json.loads((run / "verify.json").read_text())["sanity"]
    assert sanity["stop_rate"] == 1.0
    assert {s["output"] for s in sanity["samples"]} == {"Hello there"}
    assert AutoTokenizer.from_pretrained(base).eos_token == "<|endoftext|>"  # the base as it was


def train_scripted(tokenizer, tmp_path: Path, end_of_turn: str, prompt_end: str
                   ) -> tuple[subprocess.CompletedProcess, Path]:
    """`train run` (16-bit base, `spec`'s few steps) of a model speaking ``tokenizer``'s chat
    format, scripted to answer "Hello there" and stop with ``end_of_turn`` after a generation
    prompt ending with ``prompt_end``; returns the finished command and the run folder."""
    from tests.evaluator import models

    base = models.scripted_model(
        tokenizer, tmp_path / "base", models.chain_of(tokenizer, "Hello there", end_of_turn,
                                                      prompt_end=prompt_end),
        end_of_turn=end_of_turn)
    data = dataset(tmp_path / "data")
    done = train_run(str(spec(tmp_path / "spec.yaml", base, data, "quantization: none\n")),
                     "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, tmp_path / "run"


def test_a_model_nobody_has_a_training_template_for_trains_on_its_own(tmp_path):
    """A model of Mistral's chat format (Mistral-Nemo's template; its control tokens on
    SmolLM2's vocabulary), scripted to answer "Hello there" and stop with </s>: no markers,
    no TRL variant, so `auto` trains it on its own template with each reply located by its
    turn; the merged model keeps that template, and it stops."""
    from transformers import AutoTokenizer

    from tests.trainer_service.test_chat_format import mistral_tokenizer

    tokenizer = mistral_tokenizer()
    _, run = train_scripted(tokenizer, tmp_path, "</s>", prompt_end="[/INST]")
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "succeeded" and state["global_step"] == 3
    preflight = json.loads((run / "preflight.json").read_text())
    assert (preflight["template_source"], preflight["end_of_turn_token"]) == ("model+turns",
                                                                              "</s>")
    assert "[INST]What is the capital of France?[/INST][[The capital of France is Paris.</s>]]" \
        in preflight["sample"]
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()
              if json.loads(line)["loss"] is not None]
    assert losses and all(loss > 0 for loss in losses)
    assert AutoTokenizer.from_pretrained(run / "merged").chat_template == tokenizer.chat_template
    sanity = json.loads((run / "verify.json").read_text())["sanity"]
    assert sanity["stop_rate"] == 1.0
    assert {s["output"] for s in sanity["samples"]} == {"Hello there"}


TIME_TOOLS = [{"type": "function", "function": {
    "name": "get_time", "description": "The time now",
    "parameters": {"type": "object", "properties": {}}}}]


def tool_dataset(folder: Path) -> Path:
    """A data engine output folder of rows that call a tool, then answer from its result."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"t{i}", "tools": TIME_TOOLS, "messages": [
        {"role": "user", "content": f"What time is it in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": json.dumps(
            [{"id": f"call{i:05d}", "type": "function",
              "function": {"name": "get_time", "arguments": "{}"}}])},
        {"role": "tool", "tool_call_id": f"call{i:05d}", "content": '{"time": "12:00"}'},
        {"role": "assistant", "content": "It is noon."}]}
        for i, (_, city) in enumerate(CAPITALS)]
    splits = {"train": rows[:16], "validation": rows[16:20], "test": rows[20:]}
    for name, part in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def test_a_gemma4_model_learns_to_stop_after_its_calls(tmp_path):
    """A model of Gemma 4's chat format (its real template; its control tokens on SmolLM2's
    vocabulary; eos <eos> and a generation config stopping on <eos> and <turn|>), scripted
    to call get_time and close the call with <|tool_response>, and after the tool's result
    to answer and close the turn with <turn|>. Gemma 4 writes the result into the same turn,
    so a call ends with <|tool_response>, not <turn|>: with align_eos the run adds it to the
    stop tokens, trains through both, and the merged model stops after its held-out calls,
    which are read in Gemma 4's form."""
    from transformers import GenerationConfig

    from tests.evaluator import models
    from tests.trainer_service.test_chat_format import gemma4_tokenizer

    tokenizer = gemma4_tokenizer()
    steps = {**models.chain_of(tokenizer, "<|tool_call>call:get_time{}<tool_call|>",
                               "<|tool_response>", prompt_end="<channel|>"),
             **models.chain_of(tokenizer, "It is noon.", "<turn|>",
                               prompt_end="<tool_response|>")}
    base = models.scripted_model(tokenizer, tmp_path / "base", steps, end_of_turn="<turn|>")
    eos, eot, call = (tokenizer.convert_tokens_to_ids(t)
                      for t in ("<eos>", "<turn|>", "<|tool_response>"))
    shipped = GenerationConfig.from_pretrained(base)
    shipped.eos_token_id = [eos, eot]
    shipped.save_pretrained(base)
    data = tool_dataset(tmp_path / "data")
    done = train_run(str(spec(tmp_path / "spec.yaml", base, data,
                              "quantization: none\nalign_eos: true\n")),
                     "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "succeeded" and state["global_step"] == 3
    assert (f"align_eos: generation_config.eos_token_id: [{eos}, {eot}] -> [{eos}, {eot}, "
            f"{call}], in this run and in adapter/ and merged/") in state["warnings"]
    preflight = json.loads((run / "preflight.json").read_text())
    assert (preflight["template_source"], preflight["end_of_turn_token"],
            preflight["call_end_token"], preflight["call_turns"]) == (
        "model+turns", "<turn|>", "<|tool_response>", 16)
    assert "[[<|tool_call>call:get_time{}<tool_call|><|tool_response>]]response:get_time" \
        in preflight["sample"]
    assert {eot, call} <= set(GenerationConfig.from_pretrained(run / "merged").eos_token_id)
    sanity = json.loads((run / "verify.json").read_text())["sanity"]
    assert (sanity["call_format"], sanity["stop_rate"]) == ("gemma4", 1.0)
    assert sanity["call_rows"] == sanity["calls_parsed"] == 4
    assert sorted({s["output"] for s in sanity["samples"]}) == ["It is noon.",
                                                               "call:get_time{}"]


@pytest.mark.parametrize("template", ["llama-3 (TRL's copy)",
                                      "meta-llama-Llama-3.2-3B-Instruct.jinja"])
def test_a_llama3_model_trains_and_stops_on_eot(template, tmp_path):
    """A model of Llama 3's chat format (Meta-Llama-3-Instruct's template as TRL keeps it, or
    Llama 3.2's real one; its control tokens on SmolLM2's vocabulary), scripted to answer
    "Hello there" and stop with <|eot_id|>: `auto` trains it on TRL's training variant of
    the template, or on the model's own with markers added, and the merged model renders
    prompts as the base did and stops on <|eot_id|>."""
    from transformers import AutoTokenizer, GenerationConfig

    from tests.trainer_service.test_chat_format import family_tokenizer, llama3x_tokenizer

    trl = template.startswith("llama-3 ")
    tokenizer = family_tokenizer("llama-3") if trl else llama3x_tokenizer(template)
    source = "trl" if trl else "model+markers"
    done, run = train_scripted(tokenizer, tmp_path, "<|eot_id|>", prompt_end="\n\n")
    assert f"preflight: template {source}, end of turn <|eot_id|>" in done.stdout + done.stderr
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "succeeded" and state["global_step"] == 3
    preflight = json.loads((run / "preflight.json").read_text())
    assert (preflight["template_source"], preflight["end_of_turn_token"]) == (source,
                                                                              "<|eot_id|>")
    assert "[[The capital of France is Paris.<|eot_id|>]]" in preflight["sample"]
    merged = AutoTokenizer.from_pretrained(run / "merged")
    prompt = [{"role": "user", "content": "Hi"}]
    rendered = merged.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered == tokenizer.apply_chat_template(prompt, tokenize=False,
                                                     add_generation_prompt=True)
    assert rendered.endswith("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n")
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    eos = GenerationConfig.from_pretrained(run / "merged").eos_token_id
    assert eot in (eos if isinstance(eos, list) else [eos])
    sanity = json.loads((run / "verify.json").read_text())["sanity"]
    assert sanity["stop_rate"] == 1.0 and sanity["degenerate"] == 0
    assert {s["output"] for s in sanity["samples"]} == {"Hello there"}
    if trl:
        return
    # Llama 3.2's template with markers in the merged folder: llama.cpp's F16 GGUF stops on
    # <|eot_id|>, tokenizes and renders chat prompts as the merged model does
    done = subprocess.run([CLI, "export", "gguf", "run", "--types", "f16"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [stage] = json.loads((run / "gguf" / "export.json").read_text())["stages"]
    checks = {c["name"]: c for c in stage["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["eos"]["gguf"]["token"] == "<|eot_id|>"
    assert checks["chat_prompt"]["mismatched"] == 0 and checks["chat_prompt"]["prompts"] >= 4
