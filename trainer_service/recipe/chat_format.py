"""The training chat format: which template renders rows, and which tokens carry the loss.

The founding failure was a Qwen fine-tune that never learned `<|im_end|>`: the stop token
sat outside the loss mask, so generation never stopped. Here the template is resolved so
that every supervised assistant turn includes its end-of-turn token inside `{% generation %}`
markers, and the mask is computed twice: once from those markers (what TRL's
`assistant_only_loss` trains on) and once independently from the rendered text's structure,
so that preflight can compare the two. A model whose template nobody has marked (Mistral's,
Granite's, a newer Qwen's) trains on its own template with the mask from the structure
alone (`markers=False`): each reply is what its turn adds to the rendered conversation.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_engine.readers.formats import tool_definitions
from trainer_service.recipe.errors import ChatFormatError

TEMPLATES_DIR = Path(__file__).with_name("templates")
CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"
LOSS_ON = ("all_assistant", "last_assistant")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Conversations the resolver renders with both the model's template and ours: any difference
# in an inference prompt means the fine-tune would be served a format it was not trained on.
_PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "one"},
     {"role": "assistant", "content": "1"}, {"role": "user", "content": "two"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
]


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved training template and the control tokens it relies on."""

    text: str
    source: str  # "model" | "chatml" | "trl" | "model+markers" | "model+turns" | a file path
    end_of_turn: str  # the token every assistant turn ends with, which must be the eos token
    turn_start: str | None = None  # ChatML's <|im_start|>; None for other formats
    assistant_header: str | None = None  # the prompt text before an assistant reply
    supports_reasoning: bool = False
    # False: the text has no generation markers, and the loss mask is the structural one
    # (the model's own template, source "model+turns")
    markers: bool = True
    # the token a reply that ends in tool calls closes with, where it is not end_of_turn:
    # Gemma 4 ends a call with <|tool_response>, after which the tool's result is written
    # into the same model turn (its generation config stops on it); None elsewhere
    call_end: str | None = None

    @property
    def stop_tokens(self) -> list[str]:
        """The tokens a supervised reply may end with, which generation must stop on."""
        return [self.end_of_turn] + ([self.call_end] if self.call_end else [])

    def closing(self, message: dict[str, Any]) -> str:
        """The token an assistant turn closes with: call_end after tool calls, if any."""
        return self.call_end if self.call_end and message.get("tool_calls") else self.end_of_turn


@dataclass
class EncodedRow:
    """One rendered, tokenized row with its loss masks (1 = supervised)."""

    text: str
    input_ids: list[int]
    mask: list[int]  # from the template's generation markers, loss_on applied: what trains
    expected_mask: list[int]  # computed independently from the text's structure
    offsets: list[tuple[int, int]]
    spans: list[tuple[int, int]]  # supervised character spans (expected), one per turn
    headers: list[tuple[int, int]] = field(default_factory=list)  # assistant prompt headers


def has_generation_markers(template: str) -> bool:
    return bool(_GENERATION_TAG.search(template))


def _is_chatml(template: str) -> bool:
    return CHATML_START in template and CHATML_END in template


def _render(tokenizer, messages, template: str, add_generation_prompt=False, tools=None, **kw):
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template,
                                         tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kw)


def _default_system(tokenizer, model_template: str) -> str | None:
    """The system prompt the model's template inserts when a conversation has none."""
    try:
        text = _render(tokenizer, [{"role": "user", "content": "Hi there"}], model_template)
    except Exception:  # it rejects a plain conversation: check_renders_like finds nothing alike
        return None
    head = CHATML_START + "system\n"
    if not text.startswith(head):
        return None
    end = text.find(CHATML_END + "\n" + CHATML_START + "user", len(head))
    return text[len(head):end] if end >= 0 else None


def chatml_template(default_system: str | None = None, think_blocks: bool = False) -> str:
    """Our ChatML training template with the model's default system prompt baked in."""
    body = (TEMPLATES_DIR / "chatml.jinja").read_text(encoding="utf-8")
    # A Jinja string literal is decoded with unicode-escape after backslash-replacing
    # non-ASCII, so JSON escapes with ensure_ascii=False round-trip any text.
    literal = "none" if default_system is None else json.dumps(default_system, ensure_ascii=False)
    head = (f"{{%- set default_system = {literal} %}}"
            f"{{%- set think_blocks = {'true' if think_blocks else 'false'} %}}")
    return head + body


def _chatml(text: str, source: str, think: bool) -> ChatTemplate:
    return ChatTemplate(text=text, source=source, end_of_turn=CHATML_END, turn_start=CHATML_START,
                        assistant_header=CHATML_START + "assistant\n", supports_reasoning=think)


def _from_text(text: str, source: str, tokenizer) -> ChatTemplate:
    if not has_generation_markers(text):
        raise ChatFormatError(
            "template_without_generation", f"{source} has no {{% generation %}} markers, so "
            "assistant-only loss cannot find the replies.",
            fix="wrap each assistant reply and its end-of-turn token in {% generation %}..."
                "{% endgeneration %}, or use chat_template: chatml")
    if _is_chatml(text):
        return _chatml(text, source, "<think>" in text)
    eot = end_of_turn(tokenizer, text)
    return ChatTemplate(text=text, source=source, end_of_turn=eot,
                        supports_reasoning="reasoning_content" in text,
                        call_end=_call_end(tokenizer, text, eot))


_PROBE_REPLY = "Zephyr quartz 7"


