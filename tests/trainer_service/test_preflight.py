"""Preflight on real tokenizers and weights: each planted defect fails with its code."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest

from tests.trainer_service.test_chat_format import (
    MULTI_TURN,
    TOOL_ROW,
    TOOLS,
    WITH_SYSTEM,
    qwen_tokenizer,
    smol_tokenizer,
)
from trainer_service.recipe.chat_format import align_stop_tokens, encode_row, resolve_template
from trainer_service.recipe.preflight import (PreflightError, _pack_efficiency, pack_blocks,
                                              run_preflight)

ROWS = [{"id": "a", "messages": MULTI_TURN}, {"id": "b", "messages": WITH_SYSTEM},
        {"id": "c", "messages": TOOL_ROW, "tools": TOOLS}]


@lru_cache
def smol_model():
    from transformers import AutoModelForCausalLM

    from tunesmith.models import fetch_default

    return AutoModelForCausalLM.from_pretrained(fetch_default())


def tiny_model(vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         tie_word_embeddings=False, pad_token_id=None, eos_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config)


def gen_config(*eos_ids):
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=list(eos_ids))


def qwen_args(**overrides):
    tok = qwen_tokenizer()
    args = dict(tokenizer=tok, model_config_or_model=_qwen_config(), train_rows=ROWS,
                validation_rows=ROWS[:1], template=resolve_template(tok), loss_on="all_assistant",
                max_seq_len=512, generation_config=gen_config(151645, 151643))
    args.update(overrides)
    return args


def _qwen_config():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, eos_token_id=151645)


def test_smollm2_passes_and_its_stop_token_is_trained():
    tok = smol_tokenizer()
    report = run_preflight(tok, smol_model(), ROWS, ROWS[:1], resolve_template(tok),
                           "all_assistant", 512)
    assert report.trainable_token_ids == []
    assert report.embedding_check["<|im_end|>"]["input"]["untrained"] is False
    assert report.supervised_turns == 2 + 2 + 2
    assert report.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert "[[京都移住一年目<|im_end|>]]" in report.sample
    assert json.loads(report.to_json())["loss_on"] == "all_assistant"


def test_wrong_eos_fails_and_align_stop_tokens_fixes_it():
    tok = qwen_tokenizer(eos="<|endoftext|>", fresh=True)  # Qwen2.5 base models ship this eos
    with pytest.raises(PreflightError) as err:
        run_preflight(**qwen_args(tokenizer=tok))
    assert err.value.code == "eos_not_end_of_turn" and err.value.field == "tokenizer.eos_token"
    assert err.value.fix.startswith("set align_eos: true in the spec")
    assert '"eos_token": "<|im_end|>"' in err.value.fix
    config = gen_config(151643)
    changes = align_stop_tokens(tok, config, resolve_template(tok))
    assert len(changes) == 2 and 151645 in config.eos_token_id
    assert run_preflight(**qwen_args(tokenizer=tok, generation_config=config)).eos_token == "<|im_end|>"


@pytest.mark.parametrize("family", ["gemma-2", "gemma-3", "phi-3.5"])
def test_families_whose_eos_is_not_their_end_of_turn_pass_once_aligned(family):
    """Gemma ships eos <eos> and ends turns with <end_of_turn>, Phi-3.5 <|endoftext|> and
    <|end|>: preflight names the setting (the spec's align_eos, or the tokenizer_config.json
    line); aligned, the same rows pass with the same masks, each reply supervised through
    its end of turn and nothing after it (Phi's template now closes with <|end|>, still
    outside the loss)."""
    from transformers import LlamaConfig

    from tests.trainer_service.test_chat_format import FAMILIES, family_tokenizer

    tok = family_tokenizer(family)
    eot_token = FAMILIES[family][4]
    eot, shipped = (tok.convert_tokens_to_ids(t) for t in (eot_token, tok.eos_token))
    template = resolve_template(tok)
    rows = [{"id": "a", "messages": MULTI_TURN}]
    args = dict(tokenizer=tok, model_config_or_model=LlamaConfig(vocab_size=len(tok)),
                train_rows=rows, validation_rows=rows, template=template,
                loss_on="all_assistant", max_seq_len=512, generation_config=gen_config(shipped))
    mask = encode_row(tok, template, MULTI_TURN).mask
    with pytest.raises(PreflightError) as err:
        run_preflight(**args)
    assert err.value.code == "eos_not_end_of_turn"
    assert f'"eos_token": "{eot_token}"' in err.value.fix and "align_eos: true" in err.value.fix
    assert align_stop_tokens(tok, args["generation_config"], template) == [
        f"tokenizer.eos_token: {FAMILIES[family][3]!r} -> {eot_token!r}",
        f"generation_config.eos_token_id: [{shipped}] -> [{shipped}, {eot}]"]
    report = run_preflight(**args)
    assert (report.template_source, report.end_of_turn_id, report.eos_token) == (
        "trl", eot, eot_token)
    assert encode_row(tok, template, MULTI_TURN).mask == mask
    assert report.sample.count("[[") == 2 and f"[[京都移住一年目{eot_token}]]" in report.sample
    if family == "phi-3.5":
        assert report.sample.endswith(f"]]\n{eot_token}")  # the template's closing eos


def test_gemma4_tool_rows_need_their_call_token_to_stop_generation():
    """Gemma 4 closes a call with <|tool_response>; as shipped, its generation config stops
    on it ([<eos>, <turn|>, <|tool_response>]). A base without it would run on after a call
    and write the tool's result itself: preflight names the token, align_eos adds it, and
    rows without calls do not need it."""
    from transformers import LlamaConfig

    from tests.trainer_service.test_chat_format import TOOL_ROW, TOOLS, gemma4_tokenizer

    tok = gemma4_tokenizer()
    template = resolve_template(tok)
    eos, eot, call = (tok.convert_tokens_to_ids(t) for t in ("<eos>", "<turn|>",
                                                             "<|tool_response>"))
    tok.eos_token = "<turn|>"
    rows = [{"id": "t", "messages": TOOL_ROW, "tools": TOOLS},
            {"id": "a", "messages": MULTI_TURN}]
    args = dict(tokenizer=tok, model_config_or_model=LlamaConfig(vocab_size=len(tok)),
                train_rows=rows, validation_rows=rows, template=template,
                loss_on="all_assistant", max_seq_len=512, generation_config=gen_config(eos, eot))
    with pytest.raises(PreflightError) as err:
        run_preflight(**args)
    assert err.value.code == "generation_eos_missing"
    assert "'<|tool_response>'" in err.value.message and "1 supervised turns end" in err.value.message
    assert run_preflight(**{**args, "train_rows": rows[1:]}).call_turns == 0  # no calls
    assert align_stop_tokens(tok, args["generation_config"], template) == [
        f"generation_config.eos_token_id: [{eos}, {eot}] -> [{eos}, {eot}, {call}]"]
    report = run_preflight(**args)
    assert (report.call_end_token, report.call_turns, report.supervised_turns) == (
        "<|tool_response>", 1, 4)
    assert "<tool_call|><|tool_response>]]response:get_weather" in report.sample


def test_generation_config_without_end_of_turn_fails():
    with pytest.raises(PreflightError) as err:
        run_preflight(**qwen_args(generation_config=gen_config(151643)))
    assert err.value.code == "generation_eos_missing"
    assert "151645" in err.value.fix


def test_missing_validation_fails_unless_allowed():
    for empty in (None, []):
        with pytest.raises(PreflightError) as err:
            run_preflight(**qwen_args(validation_rows=empty))
        assert err.value.code == "no_validation"
    report = run_preflight(**qwen_args(validation_rows=None, allow_no_validation=True))
    assert any("NO VALIDATION" in w for w in report.warnings)


def test_generation_markers_around_the_header_put_prompt_in_mask(tmp_path):
    tok = qwen_tokenizer()
    good = resolve_template(tok).text
    bad = good.replace("{{- '<|im_start|>assistant\\n' }}\n        {%- generation %}",
                       "{%- generation %}\n        {{- '<|im_start|>assistant\\n' }}")
    assert bad != good
    path = tmp_path / "bad.jinja"
    path.write_text(bad)
    with pytest.raises(PreflightError) as err:
        run_preflight(**qwen_args(template=resolve_template(tok, str(path))))
    assert err.value.code == "prompt_in_mask" and "assistant" in err.value.message


def test_end_of_turn_outside_the_markers_fails(tmp_path):
    tok = qwen_tokenizer()
    good = resolve_template(tok).text
    bad = good.replace("{{- '<|im_end|>' }}\n        {%- endgeneration %}",
                       "{%- endgeneration %}\n        {{- '<|im_end|>' }}")
    assert bad != good
    path = tmp_path / "bad.jinja"
    path.write_text(bad)
    with pytest.raises(PreflightError) as err:
        run_preflight(**qwen_args(template=resolve_template(tok, str(path))))
    assert err.value.code == "end_of_turn_not_in_mask"


def test_untrained_stop_token_becomes_trainable_with_a_warning():
    import torch

    tok = smol_tokenizer()
    template = resolve_template(tok)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    healthy = tiny_model(len(tok))
    report = run_preflight(tok, healthy, ROWS[:2], ROWS[:1], template, "all_assistant", 512)
    assert report.trainable_token_ids == []
    planted = tiny_model(len(tok))
    with torch.no_grad():  # as in Qwen2.5 base: rows left at the initialisation mean / zero
        emb = planted.get_input_embeddings().weight
        emb[eot] = emb[1000:40000].mean(dim=0)
        planted.get_output_embeddings().weight[eot] = 0.0
    report = run_preflight(tok, planted, ROWS[:2], ROWS[:1], template, "all_assistant", 512)
    assert report.trainable_token_ids == [eot]
    check = report.embedding_check["<|im_end|>"]
    assert check["input"]["untrained"] and check["output"]["untrained"]
    assert any("trainable_token_indices" in w for w in report.warnings)


@pytest.mark.parametrize("tie", [False, True])
def test_embedding_rows_read_alone_from_safetensors(tmp_path, tie):
    """The check reads only the two embedding matrices from the saved shards (any model
    size), and still finds a planted untrained stop token."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer_service.recipe.preflight import read_embedding_rows

    tok = smol_tokenizer()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tie))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[eot] = emb[1000:40000].mean(dim=0)
        if not tie:
            model.get_output_embeddings().weight[eot] = 0.0
    model.save_pretrained(tmp_path, max_shard_size="1MB")  # several shards and an index
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    rows = read_embedding_rows(tmp_path)
    assert torch.equal(rows.input, model.get_input_embeddings().weight.detach())
    if tie:
        assert rows.output is None
    else:
        assert torch.equal(rows.output, model.get_output_embeddings().weight.detach())
    report = run_preflight(tok, rows, ROWS[:2], ROWS[:1], resolve_template(tok),
                           "all_assistant", 512, generation_config=gen_config(eot))
    assert report.trainable_token_ids == [eot]
    assert report.embedding_check["<|im_end|>"]["input"]["untrained"]
    assert ("tied" in report.embedding_check["<|im_end|>"]["output"]) == tie


