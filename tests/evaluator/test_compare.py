"""`eval compare`: forms of one model agree, different models do not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evaluator.compare import compare_forms, describe_form, load_form
from evaluator.data import EvalError, to_row

ROWS = [to_row({"id": str(i), "source": "s", "messages": [
    {"role": "user", "content": q}, {"role": "assistant", "content": a}]}, f"x:{i}")
    for i, (q, a) in enumerate([("Name a colour.", "Blue."), ("What is 2+2?", "4, of course."),
                                ("Say hi.", "Hi there!"), ("Capital of France?", "Paris.")])]


@pytest.fixture(scope="module")
def adapter_and_merged(tiny_model_dir, chat_tokenizer, tmp_path_factory):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from trainer_service.recipe.postflight import merge_adapter, save_adapter

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear",
                                                      init_lora_weights=False))
    run = tmp_path_factory.mktemp("run")
    adapter = save_adapter(model, run)
    merged = merge_adapter(tiny_model_dir, adapter, run / "merged", chat_tokenizer,
                           "<|im_end|>", dtype=torch.float32)
    return adapter, merged


def test_adapter_and_its_merge_agree_and_differ_from_the_base(tiny_model_dir,
                                                              adapter_and_merged):
    adapter, merged = adapter_and_merged
    assert describe_form(str(adapter)) == "adapter" and describe_form(str(merged)) == "model"
    same = compare_forms(str(adapter), str(merged), ROWS, base=str(tiny_model_dir))
    assert same["tokens"] > 10 and same["rows"] == 4
    assert same["mean_kl"] < 1e-6 and same["same_top_rate"] == 1.0
    assert same["ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
    moved = compare_forms(str(tiny_model_dir), str(merged), ROWS)
    assert moved["mean_kl"] > 1e-3 and abs(moved["ppl_ratio"] - 1.0) > 1e-3


def test_gguf_and_the_folder_converted_from_it_agree(smollm2_dir):
    from tunesmith.models import gguf_path

    gguf = gguf_path()
    result = compare_forms(str(gguf), str(smollm2_dir), ROWS[:2])
    assert result["a"]["kind"] == "gguf"
    # the folder holds the GGUF's weights in bf16: rounding, nothing more
    assert result["same_top_rate"] >= 0.9 and result["mean_kl"] < 0.02
    assert result["ppl_ratio"] == pytest.approx(1.0, rel=0.05)


def test_unknown_forms_are_refused(tmp_path):
    with pytest.raises(EvalError) as exc:
        describe_form(str(tmp_path))
    assert (exc.value.code, exc.value.field) == ("form_not_found", "form")


def test_forms_that_do_not_load_are_bad_input(tmp_path):
    """A corrupt .gguf, or an adapter whose base is gone: the side at fault, no traceback."""
    (tmp_path / "bad.gguf").write_bytes(b"garbage")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(tmp_path / "gone")}))
    for spec, field in [(str(tmp_path / "bad.gguf"), "a"), (str(adapter), "b")]:
        with pytest.raises(EvalError) as exc:
            load_form(spec, field=field)
        assert (exc.value.code, exc.value.field) == ("model_not_loadable", field)
        assert exc.value.bad_input and exc.value.message.startswith(f"{spec} does not load: ")


@pytest.mark.slow
def test_compare_command_writes_json(tiny_model_dir, adapter_and_merged, tmp_path):
    adapter, merged = adapter_and_merged
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(
        json.dumps({"id": r.id, "messages": r.messages, "source": r.source}) + "\n"
        for r in ROWS))
    out = tmp_path / "compare.json"
    done = subprocess.run([sys.executable, "-m", "tunesmith", "eval", "compare", str(adapter),
                           str(merged), "--data", str(data), "--base", str(tiny_model_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["same_top_rate"] == 1.0
    bad = subprocess.run([sys.executable, "-m", "tunesmith", "eval", "compare", str(tmp_path),
                          str(merged), "--data", str(data)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "form_not_found" in bad.stderr
    # `eval run --out` takes a folder, `eval compare --out` a file: a folder fails before
    # the scoring, not after it with a traceback
    folder = subprocess.run([sys.executable, "-m", "tunesmith", "eval", "compare", str(adapter),
                             str(merged), "--data", str(data), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert folder.returncode == 2 and "is a folder; name the JSON file" in folder.stderr
