"""`tunesmith export gguf`: llama.cpp's converter and quantizer on real (tiny and small)
models, the staged parity checks passing on healthy forms and failing loudly on a wrong eos
or a drifting form, and a GGUF served by llama-cpp-python's server on loopback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


from evaluator.data import EvalError  # noqa: E402
from evaluator.export import (  # noqa: E402
    TOLERANCES, ExportError, LlamaCppLogits, Tolerance, agreement, chat_prompt_check,
    check_types, drift_checks, ensure_converter, export_gguf, export_rows, gguf_vocab,
    probe_rows, tokenization_check)
from tests.evaluator import models  # noqa: E402


@pytest.fixture(scope="module")
def converter():
    """llama.cpp's converter from the llama-cpp-python sdist (cached after the first use)."""
    return ensure_converter()


def _merged(tokenizer, out: Path, seed: int, hidden: int = 64) -> Path:
    """A random Llama saved like a run's merged/ folder: bf16, tokenizer, eos <|im_end|>."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(models.tiny_config(tokenizer, hidden_size=hidden))
    return models.save_model(model.to(torch.bfloat16), tokenizer, out)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, chat_tokenizer):
    run = tmp_path_factory.mktemp("export-run")
    _merged(chat_tokenizer, run / "merged", seed=0)
    return run


# Random weights give flat next-token distributions whose top token flips at the slightest
# change, so quantized forms of a tiny random model are held to looser bounds than a real one.
TINY_Q8 = {"q8_0": Tolerance(max_ppl_ratio=1.05, max_mean_kl=0.05, min_same_top=0.7)}


@pytest.fixture(scope="module")
def tiny_export(tiny_run, converter):
    return export_gguf(tiny_run, types=("f16", "q8_0"), log=lambda _: None, tolerances=TINY_Q8)


def test_tiny_export_writes_each_form_and_its_checks(tiny_run, tiny_export):
    out = tiny_run / "gguf"
    assert (out / "model-f16.gguf").is_file() and (out / "model-q8_0.gguf").is_file()
    saved = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert saved["status"] == tiny_export["status"] == "succeeded"
    assert saved["rows"]["source"] == "built-in probes" and saved["rows"]["scored_tokens"] > 50
    f16, q8 = saved["stages"]
    assert (f16["form"], f16["against"], q8["form"], q8["against"]) == (
        "f16", "merged", "q8_0", "f16")
    checks = {c["name"]: c for c in f16["checks"]}
    assert set(checks) == {"eos", "tokenization", "chat_prompt", "ppl_ratio", "mean_kl",
                           "same_top_rate"}
    assert all(c["ok"] for c in checks.values())
    assert checks["eos"]["gguf"] == {"id": checks["eos"]["merged"]["id"], "token": "<|im_end|>"}
    assert checks["tokenization"]["strings"] >= 9 + len(probe_rows())
    # F16 in llama.cpp against bf16 weights in transformers: the same function
    assert f16["scores"]["mean_kl"] < 1e-3 and f16["scores"]["same_top_rate"] >= 0.98
    assert q8["scores"]["mean_kl"] < TINY_Q8["q8_0"].max_mean_kl
    assert saved["tolerances"]["q8_0"]["max_mean_kl"] == TINY_Q8["q8_0"].max_mean_kl
    assert q8["bytes"] < f16["bytes"]
    tensors = {c["name"]: c for c in q8["checks"]}["tensors"]
    assert tensors["ok"] and tensors["failed"] == 0 and tensors["tensors"] > 10
    assert tensors["worst"]["error"] < tensors["worst"]["max"] / 2


def _broken(path: Path, name: str, scale: float) -> None:
    """Rescales one tensor of a GGUF file in place (its stored values, or for Q8_0 the
    block scales: every value of the tensor scales with them)."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    if tensor.tensor_type.name == "Q8_0":  # blocks of a float16 scale and 32 int8 values
        blocks = tensor.data.reshape(-1, 34)
        scales = blocks[:, :2].copy().view(np.float16) * np.float16(scale)
        blocks[:, :2] = scales.view(np.uint8)
    else:
        tensor.data[...] *= scale
    del reader