def test_embedding_check_that_cannot_run_is_a_warning(tmp_path):
    from transformers import LlamaConfig

    from trainer_service.recipe.preflight import read_embedding_rows

    LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1).save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(LookupError, match="no .safetensors weights") as err:
        read_embedding_rows(tmp_path)
    with pytest.raises(LookupError, match="not a local folder"):
        read_embedding_rows(tmp_path / "Qwen" / "Qwen2.5-7B")
    report = run_preflight(**qwen_args(embedding_skip=str(err.value)))
    assert report.embedding_check == {"skipped": str(err.value)}
    assert any("embedding check skipped" in w and "no .safetensors" in w
               for w in report.warnings)


def test_tools_the_template_does_not_render_are_a_warning(tmp_path):
    """A row's `tools` reach the template; one that ignores them trains the calls without
    the definitions, and preflight says so (ours and Qwen's render them)."""
    tok = qwen_tokenizer()
    report = run_preflight(**qwen_args())
    assert not any("offer tools" in w for w in report.warnings)
    assert "Weather for a city." in encode_row(tok, resolve_template(tok), TOOL_ROW,
                                               "all_assistant", TOOLS).text
    path = tmp_path / "no_tools.jinja"
    path.write_text("{%- set tools = none %}" + resolve_template(tok).text)
    report = run_preflight(**qwen_args(template=resolve_template(tok, str(path)),
                                       train_rows=ROWS + ROWS[2:]))
    assert any(w.startswith("2 rows offer tools that the template does not render")
               for w in report.warnings)