def end_of_turn(tokenizer, template: str) -> str:
    """The token the template closes an assistant reply with: the special token right after
    a rendered reply (Llama 3's <|eot_id|>, Gemma's <end_of_turn>, Phi-3's <|end|>, ChatML's
    <|im_end|>), which need not be the tokenizer's eos (Gemma's is <eos>); the eos token
    when no special token follows the reply (the checks downstream then name the problem)."""
    return _token_after_reply(tokenizer, template) or tokenizer.eos_token


def _token_after_reply(tokenizer, template: str) -> str | None:
    """The special token right after a rendered reply, or None (no special token follows
    it, or the template rejects a one-turn conversation)."""
    try:
        text = _render(tokenizer, [{"role": "user", "content": "Hi there"},
                                   {"role": "assistant", "content": _PROBE_REPLY}], template)
    except Exception:  # a template that rejects this shape: leave it to the checks
        return None
    at = text.rfind(_PROBE_REPLY)
    after = text[at + len(_PROBE_REPLY):].lstrip(" ") if at >= 0 else ""
    found = [t for t in _specials(tokenizer) if after.startswith(t)]
    return max(found, key=len) if found else None


_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _specials(tokenizer) -> frozenset[str]:
    """The tokenizer's special tokens, added ones included (kept per tokenizer while its
    vocabulary and special tokens stay as they were: read once per turn of every row)."""
    key = (len(tokenizer), tuple(tokenizer.all_special_tokens))
    cached = _SPECIALS.get(tokenizer)
    if cached is None or cached[0] != key:
        found = frozenset(t for t in set(tokenizer.all_special_tokens) | {
            t.content for t in tokenizer.added_tokens_decoder.values() if t.special} if t)
        cached = _SPECIALS[tokenizer] = (key, found)
    return cached[1]


def _call_end(tokenizer, template: str, eot: str | None) -> str | None:
    """The special token that closes a reply ending in a tool call, where it is not ``eot``
    (Gemma 4's <|tool_response>); None where calls end like any reply, or the template
    renders none: the last special token that a conversation ending with the call and the
    same one followed by the tool's result both render after the call."""
    try:
        alone = _render(tokenizer, _CALL_PROBE[:2], template, False, _CALL_TOOLS)
        answered = _render(tokenizer, _CALL_PROBE[:3], template, False, _CALL_TOOLS)
    except Exception:  # a template without tool calls
        return None
    called = alone.rfind("get_weather")
    after, shared = called + len("get_weather"), _common_prefix(alone, answered)
    if called < alone.rfind(_CALL_PROBE[0]["content"]) or shared <= after:
        return None  # no call rendered after the question, or not alike: nothing to read
    # the last special token the two share after the call (the shared text may end inside
    # one, where the next turn's header starts like the conversation's closing token)
    ends = [(i + len(t), t) for t in _specials(tokenizer)
            for i in _occurrences(alone, t, after) if i + len(t) <= shared]
    if not ends:
        return None
    end, token = max(ends, key=lambda e: (e[0], len(e[1])))
    if alone[end:shared].strip() and not any(t.startswith(alone[end:shared].strip())
                                             for t in _specials(tokenizer)):
        return None  # text, not a closing token, ends what the two share
    return token if token != eot else None


def _occurrences(text: str, token: str, start: int) -> list[int]:
    """Where ``token`` occurs in ``text`` from ``start`` on."""
    found, at = [], text.find(token, start)
    while at >= 0:
        found.append(at)
        at = text.find(token, at + 1)
    return found


def through_end_of_turn(ids: list[int], mask: list[int], stop_ids: int | set[int]) -> list[int]:
    """The loss mask with each supervised run cut after its end-of-turn token (any of
    ``stop_ids``, `ChatTemplate.stop_tokens`' ids): what a template's generation block holds
    past it (Gemma's newline, Phi-3's closing eos) is never generated, since generation stops
    at the end of turn, so it carries no loss."""
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids)
    out, ended = list(mask), False
    for i, (token, bit) in enumerate(zip(ids, mask)):
        if not bit:
            ended = False
        elif ended:
            out[i] = 0
        elif token in stops:
            ended = True
    return out


def resolve_template(tokenizer, spec: str = "auto", check: bool = True) -> ChatTemplate:
    """The training template for `spec`: auto | chatml | a path to a .jinja file.

    auto, in order: the model's own template when it has generation markers; for ChatML
    models ours; TRL's training variant of the model's template where TRL has one, or (Llama
    3.1-3.3) the model's own with markers added; each checked to render the model's inference
    prompts byte for byte. When none is there or renders alike, the model's own template with
    masks from its turns (`model+turns`), when a special token closes each reply and the
    replies can be located; else an error.
    """
    model_template = model_chat_template(tokenizer)
    if spec not in ("auto", "chatml"):
        path = Path(spec)
        if not path.is_file():
            raise ChatFormatError("template_not_found", f"{spec} is not a file",
                                  fix="pass auto, chatml or the path of a .jinja file")
        return _from_text(path.read_text(encoding="utf-8"), str(path), tokenizer)
    if spec == "auto" and model_template and has_generation_markers(model_template):
        return _from_text(model_template, "model", tokenizer)
    vocab = tokenizer.get_vocab()
    chatml_model = (_is_chatml(model_template) if model_template
                    else CHATML_START in vocab and CHATML_END in vocab)
    if spec == "auto" and not chatml_model:
        if model_template is None:
            raise ChatFormatError(
                "no_chat_template", "the model's tokenizer has no chat template (a base model's "
                "often has none) and no ChatML tokens, so nothing says how a conversation is "
                "written for it", fix="pass chat_template: path/to/template.jinja, the format the "
                "fine-tune should speak, with {% generation %}...{% endgeneration %} around each "
                "assistant reply and its end-of-turn token (a token of this tokenizer)")
        return _marked_variant(tokenizer, model_template, check) or _by_turns(tokenizer,
                                                                              model_template)
    if CHATML_START not in vocab or CHATML_END not in vocab:
        raise ChatFormatError("chatml_tokens_missing", "the tokenizer has no <|im_start|>/<|im_end|> "
                              "tokens", fix="use the model's own template via a .jinja path")
    default_system = _default_system(tokenizer, model_template) if model_template else None
    think = bool(model_template) and "<think>" in model_template
    template = _chatml(chatml_template(default_system, think), "chatml", think)
    if check and model_template:
        try:
            check_renders_like(tokenizer, template.text, model_template)
        except ChatFormatError as mismatch:  # a ChatML model ours does not render alike
            if spec != "auto":
                raise
            return _marked_variant(tokenizer, model_template, check) or _by_turns(
                tokenizer, model_template, mismatch)
    return template