@pytest.mark.parametrize("name, scale", [("blk.1.attn_output.weight", 0.0),
                                         ("blk.0.attn_norm.weight", 1.02)])
def test_a_quantized_file_with_one_broken_tensor_fails_the_tensor_check(
        tiny_run, tiny_export, converter, tmp_path, monkeypatch, name, scale):
    """End to end, one broken tensor fits inside a quantized type's room for noise (on
    SmolLM2, a zeroed attention output of one layer in 30 passed q4_k_m's bounds); tensor
    by tensor it is far past its type's rounding."""
    from evaluator import export

    real = export.quantize

    def quantize_then_break(source, out_file, qtype, log_path, threads=None):
        done = real(source, out_file, qtype, log_path, threads)
        _broken(out_file, name, scale)
        return done

    monkeypatch.setattr(export, "quantize", quantize_then_break)
    loose = {"q8_0": Tolerance(max_ppl_ratio=10.0, max_mean_kl=10.0, min_same_top=0.0)}
    with pytest.raises(ExportError) as exc:
        export_gguf(tiny_run, types=("f16", "q8_0"), out_dir=tmp_path / "out",
                    tolerances=loose, log=lambda _: None)
    assert (exc.value.code, exc.value.field) == ("tensor_mismatch", "types")
    assert f"1 tensor(s) of model-q8_0.gguf are not the F16 file's" in exc.value.message
    assert name in exc.value.message
    q8 = json.loads((tmp_path / "out" / "export.json").read_text(encoding="utf-8"))["stages"][1]
    checks = {c["name"]: c for c in q8["checks"]}
    assert all(checks[n]["ok"] for n in ("ppl_ratio", "mean_kl", "same_top_rate"))
    assert checks["tensors"]["failures"][0]["tensor"] == name


def test_a_refused_export_leaves_the_earlier_one_whole(tiny_run, tiny_export, monkeypatch):
    """A mistyped --data, or a llama.cpp that is not there, is found before the earlier
    export's files are replaced: they, and its export.json, stay as they were."""
    from evaluator.export import CONVERTER_ENV

    out = tiny_run / "gguf"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ExportError) as exc:
        export_gguf(tiny_run, types=("f16", "q8_0"), data_dir=tiny_run / "nowhere",
                    log=lambda _: None)
    assert exc.value.code == "data_not_found"
    monkeypatch.setenv(CONVERTER_ENV, str(tiny_run / "no-llama.cpp"))
    with pytest.raises(ExportError) as exc:
        export_gguf(tiny_run, types=("f16", "q8_0"), log=lambda _: None)
    assert exc.value.code == "converter_not_found"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert json.loads((out / "export.json").read_text(encoding="utf-8"))["status"] == "succeeded"


def test_a_new_export_leaves_no_form_of_an_earlier_one(tiny_run, tiny_export, tmp_path):
    """Re-exported with `--types f16`, the folder kept the first export's q8_0 beside an
    export.json that listed only f16: an unchecked file of older weights."""
    import shutil

    out = tmp_path / "gguf"
    shutil.copytree(tiny_run / "gguf", out)
    assert (out / "model-q8_0.gguf").is_file() and (out / "quantize-q8_0.log").is_file()
    export_gguf(tiny_run, types=("f16",), out_dir=out, log=lambda _: None)
    assert sorted(p.name for p in out.glob("model-*.gguf")) == ["model-f16.gguf"]
    assert not list(out.glob("quantize-*.log"))
    assert json.loads((out / "export.json").read_text(encoding="utf-8"))["types"] == ["f16"]