def test_reasoning_the_template_drops_is_a_warning():
    """Qwen3's rule renders reasoning only after the last user message: an earlier turn's
    reasoning is not trained, and preflight says how many turns lose it."""
    from trainer_service.recipe.chat_format import _chatml, chatml_template

    template = _chatml(chatml_template(None, think_blocks=True), "chatml", True)
    row = [{"role": "user", "content": "2+2?"},
           {"role": "assistant", "content": "4", "reasoning_content": "early thought"},
           {"role": "user", "content": "3+3?"},
           {"role": "assistant", "content": "6", "reasoning_content": "add three twice"}]
    report = run_preflight(**qwen_args(template=template, train_rows=[row, row]))
    assert any(w.startswith("2 assistant turns have reasoning_content that the template does "
                            "not render") for w in report.warnings)
    kept = [row[0], row[3]]  # reasoning only on the last turn: all of it rendered
    report = run_preflight(**qwen_args(template=template, train_rows=[kept]))
    assert not any("reasoning_content" in w for w in report.warnings)


def test_stats_tokens_truncation_and_packing():
    tok = qwen_tokenizer()
    template = resolve_template(tok)
    lengths = [len(encode_row(tok, template, r["messages"], "all_assistant", r.get("tools")).input_ids)
               for r in ROWS]
    report = run_preflight(**qwen_args(max_seq_len=4096))
    assert report.tokens_per_row["min"] == min(lengths)
    assert report.tokens_per_row["max"] == max(lengths)
    assert report.tokens_per_row["median"] == sorted(lengths)[1]
    assert report.truncated_rows == 0
    cut = max(lengths) - 3  # the longest row loses its final reply's stop token
    assert sorted(lengths)[1] <= cut
    report = run_preflight(**qwen_args(max_seq_len=cut, packing=True))
    assert report.truncated_rows == 1
    assert report.truncation_rate == pytest.approx(1 / 3)
    assert any("lose supervised tokens" in w for w in report.warnings)
    assert 0 < report.packing_efficiency <= 1


