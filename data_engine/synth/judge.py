"""The probability judge: rubric scores and A/B/tie verdicts read off next-token probabilities.

Pointwise, the prompt ends where the score comes next. The judge reads the log-probabilities
of "1".."N" as the reply's first token, softmaxes over those candidates only and reports the
expected score sum(p_i * i), which keeps the judge's uncertainty (a 3/4 split scores 3.5)
where a sampled digit would not. The candidates' raw probability, the mass, says whether the
judge took the prompt as a request for a score at all: below `min_mass` the row is flagged
`judge_low_mass` and its score is not trusted. Pairwise, each pair is asked in both orders
and a win counts only when both orders agree. Engines without logprobs, and rows whose
scoring failed, are judged by greedy generation and parsing, with `method` "parsed".

The judge scores text replies: a conversation whose last turn calls a tool is not scored
(`judge_error` says so; the row is kept, never dropped on a score it could not have), and
earlier calls are shown in its context as `[tool call] name(arguments)` lines.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Mapping, Sequence

import pyarrow as pa

from data_engine.config import _help
from data_engine.engines.base import Conversation, Engine, Message, SamplingParams
from data_engine.errors import ConfigError

SCALES = (5, 10)
APPLY_TO = ("synthesized", "all")
BUILTIN_RUBRIC = "builtin"
PAIR_LABELS = ("A", "B", "tie")
LOW_SCORE = "low_judge_score"
LOW_MASS = "judge_low_mass"
STAGE = "judge"
UNJUDGED_ORIGINS = (None, "seed")


@dataclass
class JudgeConfig:
    scale: int = _help(
        "Scores run 1..scale: 5 or 10. 10 only where every label '1'..'10' is one token for "
        "the judge's tokenizer: SmolLM2 and Qwen2.5 spell '10' as the digits '1' '0', so a 10 "
        "would be read as a 1; the judge refuses to start there.", 5)
    rubric: str = _help(
        "`builtin` (correct, on topic, complete, fluent) or a path to a text file with your "
        "criteria. It is inserted into the scoring prompt, whose last line asks for the score "
        "only.", BUILTIN_RUBRIC)
    threshold: float | None = _help(
        "Rows whose expected score is below this are dropped with reason low_judge_score; "
        "null: score only, drop nothing. Look at a sample's scores first: on "
        "benchmarks/judge_labelled.jsonl SmolLM2-135M scored good and bad answers alike.")
    min_mass: float = _help(
        "Rows whose score tokens got less than this share of the next-token probability are "
        "flagged judge_low_mass (the judge did not answer with a score) and are never dropped "
        "on their score. 0.5: a score should be the judge's likeliest reply. SmolLM2-135M "
        "puts 0.02-0.24 on the digits (benchmarks/judge.py), so every row it judges is "
        "flagged, rightly: its scores there are at chance (AUC 0.53).", 0.5)
    apply_to: str = _help(
        "synthesized: only rows with an origin other than seed (evol, craft, self_instruct); "
        "seed rows were chosen by a person and keep null judge columns. all: every kept row.",
        "synthesized")
    max_tokens: int = _help(
        "Tokens the text-parsing fallback (engines without logprobs) may generate for a "
        "verdict; it asks for the verdict alone, so a few suffice.", 16)

    def check(self) -> list[str]:
        problems = []
        if self.scale not in SCALES:
            problems.append(f"scale: {self.scale!r} is not one of {', '.join(map(str, SCALES))}")
        if self.rubric != BUILTIN_RUBRIC and not Path(self.rubric).is_file():
            problems.append(f"rubric: {self.rubric!r} is neither `{BUILTIN_RUBRIC}` nor a file")
        if self.threshold is not None and not 1.0 <= self.threshold <= self.scale:
            problems.append(f"threshold: must be within [1, scale={self.scale}]")
        if not 0.0 <= self.min_mass <= 1.0:
            problems.append("min_mass: must be within [0, 1]")
        if self.apply_to not in APPLY_TO:
            problems.append(f"apply_to: {self.apply_to!r} is not one of {', '.join(APPLY_TO)}")
        if self.max_tokens < 1:
            problems.append("max_tokens: must be >= 1")
        return problems


@dataclass
class JudgeResult:
    """One row's pointwise verdict. `score` is None when the row could not be judged; then
    `error` says why. `mass` is None for parsed verdicts (no probabilities were read)."""

    score: float | None
    mass: float | None
    method: str | None  # "logprobs" | "parsed"; None when not judged at all
    error: str | None = None
    probs: dict[int, float] | None = None  # softmax over the candidate scores


@dataclass
class PairResult:
    """One pair's verdict over both orders: `winner` is "A" or "B" only when both orders
    agree, else "tie". `first` and `second` are each order's verdict in the pair's own
    labels (the second order's already mapped back). `p_a` averages P(A wins) over the
    orders (None when parsed)."""

    winner: str | None
    consistent: bool | None
    first: str | None
    second: str | None
    p_a: float | None
    method: str
    error: str | None = None


# ---- pure core: probabilities, parsing, order combination ----

@dataclass(frozen=True)
class ScoreDist:
    probs: dict[int, float]
    score: float
    mass: float


def score_labels(scale: int) -> list[str]:
    return [str(i) for i in range(1, scale + 1)]


def softmax_over(logprobs: Mapping[str, float], labels: Sequence[str]) -> dict[str, float]:
    """Probabilities renormalised over ``labels`` only; labels absent from ``logprobs``
    get 0. Empty when none is present."""
    present = {k: v for k, v in logprobs.items() if k in labels and v > -math.inf}
    if not present:
        return {}
    top = max(present.values())
    weights = {k: math.exp(v - top) for k, v in present.items()}
    total = sum(weights.values())
    return {k: weights.get(k, 0.0) / total for k in labels}


def expected_score(logprobs: Mapping[str, float], scale: int) -> ScoreDist | None:
    """The probability-weighted score over the labels "1".."scale", and their raw mass.
    None when no candidate got any probability."""
    labels = score_labels(scale)
    probs = softmax_over(logprobs, labels)
    if not probs:
        return None
    mass = sum(math.exp(v) for k, v in logprobs.items() if k in labels)
    return ScoreDist({int(k): p for k, p in probs.items()},
                     sum(int(k) * p for k, p in probs.items()), min(mass, 1.0))


# A whole number, or one with decimals ("3.5"), never the digits after a decimal point: "1.5/5"
# once read as 5.
_NUMBER = r"(?<![\d.])(\d+(?:\.\d+)?)"
_OUT_OF = _NUMBER + r"\s*(?:/|out of)\s*{scale}\b"
_RANGE = r"\b1\s*(?:to|-|\u2013|through)\s*{scale}\b"  # "from 1 to 5" restates the scale
_KEYWORD = re.compile(r"\b(?:score|rating|rate|grade|gives? it)\b\D{0,20}?" + _NUMBER
                      + r"(?!\.?\d)", re.IGNORECASE)
# A reply that is the number: followed by its end, punctuation or a word, not by "+2".
_LEADING = re.compile(r"^\W*?" + _NUMBER + r"(?=\s*$|[!,;:)*\n]|\.(?!\d)|\s+[^\W\d])")


def parse_score(text: str, scale: int) -> float | None:
    """The score a free-text verdict gives on 1..scale: "N/scale" or "N out of scale", a
    number after score/rating, or a reply that starts with the number (decimals kept:
    "3.5 out of 5" is 3.5); None otherwise. A reply that answers the question instead
    ("2+2 is 4.") is not read as a score."""
    text = re.sub(_RANGE.format(scale=scale), " ", text, flags=re.IGNORECASE)
    for pattern in (re.compile(_OUT_OF.format(scale=scale), re.IGNORECASE), _KEYWORD, _LEADING):
        for match in pattern.finditer(text):
            value = float(match.group(1))
            if 1 <= value <= scale:
                return value
    return None


_VERDICT = re.compile(r"\b(?:(A|B)|(tie|equal(?:ly)?|same|neither|both))\b", re.IGNORECASE)
# A letter named the better one, wherever it stands: "Both are correct, but B is more
# complete" is B, not a tie.
_NAMED = re.compile(r"\b(?:(A|B)\s+(?i:is|was|seems|looks)\s+(?i:clearly\s+|slightly\s+|much\s+)?"
                    r"(?i:better|stronger|superior|preferable|more\b)"
                    r"|(?i:prefer|choose|pick|winner(?:\s+is)?|verdict)\s*[:=]?\s*"
                    r"(?i:answer\s+)?(A|B)\b)")


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a free-text pairwise verdict: a letter named better ("B is
    more complete", "Winner: A"), else the first A/B (as a standalone capital letter: a
    lower-case "a" is an article) or tie word; None if none."""
    named = _NAMED.search(text)
    if named:
        return named.group(1) or named.group(2)
    for match in _VERDICT.finditer(text):
        if match.group(1) and match.group(1).isupper():
            return match.group(1)
        if match.group(2):
            return "tie"
    return None


SWAP = {"A": "B", "B": "A", "tie": "tie"}


def combine_orders(first: str, second_swapped: str) -> tuple[str, bool]:
    """(winner, consistent) from the verdict with the pair as given and the verdict with the
    answers swapped (in that prompt's labels: its "A" is the pair's B). A win counts only
    when both orders name the same answer; any disagreement is a tie, so a judge that always
    prefers the first position produces ties, not wins."""
    second = SWAP[second_swapped]
    if first == second:
        return first, True
    return "tie", False


def consistency_rate(results: Sequence[PairResult]) -> float | None:
    """Share of judged pairs whose two orders agreed; None when no pair was judged."""
    judged = [r.consistent for r in results if r.consistent is not None]
    return sum(judged) / len(judged) if judged else None


# ---- prompts ----

@lru_cache(maxsize=None)
def load_prompt(name: str) -> Template:
    """A template shipped in `data_engine/synth/prompts/` (`$name` placeholders: contents
    with braces or dollars are inserted verbatim)."""
    path = resources.files("data_engine.synth").joinpath("prompts", f"judge_{name}.txt")
    return Template(path.read_text(encoding="utf-8").strip())


def load_rubric(rubric: str) -> str:
    if rubric == BUILTIN_RUBRIC:
        return load_prompt("rubric").template
    return Path(rubric).read_text(encoding="utf-8").strip()


def turn_text(message: Mapping[str, Any]) -> str:
    """A turn as the judge reads it: its text, then a `[tool call] name(arguments)` line per
    call (calls as a list or as JSON text, OpenAI's or ShareGPT's single call)."""
    lines = [text] if (text := (message.get("content") or "").strip()) else []
    calls = message.get("tool_calls")
    if isinstance(calls, str):
        try:
            calls = json.loads(calls) if calls.strip() else None
        except ValueError:
            return "\n".join(lines + [f"[tool call] {calls.strip()}"])
    for call in calls if isinstance(calls, list) else [calls] if calls else []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        lines.append(f"[tool call] {function.get('name', '?')}({arguments})")
    return "\n".join(lines)


def split_exchange(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(everything before the last assistant turn as text, that turn's content); None when
    the conversation does not end with an assistant turn. One user turn is shown as is;
    longer contexts are role-labelled."""
    if not messages or messages[-1].get("role") != "assistant":
        return None
    context = [(m.get("role") or "", text) for m in messages[:-1] if (text := turn_text(m))]
    if len(context) == 1 and context[0][0] == "user":
        question = context[0][1]
    else:
        question = "\n\n".join(f"{role.capitalize()}: {text}" for role, text in context)
    return question.strip(), (messages[-1].get("content") or "").strip()


# ---- the judge ----

class Judge:
    """Pointwise and pairwise judging with one engine and one config."""

    def __init__(self, engine: Engine, config: JudgeConfig | None = None):
        self.engine = engine
        self.config = config or JudgeConfig()
        problems = self.config.check()
        if problems:
            raise ConfigError(problems, "judge")
        self.rubric = load_rubric(self.config.rubric)
        self.labels = score_labels(self.config.scale)
        if self.uses_logprobs:
            self._check_labels(self.labels, "scale")

    @property
    def uses_logprobs(self) -> bool:
        return bool(getattr(self.engine, "supports_logprobs", False))

    def _check_labels(self, labels: list[str], field: str) -> None:
        """Every label must be one token, or its probability is the probability of its first
        token ("10" would read as "1"). Checked with the engine's tokenizer where it has
        one; a 10-point scale on an engine that does not expose one cannot be verified."""
        from data_engine.engines.hf import label_token_ids

        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            if field == "scale" and self.config.scale > 9:
                raise ConfigError([f"scale: {self.config.scale} needs '10' to be one token, "
                                   f"which cannot be checked for {self.engine.model} (its "
                                   "tokenizer is not local); use scale 5"], "judge")
            return
        split = [label for label in labels if not label_token_ids(tokenizer, label)]
        if split:
            sizes = {label: len(tokenizer.encode(label, add_special_tokens=False))
                     for label in split}
            shown = ", ".join(f"{label!r} is {size} tokens" for label, size in sizes.items())
            hint = "use scale 5" if field == "scale" else "use an engine whose tokenizer has them"
            raise ConfigError([f"{field}: the labels must each be one token for "
                               f"{self.engine.model}'s tokenizer, but {shown}; {hint}"], "judge")

    def _system(self) -> Message:
        return {"role": "system", "content": load_prompt("system").template}

    def pointwise_prompt(self, question: str, answer: str) -> Conversation:
        text = load_prompt("pointwise").substitute(rubric=self.rubric, question=question,
                                                   answer=answer, scale=self.config.scale)
        return [self._system(), {"role": "user", "content": text}]

    def pairwise_prompt(self, question: str, answer_a: str, answer_b: str) -> Conversation:
        text = load_prompt("pairwise").substitute(rubric=self.rubric, question=question,
                                                  answer_a=answer_a, answer_b=answer_b)
        return [self._system(), {"role": "user", "content": text}]

    def _generate(self, prompts: list[Conversation]) -> list[Any]:
        return self.engine.generate(prompts, SamplingParams(temperature=0.0,
                                                            max_tokens=self.config.max_tokens))

    def score(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> list[JudgeResult]:
        """One pointwise result per conversation (its last assistant turn is judged)."""
        out: list[JudgeResult | None] = [None] * len(conversations)
        prompts: dict[int, Conversation] = {}
        for i, messages in enumerate(conversations):
            exchange = split_exchange(messages)
            if exchange is not None and messages[-1].get("tool_calls"):
                out[i] = JudgeResult(None, None, None, "tool_call_reply: the last turn "
                                     "calls a tool; the judge scores text replies")
            elif exchange is None:
                out[i] = JudgeResult(None, None, None, "no_assistant_reply: the last turn "
                                     "is not the assistant's")
            else:
                prompts[i] = self.pointwise_prompt(*exchange)
        to_parse = list(prompts)
        if self.uses_logprobs and prompts:
            to_parse = []
            scores = self.engine.next_token_scores(list(prompts.values()), self.labels)
            for i, ts in zip(prompts, scores):
                dist = None if ts.error else expected_score(ts.logprobs, self.config.scale)
                if dist is None:  # scoring failed, or no digit was among the top tokens
                    to_parse.append(i)
                else:
                    out[i] = JudgeResult(dist.score, dist.mass, "logprobs", None, dist.probs)
        if to_parse:
            gens = self._generate([prompts[i] for i in to_parse])
            for i, gen in zip(to_parse, gens):
                value = None if gen.error else parse_score(gen.text, self.config.scale)
                error = gen.error or (None if value is not None
                                      else f"unparseable_verdict: {gen.text[:80]!r}")
                out[i] = JudgeResult(None if value is None else float(value), None, "parsed",
                                     error)
        return out  # type: ignore[return-value]

    def compare(self, pairs: Sequence[tuple[str, str, str]]) -> list[PairResult]:
        """One result per (question, answer A, answer B), judged in both orders."""
        prompts = [p for q, a, b in pairs
                   for p in (self.pairwise_prompt(q, a, b), self.pairwise_prompt(q, b, a))]
        # Per prompt: (verdict, probabilities over A/B/tie or None when parsed), or an error.
        verdicts: list[tuple[str, dict[str, float] | None] | str] = [""] * len(prompts)
        to_parse = list(range(len(prompts)))
        if self.uses_logprobs and prompts:
            self._check_labels(list(PAIR_LABELS), "pairwise labels")
            to_parse = []
            for k, ts in enumerate(self.engine.next_token_scores(prompts, list(PAIR_LABELS))):
                probs = {} if ts.error else softmax_over(ts.logprobs, PAIR_LABELS)
                if probs:
                    verdicts[k] = (max(PAIR_LABELS, key=probs.__getitem__), probs)
                else:  # scoring failed, or no label was among the top tokens
                    to_parse.append(k)
        if to_parse:
            for k, gen in zip(to_parse, self._generate([prompts[k] for k in to_parse])):
                verdict = None if gen.error else parse_verdict(gen.text)
                verdicts[k] = (verdict, None) if verdict else (
                    gen.error or f"unparseable_verdict: {gen.text[:80]!r}")
        parsed = set(to_parse)
        out = []
        for n in range(len(pairs)):
            one, two = verdicts[2 * n], verdicts[2 * n + 1]
            method = "parsed" if {2 * n, 2 * n + 1} & parsed else "logprobs"
            if isinstance(one, str) or isinstance(two, str):
                error = one if isinstance(one, str) else two
                out.append(PairResult(None, None, None, None, None, method, error))
                continue
            winner, consistent = combine_orders(one[0], two[0])
            # In the swapped prompt the pair's A is shown second: its win is that prompt's "B".
            p_a = None if one[1] is None or two[1] is None else (one[1]["A"] + two[1]["B"]) / 2
            out.append(PairResult(winner, consistent, one[0], SWAP[two[0]], p_a, method))
        return out


# ---- rows in the row schema ----

JUDGE_FIELDS = {"judge_score": "float64", "judge_mass": "float64", "judge_method": "string",
                "judge_error": "string"}


def judge_table(table: pa.Table, judge: Judge) -> pa.Table:
    """``table`` (rows in the row schema) with `judge_score`, `judge_mass`,
    `judge_method` and `judge_error` columns, and `_reason` = low_judge_score (`_stage`
    judge) where a trusted score is below the threshold.

    Only rows still kept (`_reason` null) and, with apply_to synthesized, rows whose origin
    is neither missing nor seed are judged; the others keep null judge columns. A row the
    judge could not score (engine error, unparseable verdict, low mass) keeps its row, with
    the why in `judge_error`, and is never dropped on its score.
    """
    n = table.num_rows
    reasons = (table.column("_reason").to_pylist() if "_reason" in table.column_names
               else [None] * n)
    stages = (table.column("_stage").to_pylist() if "_stage" in table.column_names
              else [None] * n)
    origins = (table.column("origin").to_pylist() if "origin" in table.column_names
               else [None] * n)
    chosen = [i for i in range(n) if reasons[i] is None and (
        judge.config.apply_to == "all" or origins[i] not in UNJUDGED_ORIGINS)]
    messages = table.column("messages").take(pa.array(chosen, pa.int64())).to_pylist()
    columns: dict[str, list[Any]] = {name: [None] * n for name in JUDGE_FIELDS}
    threshold, min_mass = judge.config.threshold, judge.config.min_mass
    for i, result in zip(chosen, judge.score(messages)):
        error = result.error
        if error is None and result.mass is not None and result.mass < min_mass:
            error = f"{LOW_MASS}: mass {result.mass:.3f} < min_mass {min_mass:g}"
        columns["judge_score"][i] = result.score
        columns["judge_mass"][i] = result.mass
        columns["judge_method"][i] = result.method
        columns["judge_error"][i] = error
        if error is None and threshold is not None and result.score < threshold:
            reasons[i], stages[i] = LOW_SCORE, STAGE
    for name, kind in JUDGE_FIELDS.items():
        table = _put(table, name, pa.type_for_alias(kind), columns[name])
    table = _put(table, "_reason", pa.string(), reasons)
    return _put(table, "_stage", pa.string(), stages)


def _put(table: pa.Table, name: str, kind: pa.DataType, values: list[Any]) -> pa.Table:
    """Replaces column ``name`` in place (a rerun, or the work columns), else appends it."""
    column = pa.array(values, kind)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), pa.field(name, kind), column)
    return table.append_column(pa.field(name, kind), column)