def _marked_variant(tokenizer, model_template: str, check: bool) -> ChatTemplate | None:
    """TRL's training variant of the model's template, or Llama 3.1-3.3's own with markers
    added, when there is one and (with `check`) it renders like the model's, tool calls
    included; else None."""
    source, text = "trl", _trl_training_template(tokenizer)
    if text is None:
        source, text = "model+markers", llama3_markers(model_template)
    if text is None:
        return None
    template = _from_text(text, source, tokenizer)
    if check:
        try:
            check_renders_like(tokenizer, template.text, model_template, calls=True)
        except ChatFormatError:
            return None  # the model's own template, by its turns, is what it is served with
    return template


# Conversations whose replies `_by_turns` must locate before it takes a template.
_TURN_PROBES = [[{"role": "user", "content": "Hi there"},
                 {"role": "assistant", "content": "Hello"}], _PROBES[3]]


def _by_turns(tokenizer, model_template: str,
              mismatch: ChatFormatError | None = None) -> ChatTemplate:
    """The model's own template, unchanged, with each reply located by rendering the
    conversation turn by turn (ChatML: after each assistant header) and supervised through
    the special token that closes it: what the model is served with, with no markers to
    cross-check the mask. Raises `template_unsupported` (or ``mismatch``, the reason ours
    was refused) when no special token closes a reply or the replies cannot be located."""
    eot = _token_after_reply(tokenizer, model_template)
    why = None
    if eot is None:
        why = "no special token follows an assistant reply, so a fine-tune could not learn to stop"
    else:
        if _is_chatml(model_template) and eot == CHATML_END:
            template = ChatTemplate(
                text=model_template, source="model+turns", end_of_turn=eot,
                turn_start=CHATML_START, assistant_header=CHATML_START + "assistant\n",
                supports_reasoning="<think>" in model_template, markers=False)
        else:
            template = ChatTemplate(text=model_template, source="model+turns", end_of_turn=eot,
                                    supports_reasoning="reasoning_content" in model_template,
                                    markers=False,
                                    call_end=_call_end(tokenizer, model_template, eot))
        try:
            for messages in _TURN_PROBES:
                text = _render(tokenizer, messages, model_template)
                _structural_spans(tokenizer, template, messages, text, None)
            return template
        except Exception as err:  # a ChatFormatError, or the template rejecting a probe
            why = f"its replies cannot be located turn by turn ({err})"
    if mismatch is not None:
        raise mismatch
    raise ChatFormatError(
        "template_unsupported", f"the model's chat template has no {{% generation %}} markers, "
        f"neither TRL nor tunesmith has a training variant of it, and {why}, so tunesmith "
        "cannot tell which tokens are the assistant's.",
        fix="pass chat_template: path/to/template.jinja, a copy of the model's template with "
            "{% generation %}...{% endgeneration %} around each assistant reply and its "
            "end-of-turn token")