def test_reply_tokens_count_the_rendered_turns():
    """Each supervised turn as the model generates it: the thinking block's tags and the stop
    token count (the run's sanity-generation budget comes from these lengths)."""
    from trainer_service.recipe.chat_format import _chatml, chatml_template

    tok = qwen_tokenizer()
    template = _chatml(chatml_template(None, think_blocks=True), "chatml", True)
    reply = "It is 4."
    plain = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": reply}]
    thinking = [plain[0], {**plain[1], "reasoning_content": "two and two make four"}]
    report = run_preflight(**qwen_args(train_rows=[plain]))  # Qwen2.5's: no thinking blocks
    assert report.reply_tokens["max"] == len(tok.encode(reply)) + 1  # + <|im_end|>
    report = run_preflight(**qwen_args(template=template, train_rows=[thinking, plain, plain]))
    assert report.reply_tokens["max"] == len(tok.encode(
        "<think>\ntwo and two make four\n</think>\n\nIt is 4.<|im_end|>"))
    # a last reply without reasoning is rendered (and trained) with an empty block
    assert report.reply_tokens["median"] == len(tok.encode(
        "<think>\n\n</think>\n\nIt is 4.<|im_end|>"))
    report = run_preflight(**qwen_args(train_rows=[{"messages": MULTI_TURN}]))
    turns = [len(tok.encode(m["content"])) + 1 for m in MULTI_TURN if m["role"] == "assistant"]
    assert report.reply_tokens["max"] == max(turns)  # one run per turn, not one per row
    assert report.reply_tokens["median"] == sum(turns) / 2


def test_packing_efficiency_best_fit_decreasing_and_padding():
    assert _pack_efficiency([6, 5, 4, 3, 2], 10, True, 8) == pytest.approx(1.0)
    assert pack_blocks([12, 3, 0], 10) == 2  # cut to 10; an empty row takes no block
    # blocks never mix rows of two 1,000-row batches (TRL packs in a batched map)
    assert pack_blocks([5] * 999 + [9, 5], 10) == 502
    assert _pack_efficiency([7, 7, 7], 10, True, 8) == pytest.approx(0.7)
    # unpacked: each batch pads to its longest row
    assert _pack_efficiency([10, 2, 4, 4], 16, False, 2) == pytest.approx(20 / 28)
