"""Postflight on real models: a tiny random Llama with the SmolLM2 tokenizer, and SmolLM2."""

from __future__ import annotations

import json
import shutil

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from trainer_service.recipe.postflight import (
    ADAPTER_FILES, VerifyError, check_parity, merge_adapter, placement, sanity_generate,
    save_adapter)

EOT = "<|im_end|>"
# Short prompts SmolLM2-135M-Instruct answers in 7-14 tokens, then stops.
PROMPTS = ["What is 2+2?", "What is the capital of France?", "Translate 'cat' to French.",
           "Write a short greeting.", "Name a fruit."]
ROWS = [{"messages": [{"role": "user", "content": p},
                      {"role": "assistant", "content": f"A short reply about {p}"}]}
        for p in PROMPTS + ["Is the sky blue?", "Say hi.", "Count to three."]]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer):
    """A random 2-layer Llama (hidden 64) speaking SmolLM2's vocabulary, saved in bf16."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         initializer_range=0.3,  # logits of real-model scale (std ~2)
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("tiny") / "base"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _lora(base_dir, **lora_kwargs):
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear",
                                                     **lora_kwargs))


@pytest.fixture(scope="module")
def tiny_run(tiny_base, tokenizer, tmp_path_factory):
    """A non-zero LoRA on the tiny base, saved and merged."""
    run = tmp_path_factory.mktemp("run")
    model = _lora(tiny_base, init_lora_weights=False)
    adapter = save_adapter(model, run)
    merged = merge_adapter(tiny_base, adapter, run / "merged", tokenizer, EOT)
    return run, adapter, merged


def test_merge_writes_plain_16bit_folder_stopping_on_end_of_turn(tiny_base, tiny_run, tokenizer):
    run, adapter, merged = tiny_run
    assert (adapter / "adapter_config.json").is_file()
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert not [n for n in ADAPTER_FILES if (merged / n).exists()]
    eos = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert tokenizer.convert_tokens_to_ids(EOT) in eos
    # the base's own eos (<|endoftext|>) is kept beside the end-of-turn token
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in eos
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    out = AutoModelForCausalLM.from_pretrained(merged)
    assert out.dtype == torch.bfloat16
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q], out.state_dict()[q])



@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_keeps_the_bases_precision(tiny_base, tiny_run, tokenizer, tmp_path, dtype):
    """A float32 or fp16 base merged in bf16 was rounded everywhere: the merged model must
    be the base's own precision, and match base+adapter to that precision's rounding."""
    _, adapter, bf16_merged = tiny_run
    base = tmp_path / "base"
    AutoModelForCausalLM.from_pretrained(tiny_base, dtype=dtype).save_pretrained(base)
    tokenizer.save_pretrained(base)
    merged = merge_adapter(base, adapter, tmp_path / "merged", tokenizer, EOT)
    assert AutoModelForCausalLM.from_pretrained(merged).dtype == dtype
    report = check_parity(base, adapter, merged, ROWS, tokenizer, n=4)
    bf16 = check_parity(base, adapter, bf16_merged, ROWS, tokenizer, n=4)
    assert report.max_abs_diff < bf16.max_abs_diff / 4, (report, bf16)
    # the NLL of base+adapter is one function of the adapter, whatever the merge
    assert report.nll_adapter == pytest.approx(bf16.nll_adapter, rel=1e-5)
    assert abs(report.nll_merged - report.nll_adapter) < abs(bf16.nll_merged - bf16.nll_adapter)


def test_parity_measures_the_share_of_the_adapters_gain_a_merge_keeps(tiny_base, tokenizer,
                                                                      tmp_path):
    """A bf16 merge rounds away small updates: on SmolLM2 a 3-step run's merged model kept
    74% of the adapter's PPL gain while passing the parity bounds, unsaid. Now measured at
    the assistant tokens, and a warning below MERGE_GAIN_KEPT_WARN."""
    from trainer_service.recipe.postflight import MERGE_GAIN_KEPT_WARN, ParityReport

    model = _lora(tiny_base)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in ROWS]
    for _ in range(8):  # fit the rows: the adapter lowers their NLL
        for text in texts:
            batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            loss = model(**batch, labels=batch["input_ids"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    adapter = save_adapter(model, tmp_path)
    base = tmp_path / "base32"
    AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).save_pretrained(base)
    tokenizer.save_pretrained(base)
    exact = check_parity(base, adapter, merge_adapter(base, adapter, tmp_path / "m32",
                                                      tokenizer, EOT), ROWS, tokenizer, n=4)
    assert exact.nll_tokens == "assistant"
    assert exact.nll_adapter < exact.nll_base - 0.1
    assert exact.gain_kept == pytest.approx(1.0, abs=1e-3) and exact.merge_warning is None
    lossy = ParityReport(**{**exact.to_json(), "nll_merged": exact.nll_base
                            - 0.5 * (exact.nll_base - exact.nll_adapter), "gain_kept": 0.5})
    assert 0.5 < MERGE_GAIN_KEPT_WARN
    assert lossy.merge_warning.startswith("merge: the merged model keeps 50% of the adapter's "
                                          "loss gain on 4 validation rows")
    texts_only = check_parity(base, adapter, tmp_path / "m32", texts, tokenizer, n=4)
    assert texts_only.nll_tokens == "all" and texts_only.gain_kept is not None

def test_merge_refuses_a_quantized_base(tiny_base, tiny_run, tokenizer, tmp_path):
    _, adapter, _ = tiny_run
    fake = tmp_path / "q4base"
    shutil.copytree(tiny_base, fake)
    config = json.loads((fake / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (fake / "config.json").write_text(json.dumps(config))
    with pytest.raises(VerifyError) as err:
        merge_adapter(fake, adapter, tmp_path / "merged", tokenizer, EOT)
    assert err.value.code == "base_quantized" and err.value.field == "base_model"


def test_parity_of_merged_and_base_plus_adapter(tiny_base, tiny_run, tokenizer):
    _, adapter, merged = tiny_run
    report = check_parity(tiny_base, adapter, merged, ROWS, tokenizer, n=8)
    assert report.rows == 8 and report.tokens > 8 * 10
    assert report.max_abs_diff <= report.max_abs_tol
    assert report.mean_kl <= report.mean_kl_tol
    assert report.device == ("cuda" if torch.cuda.is_available() else "cpu")
    # the adapter's effect dwarfs the merge's rounding
    assert report.base_max_abs_diff > 10 * report.max_abs_diff
    json.dumps(report.to_json())


def test_parity_catches_a_merge_that_lost_precision(tiny_base, tiny_run, tokenizer, tmp_path):
    _, adapter, merged = tiny_run
    # Emulate merging into 4-bit weights: round every linear weight to int4 per 32-block.
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                w = p.view(-1, 32)
                scale = w.abs().amax(1, keepdim=True) / 7
                p.copy_((torch.round(w / scale).clamp(-8, 7) * scale).view_as(p))
    lossy = tmp_path / "lossy"
    model.to(torch.bfloat16).save_pretrained(lossy)
    with pytest.raises(VerifyError) as err:
        check_parity(tiny_base, adapter, lossy, ROWS, tokenizer, n=4)
    assert err.value.code == "parity"
    assert err.value.details["max_abs_diff"] > err.value.details["max_abs_tol"]


def test_zero_adapter_is_a_merge_noop(tiny_base, tokenizer, tmp_path):
    model = _lora(tiny_base)  # PEFT's default init: B = 0, so BA = 0
    adapter = save_adapter(model, tmp_path)
    merged = merge_adapter(tiny_base, adapter, tmp_path / "merged", tokenizer, EOT)
    with pytest.raises(VerifyError) as err:
        check_parity(tiny_base, adapter, merged, ROWS, tokenizer, n=4)
    assert err.value.code == "merge_noop"
    assert err.value.details["base_max_abs_diff"] == 0.0


def test_placement_takes_the_gpu_only_with_room_for_the_weights(tiny_base, monkeypatch):
    """Verification runs on the GPU when its free memory holds the weights in the compute
    dtype with a quarter to spare, else on the CPU (never out of GPU memory). The decision
    is checked here against a stated amount of free GPU memory."""
    params = AutoModelForCausalLM.from_pretrained(tiny_base).num_parameters()
    assert placement(tiny_base, torch.float32) == ("cuda" if torch.cuda.is_available()
                                                   else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    free = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free["bytes"], 80 * 2**30))
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        free["bytes"] = int(params * size * 1.25) + 1
        assert placement(tiny_base, dtype) == "cuda"
        free["bytes"] = int(params * size * 1.2)
        assert placement(tiny_base, dtype) == "cpu"


def test_held_out_tool_calls_reach_the_template():
    """Parity rows and sanity prompts keep the tool calls that training rendered (stored as
    JSON strings by the data engine); a plain role/content copy dropped them."""
    from tests.trainer_service.test_chat_format import TOOL_ROW, TOOLS, smol_tokenizer
    from trainer_service.recipe.chat_format import resolve_template
    from trainer_service.recipe.postflight import _as_text, _prompt_turns

    tok = smol_tokenizer()
    tok.chat_template = resolve_template(tok, "auto").text
    assert '"name": "get_weather"' in _as_text({"messages": TOOL_ROW}, tok)
    assert "Weather for a city." in _as_text({"messages": TOOL_ROW, "tools": TOOLS}, tok)
    assert _prompt_turns({"messages": TOOL_ROW, "tools": json.dumps(TOOLS)})[1] == TOOLS
    turns, tools = _prompt_turns(TOOL_ROW)
    assert tools is None
    assert [m["role"] for m in turns] == ["user", "assistant", "tool"]
    assert turns[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Kyoto"}
    assert "get_weather" in tok.apply_chat_template(turns, tokenize=False,
                                                    add_generation_prompt=True)


def test_sanity_passes_for_smollm2(smollm2_dir, tokenizer):
    report = sanity_generate(smollm2_dir, [r["messages"] for r in ROWS[:5]], tokenizer, EOT,
                             max_new_tokens=32)
    assert len(report.samples) == 5
    assert report.stop_rate >= 0.8 and report.degenerate == 0
    assert all(s.output.strip() and s.new_tokens < 32 for s in report.samples if s.stopped)
    assert "Paris" in report.samples[1].output
    # the held-out answer was cut: prompts are the user turns
    assert report.samples[0].prompt == PROMPTS[0]
    assert json.loads(json.dumps(report.to_json()))["stop_rate"] == report.stop_rate


def test_trainable_token_adapter_that_unlearns_the_stop_fails_no_stop(smollm2_dir, tokenizer,
                                                                      tmp_path):
    eot = tokenizer.convert_tokens_to_ids(EOT)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    original = base.get_input_embeddings().weight[eot].detach().clone()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj"],
                                                      trainable_token_indices=[eot]))
    with torch.no_grad():  # the stop token's (tied) row flipped: <|im_end|> becomes unlikely
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.copy_(-p)
    adapter = save_adapter(model, tmp_path)
    merged = merge_adapter(smollm2_dir, adapter, tmp_path / "merged", tokenizer, EOT)
    # PEFT's merge writes the trained rows into the embedding (and the tied lm_head)
    row = AutoModelForCausalLM.from_pretrained(merged).get_input_embeddings().weight[eot]
    assert torch.allclose(row.float(), -original.to(torch.bfloat16).float())
    with pytest.raises(VerifyError) as err:
        sanity_generate(merged, PROMPTS, tokenizer, EOT, max_new_tokens=32,
                        base_model=smollm2_dir)
    assert err.value.code == "no_stop" and err.value.field == "end_of_turn"
    assert err.value.details["stop_rate"] < 0.8
    # the base stops on the same prompts: the message blames the training, not the task
    assert err.value.details["base_stop_rate"] >= 0.8
    assert "training broke stopping" in err.value.message
    assert err.value.fix.startswith("training broke what the base did")  # it was empty


def test_a_base_that_never_finishes_is_named_as_the_cause(tokenizer, tmp_path):
    """Base and fine-tune both run past the budget without looping: the failure says the
    base model does not finish these prompts either (the Japanese-titles-on-SmolLM2 case)."""
    from tests.evaluator import models

    words = ("Many rivers cross quiet valleys where farmers grow wheat barley oats corn beans "
             "peas apples pears plums cherries grapes melons")  # 22 tokens, none repeated
    wordy = models.scripted_model(tokenizer, tmp_path / "wordy",
                                  models.chain_of(tokenizer, words))
    with pytest.raises(VerifyError) as err:
        sanity_generate(wordy, PROMPTS[:3], tokenizer, EOT, max_new_tokens=12,
                        base_model=wordy)
    assert err.value.code == "no_stop"
    details = err.value.details
    assert details["stop_rate"] == 0.0 and details["base_stop_rate"] == 0.0
    assert details["degenerate"] == 0 and details["base_degenerate"] == 0
    assert len(details["base_samples"]) == 3 and details["base_model"] == str(wordy)
    assert "does not finish these prompts either" in err.value.message
    assert err.value.fix.startswith("the base does not finish these prompts either: train "
                                    "more steps")
    # with room to finish, both stop, and the report keeps the base's figures beside its own
    report = sanity_generate(wordy, PROMPTS[:3], tokenizer, EOT, max_new_tokens=64,
                             base_model=wordy)
    assert report.stop_rate == report.base_stop_rate == 1.0


def test_looping_model_fails_degenerate(tiny_base, tokenizer, tmp_path):
    """A model wired to answer ` the` forever: the data engine's detector must flag it."""
    the = tokenizer.encode(" the", add_special_tokens=False)[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:  # blocks add nothing: hidden = norm(embedding)
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        emb.copy_(emb.abs() + 0.1)
        model.lm_head.weight.zero_()
        model.lm_head.weight[the] = 1.0
    model.save_pretrained(tmp_path / "loop")
    with pytest.raises(VerifyError) as err:
        sanity_generate(tmp_path / "loop", PROMPTS[:3], tokenizer, EOT, max_new_tokens=24)
    assert err.value.code == "degenerate"
    samples = err.value.details["samples"]
    assert all(s["degenerate"] and not s["stopped"] for s in samples)
    assert samples[0]["output"].split()[:3] == ["the", "the", "the"]


def test_sanity_prompts_keep_earlier_tool_calls(tmp_path):
    """Held-out prompts are the rows' messages up to the last reply, whole: a tool call
    stored as a JSON string stays a call (parsed, as preflight and training see it), not an
    empty assistant turn. A row with calls is also asked up to its first call."""
    from tests.trainer_service.test_chat_format import MULTI_TURN, TOOL_ROW, smol_tokenizer
    from trainer_service.recipe.chat_format import resolve_template
    from trainer_service.recipe.run import _prompts

    with (tmp_path / "test.jsonl").open("w") as f:
        for row in (TOOL_ROW, MULTI_TURN):
            f.write(json.dumps({"messages": row}) + "\n")
    (call_prompt, tool_prompt, multi_prompt), warning = _prompts(tmp_path)
    assert warning is None
    # the tool row is also asked up to its call, which the call check reads
    assert call_prompt["messages"] == TOOL_ROW[:1] and call_prompt["tools"] is None
    assert call_prompt["calls"][0]["function"]["name"] == "get_weather"
    assert [m["role"] for m in tool_prompt] == ["user", "assistant", "tool"]
    call = tool_prompt[1]["tool_calls"][0]["function"]
    assert call == {"name": "get_weather", "arguments": {"city": "Kyoto"}}
    assert multi_prompt == MULTI_TURN[:3]
    tok = smol_tokenizer()
    text = tok.apply_chat_template(tool_prompt, chat_template=resolve_template(tok).text,
                                   tokenize=False, add_generation_prompt=True)
    assert "get_weather" in text and "Kyoto" in text



def test_sanity_checks_the_calls_of_rows_that_end_with_one(smollm2_dir, tokenizer, tmp_path):
    """A held-out row is also asked up to its first tool call, carrying the call: the
    merged model's output there must hold a parseable `<tool_call>` block. The base SmolLM2, never trained on
    calls, answers in text: counted, and a warning for the run (not a failure)."""
    from tests.trainer_service.test_chat_format import TOOL_ROW, TOOLS
    from trainer_service.recipe.run import _prompts

    (tmp_path / "test.jsonl").write_text(
        json.dumps({"messages": TOOL_ROW, "tools": TOOLS}) + "\n" + json.dumps(ROWS[1]) + "\n")
    prompts, _ = _prompts(tmp_path)
    assert [len(p["messages"]) if isinstance(p, dict) else len(p) for p in prompts] == [1, 3, 1]
    assert prompts[0]["calls"][0]["function"]["name"] == "get_weather"
    assert prompts[1]["calls"] is None  # the row's final reply
    assert prompts[2] == ROWS[1]["messages"][:1]  # a text reply: a plain prompt
    prompts = [prompts[0], prompts[2]]
    report = sanity_generate(smollm2_dir, prompts, tokenizer, EOT, max_new_tokens=24,
                             min_stop_rate=0.0)
    assert "<tool_call>" not in report.samples[0].output
    assert [s.call_parsed for s in report.samples] == [False, None]
    assert (report.call_rows, report.calls_parsed) == (1, 0)
    assert report.call_warning.startswith("1 of 1 held-out prompts that end with a tool call")
    assert report.to_json()["samples"][0]["call_parsed"] is False
    plain = sanity_generate(smollm2_dir, prompts[1:], tokenizer, EOT, max_new_tokens=24,
                            min_stop_rate=0.0)
    assert plain.call_rows == 0 and plain.call_warning is None

def test_sanity_prompts_fall_back_to_train_rows_with_a_warning(tmp_path):
    """A dataset of train rows only (allow_no_validation, no test split) still gets its
    sanity generation, on rows the model has seen, and says so; it used to fail
    `sanity_no_prompts` after the whole training."""
    from tests.trainer_service.test_chat_format import MULTI_TURN
    from trainer_service.recipe.run import SEEN_PROMPTS, _prompts

    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": MULTI_TURN}) + "\n")
    (tmp_path / "test.jsonl").write_text("")
    prompts, warning = _prompts(tmp_path)
    assert prompts == [MULTI_TURN[:3]] and warning == SEEN_PROMPTS


def test_sanity_budget_counts_thinking_and_tool_calls(tokenizer):
    """The budget is 1.5x the 95th-percentile reply, at least 64 tokens: replies with
    reasoning or tool calls count them, or a model trained to think would run out of budget
    before its answer and fail `no_stop`."""
    from tests.trainer_service.test_chat_format import TOOL_ROW
    from trainer_service.recipe.run import sanity_budget

    answer = "word " * 60  # about 60 tokens: a budget of about 91
    plain = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]]
    thinking = [[{"role": "user", "content": "q"},
                 {"role": "assistant", "content": answer, "reasoning_content": answer * 2}]]
    assert 85 <= sanity_budget(tokenizer, plain) <= 100
    assert sanity_budget(tokenizer, thinking) >= 3 * sanity_budget(tokenizer, plain) - 10
    call = json.dumps([{"type": "function", "function": {
        "name": "search", "arguments": json.dumps({"query": answer})}}])  # as stored
    only_call = [[TOOL_ROW[0], {"role": "assistant", "content": None, "tool_calls": call}]]
    assert sanity_budget(tokenizer, only_call) > sanity_budget(tokenizer, plain)
    assert sanity_budget(tokenizer, [[TOOL_ROW[0], {"role": "assistant", "content": None}]]) == 64