def model_chat_template(tokenizer) -> str | None:
    """The tokenizer's chat template; of a tokenizer with several named ones (Hermes 2 Pro and
    3, Command R: `default` and `tool_use`), the `default` one, which renders a conversation
    without tools."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) else None


def _trl_training_template(tokenizer) -> str | None:
    """TRL's training variant of the model's template (Llama 3, Gemma, Gemma 3, Phi-3,
    DeepSeek, GLM-4, GPT-OSS, LFM2, ... each the model's template with generation markers),
    or None when TRL has none for it."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # "patching is not supported for this template"
        return None
    except Exception:  # TRL renders the template to match it, and this one raised
        return None


_CALL_PROBE = [{"role": "user", "content": "Weather in Kyoto?"},
               {"role": "assistant", "content": "", "tool_calls": [{
                   "type": "function", "id": "call00001",  # Mistral's template takes 9-character ids
                   "function": {"name": "get_weather", "arguments": {"city": "Kyoto"}}}]},
               {"role": "tool", "tool_call_id": "call00001", "content": "{\"sky\": \"sunny\"}"},
               {"role": "user", "content": "And tomorrow?"}]
_CALL_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


# Llama 3.1-3.3's template (Meta's, as the models ship it) renders every plain turn, the
# assistant's included, in one expression, and a tool call in a branch of its own. Markers
# are added to the model's own text: that expression is split by role, and the tool-call
# branch wrapped after its header. resolve_template then checks the result renders prompts
# (tool calls included) exactly as the model's own does.
_LLAMA3_TURN = ("{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
                "message['content'] | trim + '<|eot_id|>' }}")
_LLAMA3_MARKED_TURN = (
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}{%- generation %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}")
_LLAMA3_HEADER = "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
_LLAMA3_CALL = "{%- set tool_call = message.tool_calls[0].function %}"
_LLAMA3_AFTER_CALL = '{%- elif message.role == "tool" or message.role == "ipython" %}'


def llama3_markers(template: str) -> str | None:
    """Llama 3.1-3.3's template with `{% generation %}` markers around each assistant reply
    and tool call (through its <|eot_id|>), or None when `template` is not of that shape."""
    if any(template.count(part) != 1 for part in (_LLAMA3_TURN, _LLAMA3_CALL,
                                                  _LLAMA3_AFTER_CALL)):
        return None
    start = template.index(_LLAMA3_CALL) + len(_LLAMA3_CALL)
    end = template.index(_LLAMA3_AFTER_CALL)
    call = template[start:end]
    if start > end or _LLAMA3_HEADER not in call:
        return None
    # the header first, once, then the call's own text (which each of its branches began with
    # that header) inside the markers
    marked = (template[:start] + _LLAMA3_HEADER + "{%- generation %}"
              + call.replace(_LLAMA3_HEADER, "") + "{%- endgeneration %}" + template[end:])
    return marked.replace(_LLAMA3_TURN, _LLAMA3_MARKED_TURN)


def check_renders_like(tokenizer, ours: str, theirs: str, calls: bool = False) -> None:
    """Raise unless `ours` renders the probe conversations exactly like `theirs` (with
    `calls`, also a conversation with a tool call and tool definitions)."""
    probes = [(m, None) for m in _PROBES] + ([(_CALL_PROBE, _CALL_TOOLS)] if calls else [])
    compared = 0
    for messages, tools in probes:
        for gen in (True, False):
            if gen and messages[-1]["role"] == "assistant":
                continue
            try:
                expected = _render(tokenizer, messages, theirs, gen, tools)
            except Exception:  # the model's template rejects this shape: nothing to compare
                continue
            compared += 1
            try:
                got = _render(tokenizer, messages, ours, gen, tools)
            except Exception as err:
                raise ChatFormatError(
                    "template_mismatch", f"the training template fails on a conversation the "
                    f"model's own renders: {err}", fix="pass chat_template: path/to/template.jinja, "
                    "the model's own template with {% generation %} markers added") from err
            if got != expected:
                at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                          min(len(got), len(expected)))
                raise ChatFormatError(
                    "template_mismatch", f"the training template renders differently from the "
                    f"model's at character {at}: {got[at:at + 40]!r} vs {expected[at:at + 40]!r}",
                    fix="pass chat_template: path/to/template.jinja, the model's own template with "
                        "{% generation %} markers added")
    if not compared:
        raise ChatFormatError(
            "template_mismatch", "the model's own template renders none of the probe "
            "conversations (a plain exchange, a system prompt, two turns), so nothing shows "
            "the training template renders what it does", fix="pass chat_template: "
            "path/to/template.jinja, the model's own template with {% generation %} markers added")


