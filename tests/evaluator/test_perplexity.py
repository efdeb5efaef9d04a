"""Assistant-only perplexity: the mask, the maths, and server == local on one model."""

from __future__ import annotations

import math

import pytest

from evaluator.data import EvalError, to_row
from evaluator.perplexity import (Encoded, encode_rows, load_local, local_logprobs,
                                  server_logprobs, summarize)

ROWS = [to_row({"id": f"r{i}", "source": src, "messages": messages}, f"x:{i}")
        for i, (src, messages) in enumerate([
            ("en", [{"role": "user", "content": "Name a colour."},
                    {"role": "assistant", "content": "Blue."}]),
            ("en", [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2? Answer with a digit."},
                    {"role": "assistant", "content": "4"}]),
            ("ja", [{"role": "user", "content": "タイトルを付けてください。桜が満開です。"},
                    {"role": "assistant", "content": "満開の桜"},
                    {"role": "user", "content": "もっと短く"},
                    {"role": "assistant", "content": "桜"}]),
            ("ja", [{"role": "user", "content": "no reply yet"}]),
        ])]


def test_mask_covers_replies_and_end_of_turn_but_no_prompt_token(chat_tokenizer):
    encoded = encode_rows(chat_tokenizer, ROWS)
    first = encoded[0]
    scored = chat_tokenizer.decode([t for t, m in zip(first.ids, first.mask) if m])
    assert scored == "Blue.<|im_end|>"
    both = chat_tokenizer.decode([t for t, m in zip(encoded[2].ids, encoded[2].mask) if m])
    assert both == "満開の桜<|im_end|>桜<|im_end|>"
    assert encoded[3].scored == 0  # a row without a reply is rendered but scores nothing


def test_tool_rows_are_scored_as_they_trained_and_asked_as_openai_requests(chat_tokenizer):
    """A tool-calling row: perplexity renders what training rendered (the call, the tools'
    definitions, reasoning), and the prompt is a valid OpenAI request (call ids, arguments
    as JSON text); the flattened copy scored an empty call turn."""
    from tests.trainer_service.test_chat_format import TOOL_ROW, TOOLS
    from trainer_service.recipe.chat_format import encode_row, resolve_template

    calls = [{"id": "c1", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": "Kyoto"}}}]
    messages = [TOOL_ROW[0], {**TOOL_ROW[1], "tool_calls": calls},
                {**TOOL_ROW[2], "tool_call_id": "c1", "name": "get_weather"},
                {**TOOL_ROW[3], "reasoning_content": "The tool said sunny."}]
    row = to_row({"id": "t", "messages": messages, "tools": TOOLS}, "x:1")
    assert row.tools == TOOLS and row.reference == "Sunny in Kyoto."
    assert row.prompt[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Kyoto"}'}}]}
    assert row.prompt[2] == {"role": "tool", "content": TOOL_ROW[2]["content"],
                             "tool_call_id": "c1", "name": "get_weather"}
    assert row.messages[3]["reasoning_content"] == "The tool said sunny."
    (encoded,) = encode_rows(chat_tokenizer, [row])
    trained = encode_row(chat_tokenizer, resolve_template(chat_tokenizer), messages,
                         tools=TOOLS)
    assert (encoded.ids, encoded.mask) == (trained.input_ids, trained.mask)
    scored = chat_tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if m])
    assert '"name": "get_weather"' in scored and "Weather for a city." in trained.text
    for bad in ({"f": 1}, ["f"], "[oops"):
        with pytest.raises(EvalError, match="tools"):
            to_row({"messages": messages, "tools": bad}, "x:2")


def test_summary_is_token_weighted_and_per_source():
    encoded = [Encoded("a", "x", [1, 2, 3], [0, 1, 1]), Encoded("b", "y", [1, 2], [0, 1]),
               Encoded("c", "y", [1, 2], [0, 0])]
    logprobs = [[None, -1.0, -3.0], [None, -2.0], [None, -9.0]]
    summary = summarize(encoded, logprobs, "local")
    assert summary["tokens"] == 3 and summary["rows"] == 2
    assert summary["ppl"] == pytest.approx(math.exp(6.0 / 3))
    assert summary["by_source"]["x"]["ppl"] == pytest.approx(math.exp(2.0))
    assert summary["by_source"]["y"] == {"ppl": pytest.approx(math.exp(2.0)), "tokens": 1,
                                         "rows": 1}
    with pytest.raises(EvalError) as none:
        summarize(encoded[2:], logprobs[2:], "local")
    assert none.value.code == "no_assistant_tokens"


def test_local_batches_equal_single_rows(tiny_model_dir, chat_tokenizer):
    model = load_local(tiny_model_dir, dtype="float32")
    encoded = encode_rows(chat_tokenizer, ROWS)
    batched = local_logprobs(model, encoded, batch_rows=4)
    single = local_logprobs(model, encoded, batch_rows=1)
    for b, s in zip(batched, single):
        assert b[0] is None and len(b) == len(s)
        assert b[1:] == pytest.approx(s[1:], abs=1e-4)


def test_local_scores_a_bf16_checkpoint_in_float32_on_cpu(tiny_model_dir, chat_tokenizer,
                                                          tmp_path):
    """A merged folder is saved in bf16; `--ppl local` scored it in bf16, 0.2-0.4% off the
    server (float32 on CPU) and different with each batch size."""
    import torch
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16) \
        .save_pretrained(bf16)
    model = load_local(bf16)
    assert model.dtype == torch.float32
    encoded = encode_rows(chat_tokenizer, ROWS)
    batched = local_logprobs(model, encoded, batch_rows=4)
    single = local_logprobs(model, encoded, batch_rows=1)
    for b, s in zip(batched, single):
        assert b[1:] == pytest.approx(s[1:], abs=1e-4)


def test_a_server_error_is_one_short_line():
    """llama.cpp's server answers echo + logprobs with a 500 whose body is a ~1 KB pydantic
    report; the error shows its start on one line."""
    from evaluator.perplexity import _short

    body = "1 validation error for CreateCompletionRequest\nprompt\n" + "  detail " * 200
    short = _short(ValueError(body))
    assert short.startswith("bad_response: 1 validation error for CreateCompletionRequest prompt")
    assert "\n" not in short and len(short) < 300 and short.endswith("...")


@pytest.mark.slow
def test_perplexity_through_the_server_equals_the_local_forward_pass(tiny_model_dir,
                                                                     chat_tokenizer):
    from evaluator.serving import serve_model

    encoded = encode_rows(chat_tokenizer, ROWS)
    local = summarize(encoded, local_logprobs(load_local(tiny_model_dir, dtype="float32"),
                                              encoded), "local")
    with serve_model(tiny_model_dir, backend="transformers", dtype="float32") as server:
        remote = summarize(encoded, server_logprobs(server.base_url, server.name, encoded,
                                                    batch_rows=3), "server")
        with pytest.raises(EvalError) as wrong:
            server_logprobs(server.base_url, "not-served", encoded[:1])
        assert wrong.value.code == "server_logprobs_failed"
        assert "--ppl local" in wrong.value.message and len(wrong.value.message) < 600
    assert remote["tokens"] == local["tokens"] > 0
    assert remote["ppl"] == pytest.approx(local["ppl"], rel=1e-4)
    for source, numbers in local["by_source"].items():
        assert remote["by_source"][source]["ppl"] == pytest.approx(numbers["ppl"], rel=1e-4)