def test_a_gguf_whose_eos_is_not_the_end_of_turn_fails_loudly(tiny_run, chat_tokenizer,
                                                                converter, tmp_path):
    """The founding bug: the merged model stops on <|im_end|> (generation_config.json) but
    its tokenizer still says <|endoftext|>, which the converter writes as the GGUF's eos."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "merged", run / "merged")
    config_path = run / "merged" / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["eos_token"] = "<|endoftext|>"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ExportError) as exc:
        export_gguf(run, types=("f16", "q4_k_m"), log=lambda _: None)
    error = exc.value
    assert (error.code, error.field) == ("eos_mismatch", "eos_token")
    assert "'<|endoftext|>' (id 0)" in error.message and "'<|im_end|>' (id 2" in error.message
    assert "tokenizer_config.json" in error.message
    saved = json.loads((run / "gguf" / "export.json").read_text(encoding="utf-8"))
    assert saved["status"] == "failed" and saved["error"]["code"] == "eos_mismatch"
    assert [s["form"] for s in saved["stages"]] == ["f16"]  # nothing quantized after it
    assert not (run / "gguf" / "model-q4_k_m.gguf").exists()


def test_a_drifting_quantized_form_fails_with_the_numbers(tiny_run, converter, tmp_path):
    strict = {"q4_k_m": Tolerance(max_ppl_ratio=1.0001, max_mean_kl=1e-6, min_same_top=1.0)}
    with pytest.raises(ExportError) as exc:
        export_gguf(tiny_run, types=("q4_k_m",), out_dir=tmp_path / "out", tolerances=strict,
                    log=lambda _: None)
    error = exc.value
    assert (error.code, error.field) == ("q4_k_m_drift", "types")
    assert "q4_k_m drifted from the F16 GGUF" in error.message
    assert "above the tolerance 1e-06" in error.message
    assert "--types f16,q6_k" in error.message
    saved = json.loads((tmp_path / "out" / "export.json").read_text(encoding="utf-8"))
    f16, q4 = saved["stages"]
    assert f16["ok"] and not q4["ok"] and saved["error"]["code"] == "q4_k_m_drift"
    assert q4["fallback_tensors"] > 0  # hidden 64: k-quants need rows of 256
    assert saved["tolerances"]["q4_k_m"]["max_mean_kl"] == 1e-6


def test_another_models_gguf_is_far_past_every_tolerance(tiny_run, tiny_export, chat_tokenizer,
                                                         converter, tmp_path):
    """What a mixed-up file measures: the same architecture and vocabulary, other weights."""
    from evaluator.export import convert
    from evaluator.perplexity import encode_rows

    other = _merged(chat_tokenizer, tmp_path / "other", seed=1)
    other_gguf = tmp_path / "other-f16.gguf"
    convert(other, other_gguf, converter, tmp_path / "convert.log")
    encoded = encode_rows(chat_tokenizer, probe_rows())
    scores = []
    for path in (tiny_run / "gguf" / "model-f16.gguf", other_gguf):
        scorer = LlamaCppLogits(path, n_ctx=256)
        scores.append(list(_scored(scorer, encoded)))
        scorer.close()
    stats = agreement(*scores)
    checks = drift_checks(stats, TOLERANCES["q4_k_m"])
    assert not any(c["ok"] for c in checks), checks


def _scored(scorer, encoded):
    from evaluator.compare import scored_logits

    return scored_logits(scorer, encoded, 1)


def test_a_qwen2_merged_model_converts_with_its_real_vocabulary(tmp_path, converter):
    """The founding architecture: Qwen2 with Qwen2.5's real 151k vocabulary (built offline)
    and the training template, eos <|im_end|> first of [<|im_end|>, <|endoftext|>]."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.trainer_service.test_chat_format import qwen_tokenizer
    from trainer_service.recipe.chat_format import resolve_template

    tokenizer = qwen_tokenizer(fresh=True)
    tokenizer.chat_template = resolve_template(tokenizer, "auto").text
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.3, eos_token_id=end_of_turn))
    model.generation_config.eos_token_id = [end_of_turn, end_of_text]
    model.to(torch.bfloat16).save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    result = export_gguf(tmp_path, types=("f16",), log=lambda _: None)
    (f16,) = result["stages"]
    checks = {c["name"]: c for c in f16["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["eos"]["gguf"] == {"id": end_of_turn, "token": "<|im_end|>"}
    assert checks["chat_prompt"]["prompts"] == len(probe_rows())  # Qwen's default system
    assert checks["tokenization"]["mismatched"] == 0


def test_llama_cpp_tokenizer_check_catches_a_vocabulary_change(tiny_run, tiny_export,
                                                               chat_tokenizer):
    from transformers import AutoTokenizer

    vocab = gguf_vocab(tiny_run / "gguf" / "model-f16.gguf")
    try:
        texts = ["日本語と<|im_end|>と👍🏽", "plain text"]
        assert tokenization_check(chat_tokenizer, vocab, texts)["ok"]
        changed = AutoTokenizer.from_pretrained(tiny_run / "merged")
        changed.add_tokens(["日本語"])
        check = tokenization_check(changed, vocab, texts)
    finally:
        vocab.close()
    assert not check["ok"] and check["mismatched"] == 1
    assert check["mismatches"][0]["text"].startswith("日本語")


def test_chat_prompt_check_offers_a_rows_tools_on_both_sides(tiny_run, tiny_export):
    """A tool row's request offers its tools: where the GGUF's template drops them (SmolLM2's
    own template here) and the trained one renders them, the check says the prompts differ;
    before, it compared the turns only and passed."""
    from transformers import AutoTokenizer

    from trainer_service.recipe.chat_format import resolve_template

    trained = AutoTokenizer.from_pretrained(tiny_run / "merged")
    trained.chat_template = resolve_template(trained, "auto").text
    prompt = [{"role": "user", "content": "What is the weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    vocab = gguf_vocab(tiny_run / "gguf" / "model-f16.gguf")
    try:
        plain = chat_prompt_check(trained, vocab, [prompt])
        offered = chat_prompt_check(trained, vocab, [prompt, prompt], [tools, None])
    finally:
        vocab.close()
    assert plain["ok"], plain
    assert not offered["ok"] and (offered["prompts"], offered["mismatched"]) == (2, 1)


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ExportError) as exc:
        check_types(["f16", "q3_xs"])
    assert (exc.value.code, exc.value.field, exc.value.bad_input) == ("bad_type", "types", True)
    assert check_types(["q4_k_m", "f16", "q4_k_m"]) == ["f16", "q4_k_m"]
    with pytest.raises(ExportError) as exc:
        export_gguf(tmp_path, log=lambda _: None)
    assert exc.value.code == "merged_not_found"


def test_a_run_that_failed_verification_is_not_exported_without_force(tiny_run, tmp_path,
                                                                      chat_tokenizer):
    """A run whose merged model never stops (run.json: failed, degenerate) became a
    model-q4_k_m.gguf with every export check ok: each form is checked against the one
    before it. The founding failure, shipped from a failed run."""
    import subprocess
    import sys

    run = tmp_path / "run"
    _merged(chat_tokenizer, run / "merged", seed=0)
    (run / "run.json").write_text(json.dumps({"status": "failed", "error": {
        "code": "degenerate", "message": "0 of 10 sanity outputs stopped"}}))
    with pytest.raises(ExportError) as exc:
        export_gguf(run, log=lambda _: None)
    assert (exc.value.code, exc.value.field, exc.value.bad_input) == (
        "run_not_verified", "run_dir", True)
    assert "says the run failed (degenerate: 0 of 10 sanity outputs stopped)" in \
        exc.value.message and "--force" in exc.value.message
    assert not (run / "gguf").exists()
    cli = [sys.executable, "-m", "tunesmith", "export", "gguf", str(run), "--types", "f16"]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "run_not_verified" in refused.stderr
    forced = subprocess.run(cli + ["--force"], capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stderr
    saved = json.loads((run / "gguf" / "export.json").read_text(encoding="utf-8"))
    assert (saved["status"], saved["run_status"]) == ("succeeded", "failed")


def test_rows_come_from_the_runs_test_split_else_the_probes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"id": str(i), "messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n"
        for i in range(5)), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    assert export_rows(run, None, 3)[1] == "built-in probes"
    (run / "run.json").write_text(json.dumps({"spec": {"dataset": str(data)}}))
    rows, source = export_rows(run, None, 3)
    assert [r.id for r in rows] == ["0", "1", "2"] and source == f"{data}/test.jsonl"
    with pytest.raises(ExportError) as exc:
        export_rows(run, tmp_path / "nowhere", 3)
    assert exc.value.code == "data_not_found"
    assert not isinstance(exc.value, EvalError)


# ---------------------------------------------------------------------------------------------
# the real default model: SmolLM2-135M-Instruct (bf16), F16 and Q4_K_M


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory, smollm2_dir, converter):
    run = tmp_path_factory.mktemp("smollm2-run")
    (run / "merged").symlink_to(smollm2_dir, target_is_directory=True)
    return run, export_gguf(run, types=("f16", "q4_k_m"), log=lambda _: None)


@pytest.mark.slow
def test_smollm2_f16_and_q4_k_m_pass_with_room_to_spare(smollm2_export):
    _, result = smollm2_export
    f16, q4 = result["stages"]
    assert result["status"] == "succeeded"
    assert f16["scores"]["mean_kl"] < TOLERANCES["f16"].max_mean_kl / 4
    assert abs(f16["scores"]["ppl_ratio"] - 1) < 0.002
    assert q4["scores"]["mean_kl"] < TOLERANCES["q4_k_m"].max_mean_kl
    assert q4["bytes"] < 0.45 * f16["bytes"]
    tensors = {c["name"]: c for c in q4["checks"]}["tensors"]
    assert tensors["ok"] and tensors["worst"]["error"] < tensors["worst"]["max"] / 2


@pytest.mark.slow
def test_a_gguf_is_served_by_llama_cpp_server(smollm2_export):
    from openai import OpenAI

    from evaluator.serving import serve_model
    from evaluator.serving.manager import choose_backend

    run, _ = smollm2_export
    gguf = run / "gguf" / "model-q4_k_m.gguf"
    assert choose_backend("auto", model=gguf) == ("llama_cpp", None)
    with pytest.raises(Exception):
        choose_backend("transformers", model=gguf)
    with serve_model(gguf, served_name="smol-q4", startup_timeout_s=120) as server:
        assert server.backend == "llama_cpp" and server.command[1:3] == ["-m",
                                                                        "llama_cpp.server"]
        client = OpenAI(base_url=server.base_url, api_key="EMPTY")
        assert [m.id for m in client.models.list().data] == ["smol-q4"]
        reply = client.chat.completions.create(
            model="smol-q4", messages=[{"role": "user", "content": "What is the capital of "
                                        "France? Answer in one word."}],
            max_tokens=64, temperature=0.0)
        text = reply.choices[0].message.content
        assert "Paris" in text, text
        # greedy SmolLM2 answers in ~35 tokens and stops on <|im_end|>, the GGUF's eos
        assert reply.choices[0].finish_reason == "stop", text
        assert "<|im_end|>" not in text


def test_a_merged_model_too_large_for_float32_is_scored_in_bfloat16(tiny_run, converter,
                                                                    tmp_path, monkeypatch):
    from evaluator import export

    monkeypatch.setattr(export, "HF_FLOAT32_MAX_BYTES", 0)
    result = export_gguf(tiny_run, types=("f16",), out_dir=tmp_path, log=lambda _: None)
    (f16,) = result["stages"]
    assert f16["merged_dtype"] == "bfloat16"
    assert f16["tolerance"] == {"max_ppl_ratio": 1.01, "max_mean_kl": 0.005,
                                "min_same_top": 0.92}
    assert f16["ok"] and f16["scores"]["mean_kl"] > 1e-5  # bf16 compute shows, within bounds


def test_built_in_probes_a_models_template_refuses_are_left_out():
    """Gemma's template has no system role: its export scores the other probes, where the one
    with a system prompt used to stop the whole export."""
    from evaluator.export import _probes_it_renders, probe_rows
    from tests.trainer_service.test_chat_format import family_tokenizer

    probes = probe_rows()
    kept = _probes_it_renders(family_tokenizer("gemma-2"), probes)
    assert [r.id for r in kept] == [r.id for r in probes
                                    if r.messages[0]["role"] != "system"]
    assert len(kept) == len(probes) - 1