def row_parts(row: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """A dataset row's messages and the tools it offers: rows are `{"messages", "tools"?}`
    (the data engine writes `tools` as a list; JSON text is read too) or bare message lists."""
    if not isinstance(row, dict):
        return row, None
    return row["messages"], tool_definitions(row.get("tools"))


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dataset messages as templates expect them: null fields dropped, tool calls parsed."""
    out = []
    for message in messages:
        m = {k: v for k, v in message.items() if v is not None}
        calls = m.get("tool_calls")
        if isinstance(calls, str):
            calls = json.loads(calls) if calls.strip() else None
        if calls:
            parsed = []
            for call in calls:
                call = dict(call)
                fn = dict(call.get("function", call))
                if isinstance(fn.get("arguments"), str):
                    # OpenAI sends arguments as a JSON string; templates expect an object
                    fn["arguments"] = call_arguments(fn["arguments"])
                one = {"type": "function", "function": fn}
                if "function" in call and call.get("id") is not None:
                    one["id"] = call["id"]  # templates that pair results with calls read it
                parsed.append(one)
            m["tool_calls"] = parsed
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


# A tool call as our ChatML template and Qwen's render it (Hermes style), and as vLLM's
# `hermes` tool parser reads it back: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def call_arguments(value: Any) -> Any:
    """A call's arguments as JSON values: JSON text parsed (kept as text when it is not
    JSON), none (null, or empty text, as the data engine's filter reads it) as {}."""
    if isinstance(value, str) and not value.strip():
        return {}
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return {} if value is None else value


_PYTHON_TAG = "<|python_tag|>"
_MISTRAL_CALLS = "[TOOL_CALLS]"
_GEMMA4_OPEN, _GEMMA4_CLOSE, _GEMMA4_QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'


def call_format(tokenizer, template: str | dict[str, str] | None) -> str:
    """How `template` writes a tool call, read from a rendered one, named as vLLM's tool
    parser for it: "hermes" (`<tool_call>` blocks of JSON: our ChatML, Qwen2.5, Qwen3),
    "qwen3_xml" (`<tool_call>` blocks of `<function=...>` and `<parameter=...>` tags:
    Qwen3.5, Qwen3-Coder), "llama3_json" (the turn is a bare {"name": ..., "parameters":
    {...}} object: Llama 3.1-3.3), "mistral" (`[TOOL_CALLS]` and a JSON list of calls:
    Mistral 7B v0.3, Nemo; or `[TOOL_CALLS]name[ARGS]{...}` per call: Ministral 3, Mistral
    Small 3.2, Devstral) or "gemma4" (`<|tool_call>call:name{key:value}<tool_call|>`, strings
    between `<|"|>` tokens); "hermes" for templates that render no calls; "unknown" for calls
    rendered in a form none of these is (DeepSeek's, MiniCPM5's), which `parse_tool_calls`
    cannot read. Of named templates (a tokenizer's `chat_template` dict), the one a
    conversation with tools renders with."""
    text = _call_turn(tokenizer, template)
    known = _form_of(text)
    if known is None and text is not None and "get_weather" in text:
        return "unknown"  # a call is rendered, in none of the forms above
    return known or "hermes"


def _call_turn(tokenizer, template: str | dict[str, str] | None) -> str | None:
    """The probe's call turn as the template renders it (of named templates, the one a
    conversation with tools renders with), from after the user's question on; None when
    the template raises on it (it takes no tool calls)."""
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    try:
        text = _render(tokenizer, _CALL_PROBE[:2], template, False, _CALL_TOOLS)
    except Exception:  # a template without tool calls
        return None
    return text.rsplit(_CALL_PROBE[0]["content"], 1)[-1]  # the call turn, not the tools


def known_call_format(tokenizer, template: str | dict[str, str] | None) -> str | None:
    """`call_format`'s answer where the template renders a call in one of its forms; None
    where it renders none (or raises on one), or renders it in another form (DeepSeek's,
    MiniCPM5's): the `--tool-call-parser` a server needs, or None for none it can be sure
    of."""
    return _form_of(_call_turn(tokenizer, template))


def _form_of(text: str | None) -> str | None:
    """The form of the probe's call turn as rendered (`_call_turn`); None for none known."""
    if text is None:
        return None
    if "<tool_call>" in text and "<function=get_weather>" in text:
        return "qwen3_xml"
    if "[TOOL_CALLS][" in text or "[TOOL_CALLS]get_weather" in text:
        return "mistral"
    if _GEMMA4_OPEN + "call:get_weather{" in text:
        return "gemma4"
    if "<tool_call>" not in text and '{"name": "get_weather", "parameters": ' in text:
        return "llama3_json"
    if re.search(r'<tool_call>\s*\{"name": "get_weather"', text):
        return "hermes"
    return None


def holds_call(text: str, fmt: str = "hermes") -> bool:
    """Whether generated text calls a tool: a `<tool_call>` block, broken or not (hermes,
    qwen3_xml), or Gemma 4's `<|tool_call>`; a parseable call (llama3_json, mistral and
    gemma4, whose calls may come with no wrapper to find: a server drops control tokens,
    `[TOOL_CALLS]` and `<|tool_call>` among them, from the text)."""
    if fmt == "gemma4" and _GEMMA4_OPEN in (text or ""):
        return True
    if fmt == "unknown":
        return False
    if fmt in ("llama3_json", "mistral", "gemma4"):
        return parse_tool_calls(text, fmt) is not None
    return TOOL_CALL_BLOCK.search(text or "") is not None


def parse_tool_calls(text: str, fmt: str = "hermes", tools: list[dict[str, Any]] | None = None
                     ) -> list[tuple[str, Any]] | None:
    """(name, arguments) of each call in generated text, in the template's `fmt`
    (`call_format`); None when it has none, or when any is malformed: not a JSON object with
    a string `name` (hermes), not a function tag holding only parameter tags (qwen3_xml) (a
    client's parser rejects the whole reply then). ``tools``, the definitions the prompt
    offered, type qwen3_xml's values, which the template writes as bare text (`"123"` and
    `123` alike, True as `True`), as vLLM's parser does. None for an "unknown" format."""
    if fmt == "unknown":
        return None
    if fmt == "llama3_json":
        return _llama3_calls(text)
    if fmt == "mistral":
        return _mistral_calls(text)
    if fmt == "gemma4":
        return _gemma4_calls(text)
    blocks = TOOL_CALL_BLOCK.findall(text or "")
    if not blocks:
        return None
    if fmt == "qwen3_xml":
        return _xml_calls(blocks, tools)
    calls = []
    for block in blocks:
        try:
            value = json.loads(block)
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        calls.append((value["name"], call_arguments(value.get("arguments"))))
    return calls


_XML_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


def _xml_calls(blocks: list[str], tools: list[dict[str, Any]] | None = None
               ) -> list[tuple[str, Any]] | None:
    """Qwen3.5's calls: each block one `<function=NAME>` holding `<parameter=KEY>` tags;
    None when any block is not of that shape. Each value is typed by the offered tool's
    schema where it names the parameter (`_typed`), else read as JSON where it parses (or
    as the Python literal the template writes: True, False, None), else as its text."""
    schemas = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        schemas[function.get("name")] = properties if isinstance(properties, dict) else {}
    calls = []
    for block in blocks:
        function = _XML_FUNCTION.fullmatch(block)
        if function is None or _XML_PARAMETER.sub("", function[2]).strip():
            return None
        name = function[1].strip()
        properties = schemas.get(name, {})
        calls.append((name, {key.strip(): _typed(value, properties.get(key.strip()))
                             for key, value in _XML_PARAMETER.findall(function[2])}))
    return calls


_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def _typed(text: str, schema: Any) -> Any:
    """A qwen3_xml value as its schema types it: text for a string; an integer, number or
    boolean (`true`, `True`) where the text reads as one; JSON for objects and arrays. With
    no schema (or a type not read here), JSON where the text parses, else a Python literal,
    else the text."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "string":
        return text
    if kind == "boolean" and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    if text.strip() in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text.strip()]
    value = call_arguments(text)
    if kind in ("integer", "number") and not isinstance(value, (int, float)):
        return text
    return value


def _mistral_calls(text: str) -> list[tuple[str, Any]] | None:
    """Mistral's calls: a JSON list of {"name", "arguments"} objects after `[TOOL_CALLS]`
    (Mistral 7B v0.3, Nemo), or, from tokenizer v11 on (Ministral 3, Mistral Small 3.2,
    Devstral), each call as `[TOOL_CALLS]name[ARGS]{...}` (`[CALL_ID]id` may come before
    `[ARGS]`). A server that drops control tokens leaves the list alone, or `name{...}` per
    call: both still calls. Anything else, a JSON list of other objects included, is not."""
    body = (text or "").strip()
    listed = body.removeprefix(_MISTRAL_CALLS).strip()
    if listed.startswith("["):
        try:
            value = json.loads(listed)
        except ValueError:
            return None
        if not (isinstance(value, list) and value and all(
                isinstance(v, dict) and isinstance(v.get("name"), str) and "arguments" in v
                for v in value)):
            return None
        return [(v["name"], call_arguments(v["arguments"])) for v in value]
    decoder, at, calls = json.JSONDecoder(), 0, []
    while at < len(body):
        head = _MISTRAL_CALL.match(body, at)
        if head is None:
            return None
        try:
            args, at = decoder.raw_decode(body, head.end())
        except ValueError:
            return None
        calls.append((head["name"], args))
        at = len(body) - len(body[at:].lstrip())
    return calls or None


# one v11 call's head, up to its arguments' `{`: `[TOOL_CALLS]name[CALL_ID]id[ARGS]`, the
# control tokens optional (a server may have dropped them)
_MISTRAL_CALL = re.compile(r"(?:\[TOOL_CALLS\])?\s*(?P<name>[A-Za-z_][\w.\-]*)"
                           r"(?:\[CALL_ID\][A-Za-z0-9]+)?(?:\[ARGS\])?(?=\{)")


def _gemma4_calls(text: str) -> list[tuple[str, Any]] | None:
    """Gemma 4's calls: `<|tool_call>call:name{key:value,...}<tool_call|>` each, strings
    between `<|"|>` tokens, keys, numbers and booleans bare (its template's
    `format_argument`). A server that drops control tokens leaves `call:name{...}` per call
    with strings unquoted: a bare value is then read as JSON where it parses (3, true), else
    as its text. None when any call is malformed, or when text outside the calls says
    something (a reply that answers is not a call)."""
    body = (text or "").strip()
    calls, at = [], 0
    while at < len(body):
        if body.startswith(_GEMMA4_OPEN, at):
            at += len(_GEMMA4_OPEN)
        head = _GEMMA4_CALL.match(body, at)
        if head is None:
            return None
        try:
            args, at = _Gemma4Reader(body).value(head.end() - 1)
        except ValueError:
            return None
        calls.append((head["name"], args))
        if body.startswith(_GEMMA4_CLOSE, at):
            at += len(_GEMMA4_CLOSE)
        at = len(body) - len(body[at:].lstrip())
    return calls or None


_GEMMA4_CALL = re.compile(r"call:(?P<name>[A-Za-z_][\w.\-]*)\{")


class _Gemma4Reader:
    """Reads one value of Gemma 4's call syntax: `{key:value,...}`, `[value,...]`,
    `<|"|>text<|"|>`, or a bare word up to the next `,`, `}` or `]` (JSON where it parses)."""

    def __init__(self, text: str):
        self.text = text

    def value(self, at: int) -> tuple[Any, int]:
        """The value starting at ``at`` and the index after it; ValueError when malformed."""
        text = self.text
        if text.startswith(_GEMMA4_QUOTE, at):
            end = text.find(_GEMMA4_QUOTE, at + len(_GEMMA4_QUOTE))
            if end < 0:
                raise ValueError("an unclosed string")
            return text[at + len(_GEMMA4_QUOTE):end], end + len(_GEMMA4_QUOTE)
        if text.startswith("{", at):
            out: dict[str, Any] = {}
            return out, self._items(at + 1, "}", lambda at: self._pair(at, out))
        if text.startswith("[", at):
            items: list[Any] = []
            return items, self._items(at + 1, "]", lambda at: self._item(at, items))
        end = at
        while end < len(text) and text[end] not in ",}]":
            end += 1
        word = text[at:end].strip()
        if not word or "<|" in word or "|>" in word:
            raise ValueError("no value")
        if word in _PYTHON_LITERALS:  # the template writes None as Python does
            return _PYTHON_LITERALS[word], end
        return call_arguments(word), end

    def _items(self, at: int, close: str, one) -> int:
        if self.text.startswith(close, at):
            return at + 1
        while True:
            at = one(at)
            if self.text.startswith(",", at):
                at += 1
            elif self.text.startswith(close, at):
                return at + 1
            else:
                raise ValueError(f"expected , or {close}")

    def _pair(self, at: int, out: dict[str, Any]) -> int:
        if self.text.startswith(_GEMMA4_QUOTE, at):  # a key inside a value: quoted
            key, at = self.value(at)
        else:
            colon = self.text.find(":", at)
            key, at = self.text[at:colon].strip(), colon
            if colon < 0 or not key or any(c in key for c in ",{}[]"):
                raise ValueError("no key")
        if not self.text.startswith(":", at):
            raise ValueError("expected :")
        out[key], at = self.value(at + 1)
        return at

    def _item(self, at: int, items: list[Any]) -> int:
        item, at = self.value(at)
        items.append(item)
        return at


def _llama3_calls(text: str) -> list[tuple[str, Any]] | None:
    """Llama 3.1's JSON calls: the whole reply is one {"name", "parameters"} object, or
    several separated by ';' (as vLLM's llama3_json parser reads them), after an optional
    <|python_tag|>. A reply that is anything else, a JSON answer without "parameters"
    included, is not a call."""
    body = (text or "").strip().removeprefix(_PYTHON_TAG).strip()
    decoder, at, calls = json.JSONDecoder(), 0, []
    while at < len(body):
        try:
            value, at = decoder.raw_decode(body, at)
        except ValueError:
            return None
        if not (isinstance(value, dict) and isinstance(value.get("name"), str)
                and ("parameters" in value or "arguments" in value)):
            return None
        args = value["parameters"] if "parameters" in value else value["arguments"]
        calls.append((value["name"], call_arguments(args)))
        rest = body[at:].lstrip()
        if rest.startswith(";"):
            rest = rest[1:].lstrip()
        at = len(body) - len(rest)
    return calls or None


def renders_tools(tokenizer, template: ChatTemplate, messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]]) -> bool:
    """Whether ``template`` shows ``tools`` in the rendered row (some templates ignore them)."""
    messages = normalize_messages(messages)
    return (_render(tokenizer, messages, template.text, False, tools)
            != _render(tokenizer, messages, template.text, False, None))


def _structural_spans(tokenizer, template: ChatTemplate, messages, text, tools,
                      last_only: bool = False):
    """(header, reply) character spans per assistant turn, found without generation markers;
    with `last_only`, the last turn's alone where turns are found by rendering them (a
    template that renders an earlier turn differently once more follow, as Mistral's moves
    the system prompt into the last user turn, can still have its last reply located)."""
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    eot = template.end_of_turn
    pairs = []
    if template.assistant_header:
        header = template.assistant_header
        start = text.find(header)
        while start >= 0:
            body = start + len(header)
            end = text.find(eot, body)
            if end < 0:
                raise ChatFormatError("turn_without_end_of_turn", f"an assistant turn at character "
                                      f"{body} never ends with {eot}")
            pairs.append(((start, body), (body, end + len(eot))))
            start = text.find(header, end)
    else:  # any other format: an assistant reply is what its turn adds to the prompt before it
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if last_only:
            turns, n_assistant = turns[-1:], min(n_assistant, 1)
        for i in turns:
            prompt = _render(tokenizer, messages[:i], template.text, True, tools)
            turn = _render(tokenizer, messages[:i + 1], template.text, False, tools)
            common = len(_render(tokenizer, messages[:i], template.text, False, tools))
            # the reply starts where the turn departs from the generation prompt: all of it,
            # or less where the prompt opens what a rendered turn leaves out (DeepSeek-R1's
            # `<think>\n`, which its template strips from replies)
            start = _reply_start(tokenizer, prompt, turn)
            eot = template.closing(messages[i])
            end = turn.find(eot, start)
            # up to the reply's end of turn: what follows may close the conversation (Phi-3
            # appends eos after the last turn), which a longer row does not have there
            if not (start >= common and text.startswith(turn[:max(end, 0) + len(eot)])):
                raise ChatFormatError(
                    "template_not_prefix_stable", f"rendering the conversation up to assistant "
                    f"turn {i} does not reproduce how the whole conversation renders it, so the "
                    "reply cannot be located (the template renders earlier turns differently "
                    "once later ones follow, as Mistral's moves the system prompt into the last "
                    "user turn)",
                    fix="set loss_on: last_assistant (only the last reply is then located), "
                        "fold a system prompt into the first user turn, split multi-turn rows "
                        "into one row per reply, or pass chat_template: a .jinja file with "
                        "{% generation %} markers")
            if end < 0:
                raise ChatFormatError("turn_without_end_of_turn",
                                      f"assistant turn {i} does not end with {eot}")
            pairs.append(((common, start), (start, end + len(eot))))
    if len(pairs) != n_assistant:
        raise ChatFormatError("assistant_turns_mismatch", f"found {len(pairs)} assistant turns in the "
                              f"rendered text, the row has {n_assistant}")
    return pairs


def _reply_start(tokenizer, prompt: str, turn: str) -> int:
    """Where a reply starts in ``turn``: where it departs from the generation ``prompt``, or,
    where it departs inside a token of the prompt (the reply "< 5" after DeepSeek-R1's
    `<think>`, a <|tool_call> after Gemma 4's <|channel>), at that token's start: the
    characters the two share there are the reply's, not the header's."""
    at = _common_prefix(prompt, turn)
    if at >= len(prompt):
        return at
    offsets = tokenizer(prompt, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    return next((a for a, b in offsets if a < at < b), at)


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _char_mask(offsets, spans) -> list[int]:
    """1 for every token overlapping a span (a token straddling the boundary counts)."""
    mask = [0] * len(offsets)
    for start, end in spans:
        for i, (a, b) in enumerate(offsets):
            if a < end and b > start:
                mask[i] = 1
    return mask


def encode_row(tokenizer, template: ChatTemplate, messages: list[dict[str, Any]],
               loss_on: str = "all_assistant", tools: list[dict] | None = None) -> EncodedRow:
    """Render and tokenize one row; return its ids and both loss masks."""
    if loss_on not in LOSS_ON:
        raise ChatFormatError("loss_on_unknown", f"loss_on {loss_on!r} is not one of "
                              f"{', '.join(LOSS_ON)}", field="loss_on")
    from jinja2 import TemplateError

    messages = _readable(messages)
    _check_no_stop_tokens(template, messages)
    # what a template raises on a row it cannot take: its raise_exception, a field it lacks,
    # or Python's own error inside it (content given as a list of parts, a dict where it
    # concatenates text, a conversation that opens with the reply)
    refused = (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
    try:
        text = _render(tokenizer, messages, template.text, False, tools)
        marked = tokenizer.apply_chat_template(messages, tools=tools, chat_template=template.text,
                                               tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=template.markers)
    except refused as err:
        raise _rejects_row(template, err) from err
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if ids != list(marked["input_ids"]):
        raise ChatFormatError("tokenization_mismatch", "tokenizing the rendered text differs from "
                              "apply_chat_template's ids; offsets cannot be trusted")
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    try:
        pairs = _structural_spans(tokenizer, template, messages, text, tools,
                                  last_only=loss_on == "last_assistant")
    except refused as err:  # the template refuses a conversation cut before a turn
        raise _rejects_row(template, err) from err
    if loss_on == "last_assistant":
        pairs = pairs[-1:]
    spans = [reply for _, reply in pairs]
    _check_calls_rendered(template, messages, text, spans, loss_on)
    expected = _char_mask(offsets, spans)
    if not template.markers:  # the structure is the only mask there is
        return EncodedRow(text=text, input_ids=ids, mask=list(expected), expected_mask=expected,
                          offsets=offsets, spans=spans, headers=[h for h, _ in pairs])
    mask = through_end_of_turn(ids, list(marked["assistant_masks"]),
                               {tokenizer.convert_tokens_to_ids(t) for t in template.stop_tokens})
    if loss_on == "last_assistant" and pairs:
        # markers cover every assistant turn; keep those from the last turn's header on
        first = pairs[0][0][0]
        mask = [m if offsets[i][1] > first else 0 for i, m in enumerate(mask)]
    return EncodedRow(text=text, input_ids=ids, mask=mask, expected_mask=expected,
                      offsets=offsets, spans=spans, headers=[h for h, _ in pairs])


def _readable(messages: Any) -> list[dict[str, Any]]:
    """``normalize_messages`` of a row, or `row_invalid` naming what is wrong with it."""
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)):
        raise ChatFormatError("row_invalid", "the row's messages are not a non-empty list of "
                              "objects each with a string `role`",
                              fix="give every row `messages`: [{role, content}, ...] (the data "
                                  "engine's output form)")
    try:
        return normalize_messages(messages)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ChatFormatError("row_invalid", f"the row's tool calls cannot be read "
                              f"({type(err).__name__}: {err})",
                              fix="write `tool_calls` as a list (or its JSON text) of "
                                  "{type, function: {name, arguments}}") from err


readable_messages = _readable  # for rows read outside encode_row (the sanity prompts)


def _rejects_row(template: ChatTemplate, err: Exception) -> ChatFormatError:
    """`template_rejects_row` for what rendering the row raised."""
    from jinja2 import TemplateError

    detail = str(err) if isinstance(err, TemplateError) else f"{type(err).__name__}: {err}"
    return ChatFormatError(
        "template_rejects_row", f"the chat template ({template.source}) cannot render this "
        f"row: {detail}", fix="reshape the rows to what the model's template takes (Gemma's, "
        "for one, has no system role: fold the system prompt into the first user turn; "
        "content as text, not a list of parts; a user turn first), or pass chat_template: a "
        ".jinja file that takes them")


def _check_no_stop_tokens(template: ChatTemplate, messages: list[dict[str, Any]]) -> None:
    """Raise `row_holds_stop_token` when a message's text holds the template's stop token
    (`<|im_end|>` in a reply): tokenized, it is the token itself, so the turn would end
    there and the rest of the reply would train as prompt, or the model learn to stop
    mid-reply."""
    for number, message in enumerate(messages, 1):
        for key in ("content", "reasoning_content"):
            value = message.get(key)
            found = [t for t in template.stop_tokens if isinstance(value, str) and t in value]
            if found:
                raise ChatFormatError(
                    "row_holds_stop_token", f"message {number} ({message['role']}) holds the "
                    f"template's stop token {found[0]!r} in its {key}: tokenized, it ends the "
                    "turn there", fix="drop or rewrite such rows (the data engine's "
                    "special-token filter drops them, with the reason on record)")


def _check_calls_rendered(template: ChatTemplate, messages: list[dict[str, Any]], text: str,
                          spans: list[tuple[int, int]], loss_on: str) -> None:
    """Raise `template_drops_tool_calls` when a supervised assistant turn with tool calls
    renders without them (SmolLM3's, LFM2's, Granite 3.3's and Phi-3.5's templates render
    only `content`): the model would learn to end the turn where it should call."""
    turns = list(enumerate((m for m in messages if m["role"] == "assistant"), 1))
    if loss_on == "last_assistant":
        turns = turns[-1:]
    for (number, message), (start, end) in zip(turns, spans):
        names = [call["function"].get("name") for call in message.get("tool_calls") or []]
        missing = [name for name in names if name and name not in text[start:end]]
        if missing:
            raise ChatFormatError(
                "template_drops_tool_calls", f"the chat template ({template.source}) renders "
                f"assistant turn {number} without its tool calls ({', '.join(missing)}): its "
                f"reply reads {text[start:end]!r}, so the model would learn to end the turn "
                "where it should call the tool",
                fix="use chat_template: chatml for a ChatML model (ours renders calls as "
                    "Qwen's <tool_call> blocks), pass chat_template: a .jinja file that renders "
                    "message.tool_calls, or write each call into the turn's content in the "
                    "form the model was trained to call in")


def align_stop_tokens(tokenizer, generation_config, template: ChatTemplate) -> list[str]:
    """Make the end-of-turn token the eos of the tokenizer and generation config (the Qwen
    base-model fix: eos <|endoftext|> -> <|im_end|>), and the template's `call_end` one of
    the generation config's eos ids too. Returns what changed, for the report."""
    changes = []
    if tokenizer.eos_token != template.end_of_turn:
        changes.append(f"tokenizer.eos_token: {tokenizer.eos_token!r} -> {template.end_of_turn!r}")
        tokenizer.eos_token = template.end_of_turn
    if generation_config is not None:
        ids = generation_config.eos_token_id
        ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
        stops = [tokenizer.convert_tokens_to_ids(t) for t in template.stop_tokens]
        missing = [i for i in stops if i not in ids]
        if missing:
            changes.append(f"generation_config.eos_token_id: {ids} -> {ids + missing}")
            generation_config.eos_token_id = ids + missing
    return changes