def test_sanity_pads_with_a_tokenizer_that_has_no_pad_token(smollm2_dir):
    """Llama 3 and Mistral tokenizers have no pad token; the batch of held-out prompts is
    padded with the end-of-turn token and the tokenizer is left as it was."""
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.pad_token = None
    report = sanity_generate(smollm2_dir, PROMPTS[:3], tok, EOT, max_new_tokens=24)
    assert len(report.samples) == 3 and report.stop_rate == 1.0
    assert tok.pad_token is None


def test_a_loop_is_blamed_on_training_only_when_the_base_stops():
    """The base stopped on 0 of 4 prompts and ran on as the trained model did, only too
    briefly to trip the detector; the message said "training taught the loop"."""
    from trainer_service.recipe.postflight import SanityReport, Sample, _against_base

    report = SanityReport(samples=[], base_samples=[Sample("p", "o", 64, False, False)] * 4,
                          base_stop_rate=0.0, base_degenerate=0, max_new_tokens=64)
    said = _against_base(report, "degenerate")
    assert "does not stop on these prompts either (0/4 within 64 tokens)" in said
    assert "taught the loop" not in said
    report.base_stop_rate = 1.0
    assert "training taught the loop" in _against_base(report, "degenerate")


def test_a_degenerate_failure_says_what_to_do():
    """Its `fix` was empty; it follows what the base did on the same prompts."""
    from trainer_service.recipe.postflight import SanityReport, Sample, _fix_for

    report = SanityReport(samples=[], base_samples=[Sample("p", "o", 64, False, True)] * 4,
                          base_stop_rate=0.0, base_degenerate=4, max_new_tokens=64)
    assert _fix_for(report, "degenerate") == ("use a larger or better-matched base model for "
                                              "these prompts")
    report.base_degenerate, report.base_stop_rate = 0, 1.0
    assert "lower the learning rate or the epochs" in _fix_for(report, "degenerate")
    report.base_stop_rate = 0.0
    assert "train more steps" in _fix_for(report, "degenerate")
    report.base_stop_rate = None
    assert "tunesmith data run" in _fix_for(report, "degenerate")
