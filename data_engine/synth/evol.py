"""Evol-Instruct (WizardLM, Xu et al. 2023) with the paper's elimination step.

Each round picks an operation per row (seeded), asks the engine to rewrite the row's last
user turn with that operation's prompt (`prompts/evol_<operation>.txt`), has the engine
answer the evolved prompt, and eliminates failed evolutions. Survivors then pass the clean
filters (`apply_clean`) and parent the next round. Most implementations skip elimination, and
their data keeps prompts that say "#Rewritten Prompt#", rewrites identical to the seed, and
answers that apologise; here every eliminated row is kept with its reason.

Seed rows that offer tools or hold tool calls are not evolved (`uses_tools`): the engine
answers in text, without calling the tools, so an evolved tool task would be answered with
made-up results, and a kept tool-call history would lose the definitions it needs.

Reason codes (`_reason`; `_detail` says why in words):
- `engine_error`: the rewrite or answer request failed; `_detail` is the engine's error.
- `evol_degenerate_prompt`, `evol_degenerate_answer`: the text loops (`is_degenerate`, with
  the clean stage's repetition thresholds).
- `evol_unfinished`: the rewrite or the answer hit max_tokens without stopping.
- `evol_copied_instructions`: the evolved prompt copies the rewriting prompt: a phrase such as
  `#Rewritten Prompt#` or `given prompt`, or a run of `copy_min_words` words of the
  operation's instructions that the parent prompt does not have.
- `evol_refusal`: the rewriter or the responder declines (English and Japanese phrases).
- `evol_no_gain`: the evolved prompt adds no information: empty, equal to its parent after
  normalisation, too few new character n-grams, or too similar (WizardLM asks ChatGPT
  whether the two are equal; this is the model-free stand-in).
- `evol_too_short`: the answer has fewer than `min_words` content words (WizardLM: answers of
  only punctuation and stop words).
- any clean-filter reason (`too_long`, `wrong_language`, ...), set by `apply_clean`.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from data_engine.config import CleanConfig, RepetitionConfig, _help
from data_engine.dedup.minhash import jaccard, ngram_sets
from data_engine.engines.base import Engine, Generation, SamplingParams
from data_engine.errors import ConfigError
from data_engine.filters.repetition import is_degenerate
from data_engine.synth.rows import apply_clean, generator_name, make_row

IN_DEPTH = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
OPERATIONS = IN_DEPTH + ("breadth",)
EVOL_REASONS = ("engine_error", "evol_degenerate_prompt", "evol_degenerate_answer",
                "evol_unfinished", "evol_copied_instructions", "evol_refusal", "evol_no_gain",
                "evol_too_short")
PLACEHOLDER = "{prompt}"

# Words of the rewriting prompts themselves; an evolved prompt containing one copied them.
COPY_PHRASES = ("#given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt",
                "rewritten prompt", "created prompt", "prompt rewriter", "prompt creator",
                # the model's commentary on its own rewrite, left after the prompt
                "rewritten version", "revised version", "revised prompt", "original prompt",
                "task's instruction")
# Apologies and "as an AI" mark a refusal wherever they stand in a short answer; inability
# phrases only at its opening sentence ("負の数の平方根は計算できません" is an answer).
_APOLOGY = ("i'm sorry", "i am sorry", "sorry, but", "i apologize", "i apologise", "as an ai",
            "as a language model", "as an artificial intelligence", "申し訳", "すみません",
            "aiとして", "言語モデルとして")
_INABILITY = ("i cannot", "i can't", "i can not", "i'm unable", "i am unable", "i'm not able",
              "i am not able", "i won't be able", "i will not be able", "できません", "できかねます")
_NOT_REFUSAL = ("sorry to hear",)  # sympathy, then an answer
_STOP_WORDS = frozenset("a an the and or but of to in on at for with by is are was were be it "
                        "this that these those i you he she we they me my your its so as".split())
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+")
_SENTENCE_END = re.compile(r"[.!?。！？\n]")
# `#Rewritten Prompt#:`, `**New prompt:**`, `New prompt:`: a colon or closing markup makes it
# a label, so a prompt that starts "New prompt injection techniques..." keeps its words.
_LABEL = re.compile(r"^\s*[#*_]*\s*(?:rewritten|created|new|evolved)\s+prompt\s*"
                    r"(?:[#*_]+\s*[:：]?|[:：])\s*[*_]*\s*", re.IGNORECASE)
# What instruct models open a reply with: `Sure!`, `Certainly.`, and a line introducing what
# follows (`Here is a new task:`, `Here's the rewritten prompt:`).
_ASSENT = re.compile(r"^\s*(?:sure|certainly|of course|absolutely)\s*[!,.]\s*",
                     re.IGNORECASE)
_INTRO = re.compile(r"^\s*(?:here(?:'s|\u2019s| is| are)|below is)\b[^\n:]{0,80}?\b"
                    r"(?:prompts?|tasks?|instructions?|questions?|versions?|rewrites?|examples?)"
                    r"\b[^\n:]{0,40}:\s*", re.IGNORECASE)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "「": "」",
                "『": "』"}


@dataclass
class Sampling:
    temperature: float = _help("0 is greedy; higher varies the output more.", 0.7)
    top_p: float = _help("Nucleus sampling mass.", 1.0)
    max_tokens: int = _help("Reply budget; a reply that hits it is eliminated as unfinished.",
                            1024)

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=seed)

    def check(self) -> list[str]:
        problems = []
        if self.temperature < 0:
            problems.append("temperature: must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            problems.append("top_p: must be within (0, 1]")
        if self.max_tokens < 1:
            problems.append("max_tokens: must be >= 1")
        return problems


@dataclass
class AnswerChecks:
    min_words: int = _help(
        "Answers need this many content words (stop words and punctuation do not count; one "
        "CJK character is one word). WizardLM drops answers of only punctuation and stop "
        "words; an answer to a harder prompt under 3 words teaches little.", 3)
    refusal_max_words: int = _help(
        "An apology or an inability phrase marks a refusal only in answers shorter than this "
        "(WizardLM: 'sorry' in an answer under 80 words); an apology opening the answer "
        "always does.", 80)

    def check(self) -> list[str]:
        return [f"{name}: must be >= 0" for name in ("min_words", "refusal_max_words")
                if getattr(self, name) < 0]


@dataclass
class EvolConfig:
    operations: list[str] = _help(
        "Operations drawn uniformly per row and round: " + ", ".join(OPERATIONS) + " (the "
        "five in-depth ones and in-breadth, as in WizardLM).", factory=lambda: list(OPERATIONS))
    rounds: int = _help(
        "Evolution rounds; round k+1 evolves round k's survivors. 2 stacks two operations "
        "(a constraint, then more reasoning); WizardLM ran 4 with ChatGPT, but weaker "
        "rewriters drift further from the seed task each round and each round costs a "
        "rewrite and an answer per survivor.", 2)
    max_seeds: int | None = _help("Seed rows to evolve, sampled with the run's seed; default "
                                  "all. Rows without a user turn are never picked.")
    rewrite: Sampling = _help("Sampling for the rewrite.",
                              factory=lambda: Sampling(max_tokens=512))
    answer: Sampling = _help("Sampling for the answer to the evolved prompt.", factory=Sampling)
    ngram: int = _help("Characters per n-gram for the no-gain test (5, as in dedup).", 5)
    min_new_ngrams: int = _help(
        "An evolution must add at least this many character n-grams its parent lacks, at any "
        "prompt length: one swapped or inserted word adds about 9-11, the 5-word constraint "
        "'Answer in under 100 words.' 20-26.", 16)
    max_similarity: float = _help(
        "Character n-gram Jaccard with the parent at or above which an evolution is a "
        "near-copy; 1.0 drops only rewrites with the parent's exact n-grams. Jaccard rises "
        "with the parent's length: adding 'Answer in under 100 words.' scores 0.89 on a "
        "300-character prompt, 0.97 at 1,000 and 0.98 at 2,000, so a fixed threshold drops "
        "long prompts' honest evolutions; `min_new_ngrams` measures the gain instead. Lower "
        "it (0.9) only for data of short prompts.", 1.0)
    copy_min_words: int = _help(
        "A run of this many words from the operation's instructions, absent from the parent, "
        "means the rewrite copied the instructions; shorter runs ('in the same language') "
        "occur in honest prompts.", 6)
    checks: AnswerChecks = _help("Refusal and too-short thresholds.", factory=AnswerChecks)

    def check(self) -> list[str]:
        problems = [f"operations: unknown {op!r} (known: {', '.join(OPERATIONS)})"
                    for op in self.operations if op not in OPERATIONS]
        if not self.operations:
            problems.append("operations: needs at least one")
        if self.rounds < 1:
            problems.append("rounds: must be >= 1")
        if self.max_seeds is not None and self.max_seeds < 1:
            problems.append("max_seeds: must be >= 1")
        for name in ("ngram", "copy_min_words"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        if self.min_new_ngrams < 0:
            problems.append("min_new_ngrams: must be >= 0")
        if not 0.0 < self.max_similarity <= 1.0:
            problems.append("max_similarity: must be within (0, 1]")
        return problems


# ---- the elimination rules: pure functions returning None (keep) or a detail (drop) ----

def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed: what 'the same' means."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def content_words(text: str) -> list[str]:
    """Words that carry content: Latin words or numbers not in a stop list, CJK characters."""
    return [w for w in _WORD.findall(text.casefold()) if w not in _STOP_WORDS]


def no_gain(parent: str, evolved: str, n: int, min_new: int, max_similarity: float
            ) -> str | None:
    """Why ``evolved`` adds no information over ``parent``, or None when it does."""
    a, b = normalize(parent), normalize(evolved)
    if not b:
        return "the rewrite is empty"
    if a == b:
        return "identical to the parent after normalisation"
    grams_a, grams_b = ngram_sets([a, b], n)
    new = len(np.setdiff1d(grams_b, grams_a, assume_unique=True))
    if new < min_new:
        return f"adds {new} new character {n}-grams (< {min_new})"
    similarity = jaccard(grams_a, grams_b)
    if similarity >= max_similarity:
        return f"character {n}-gram Jaccard {similarity:.2f} with the parent (>= {max_similarity})"
    return None


def copied_instructions(evolved: str, parent: str, instructions: str, min_words: int
                        ) -> str | None:
    """The rewriting-prompt text ``evolved`` copies (and ``parent`` lacks), or None."""
    low, parent_low = evolved.casefold(), parent.casefold()
    for phrase in COPY_PHRASES:
        if phrase in low and phrase not in parent_low:
            return f"contains {phrase!r}"
    runs = _word_runs(instructions, min_words) - _word_runs(parent, min_words)
    words = re.findall(r"\w+", low)
    for i in range(len(words) - min_words + 1):
        run = tuple(words[i:i + min_words])
        if run in runs:
            return f"copies the instructions: {' '.join(run)!r}"
    return None


def refusal(text: str, max_words: int, inability: bool = True) -> str | None:
    """The refusal phrase ``text`` declines with, or None. ``inability`` False for prompts,
    where "I can't get my chain to stop squeaking" is the user talking."""
    low = text.casefold().replace("\u2019", "'")
    if any(p in low for p in _NOT_REFUSAL):
        return None
    end = _SENTENCE_END.search(low, 1)
    opening = low[:min(end.end() if end else len(low), 200)]
    short = len(content_words(low)) < max_words
    for phrase in _APOLOGY:
        if phrase in opening or (short and phrase in low):
            return phrase
    for phrase in _INABILITY if inability else ():
        if short and phrase in opening:
            return phrase
    return None


def too_short(text: str, min_words: int) -> str | None:
    found = len(content_words(text))
    return f"{found} content words (< {min_words})" if found < min_words else None


def answer_problem(gen: Generation, checks: AnswerChecks, repetition: RepetitionConfig
                   ) -> tuple[str, str] | None:
    """(reason suffix, detail) for an unusable answer, or None. Suffixes: engine_error,
    degenerate_answer, unfinished, refusal, too_short; each generator adds its prefix."""
    if not gen.ok:
        return "engine_error", gen.error or "unknown error"
    if is_degenerate(gen.text, repetition):
        return "degenerate_answer", "the answer loops"
    if gen.finish_reason == "length":
        return "unfinished", f"the answer hit max_tokens ({gen.tokens} tokens) without stopping"
    found = refusal(gen.text, checks.refusal_max_words)
    if found:
        return "refusal", f"the answer declines: {found!r}"
    short = too_short(gen.text, checks.min_words)
    return ("too_short", f"the answer has {short}") if short else None


def reason_code(prefix: str, suffix: str) -> str:
    return suffix if suffix == "engine_error" else f"{prefix}_{suffix}"


def rewrite_problem(gen: Generation, parent: str, evolved: str, instructions: str,
                    config: EvolConfig, repetition: RepetitionConfig) -> tuple[str, str] | None:
    """(reason, detail) for an unusable rewrite ``evolved`` of ``parent``, or None."""
    if not gen.ok:
        return "engine_error", gen.error or "unknown error"
    if is_degenerate(evolved, repetition):
        return "evol_degenerate_prompt", "the rewritten prompt loops"
    if gen.finish_reason == "length":
        return "evol_unfinished", f"the rewrite hit max_tokens ({gen.tokens} tokens)"
    copied = copied_instructions(evolved, parent, instructions, config.copy_min_words)
    if copied:
        return "evol_copied_instructions", copied
    declined = refusal(evolved, 0, inability=False)  # an apology opening it, nothing else
    if declined:
        return "evol_refusal", f"the rewriter declines: {declined!r}"
    same = no_gain(parent, evolved, config.ngram, config.min_new_ngrams, config.max_similarity)
    return ("evol_no_gain", same) if same else None


# ---- prompts, rows and choices ----

@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    """A prompt template shipped in `data_engine/synth/prompts/`."""
    path = resources.files("data_engine.synth").joinpath("prompts", name)
    return path.read_text(encoding="utf-8").strip()


def render(template: str, prompt: str) -> str:
    return template.replace(PLACEHOLDER, prompt)  # not str.format: prompts hold braces


def extract_prompt(text: str) -> str:
    """The rewritten prompt from a reply: a leading echo of the template's own output label
    (`#Rewritten Prompt#:`) is formatting, not content, and is removed with wrapping quotes;
    the label anywhere else is copying and left for `copied_instructions` to find."""
    return unquote(_LABEL.sub("", strip_opener(text), count=1).strip())


def strip_opener(text: str) -> str:
    """``text`` without the assent (`Sure!`) and introducing line (`Here is a new task:`) an
    instruct model opens its reply with; unchanged when nothing would be left."""
    out = _INTRO.sub("", _ASSENT.sub("", text.strip(), count=1), count=1).strip()
    return out or text.strip()


def unquote(text: str) -> str:
    """``text`` without one pair of quotes around the whole of it (straight, curly, 「」)."""
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1] \
            and text[-1] not in text[1:-1]:
        return text[1:-1].strip()
    return text


def last_user_turn(messages: list[dict[str, Any]]) -> int | None:
    """Index of the last user turn with text, or None."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user" and (messages[i].get("content") or "").strip():
            return i
    return None


def chat(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as the engine takes them: role and content only."""
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def derived_seed(seed: int, *key: Any) -> int:
    """A 31-bit seed for one (run seed, purpose) pair, the same on every run."""
    blob = ":".join(map(str, (seed,) + key)).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=4).digest(), "big") >> 1


def uses_tools(row: dict[str, Any]) -> bool:
    """Whether a seed row offers tools or holds a tool call or result: the generators write
    text replies, so such a row is no seed for them."""
    return bool(row.get("tools")) or any(m.get("tool_calls") or m.get("role") == "tool"
                                         for m in row["messages"])


def sample_seeds(seeds: list[dict[str, Any]], limit: int | None, seed: int
                 ) -> list[dict[str, Any]]:
    """Seed rows with a user turn and no tools; at most ``limit`` of them, sampled, in
    input order."""
    usable = [row for row in seeds
              if last_user_turn(row["messages"]) is not None and not uses_tools(row)]
    if limit is None or limit >= len(usable):
        return usable
    picked = random.Random(derived_seed(seed, "seeds")).sample(range(len(usable)), limit)
    return [usable[i] for i in sorted(picked)]


def unique_ids(rows: list[dict[str, Any]], seen: dict[str, int] | None = None
               ) -> list[dict[str, Any]]:
    """Suffixes repeated ids (two failed requests from one parent; duplicate seeds evolved
    alike) with -2, -3, ...; ``seen`` carries the count across calls."""
    seen = {} if seen is None else seen
    for row in rows:
        count = seen.get(row["id"], 0) + 1
        seen[row["id"]] = count
        if count > 1:
            row["id"] = f"{row['id']}-{count}"
    return rows


def clean_survivors(rows: list[dict[str, Any]], clean: CleanConfig) -> list[dict[str, Any]]:
    """`apply_clean` over the rows still kept; eliminated rows stay as they are, in order."""
    alive = [i for i, row in enumerate(rows) if not row["_reason"]]
    for i, row in zip(alive, apply_clean([rows[i] for i in alive], clean)):
        rows[i] = row
    return rows


# ---- the rounds ----

def evolve(seeds: list[dict[str, Any]], engine: Engine, config: EvolConfig,
           clean: CleanConfig, seed: int) -> list[dict[str, Any]]:
    """Every evolution, kept or eliminated, round by round in parent order."""
    problems = config.check()
    if problems:
        raise ConfigError(problems, "evol")
    parents = sample_seeds(seeds, config.max_seeds, seed)
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for k in range(config.rounds):
        if not parents:
            break
        # Ids are settled before the survivors parent the next round.
        rows = unique_ids(clean_survivors(_round(parents, k, engine, config, clean, seed),
                                          clean), seen)
        out.extend(rows)
        parents = [row for row in rows if not row["_reason"]]
    return out


def _round(parents: list[dict[str, Any]], k: int, engine: Engine, config: EvolConfig,
           clean: CleanConfig, seed: int) -> list[dict[str, Any]]:
    generator = generator_name(engine)
    plans = []  # (parent, prefix, prompt, operation)
    for row in parents:
        turn = last_user_turn(row["messages"])
        ops = config.operations
        op = ops[derived_seed(seed, "op", k, row["id"]) % len(ops)]
        prefix = [{key: v for key, v in m.items() if v is not None}
                  for m in row["messages"][:turn]]
        plans.append((row, prefix, row["messages"][turn]["content"], op))
    rewrites = engine.generate(
        [[{"role": "user", "content": render(load_template(f"evol_{op}.txt"), prompt)}]
         for _, _, prompt, op in plans], config.rewrite.params(derived_seed(seed, "rewrite", k)))

    rows: list[dict[str, Any] | None] = [None] * len(plans)
    to_answer = []
    for i, ((row, prefix, prompt, op), gen) in enumerate(zip(plans, rewrites)):
        evolved = extract_prompt(gen.text) if gen.ok else ""
        instructions = load_template(f"evol_{op}.txt").replace(PLACEHOLDER, " ")
        problem = rewrite_problem(gen, prompt, evolved, instructions, config, clean.repetition)
        messages = prefix + [{"role": "user", "content": evolved}]
        if problem:
            rows[i] = _row(messages, row, op, generator, *problem)
        else:
            to_answer.append((i, messages))
    answers = engine.generate([chat(messages) for _, messages in to_answer],
                              config.answer.params(derived_seed(seed, "answer", k))
                              ) if to_answer else []
    for (i, messages), gen in zip(to_answer, answers):
        row, _, _, op = plans[i]
        if gen.ok:
            messages = messages + [{"role": "assistant", "content": gen.text.strip()}]
        problem = answer_problem(gen, config.checks, clean.repetition)
        reason = (reason_code("evol", problem[0]), problem[1]) if problem else (None, None)
        rows[i] = _row(messages, row, op, generator, *reason)
    return rows  # type: ignore[return-value]


def _row(messages: list[dict[str, Any]], parent: dict[str, Any], op: str, generator: str,
         reason: str | None, detail: str | None) -> dict[str, Any]:
    tags = list(parent.get("tags") or []) + [f"evol:{op}"]
    return make_row(messages, "evol", parent["id"], generator, parent.get("source") or "evol",
                    reason=reason, detail=detail, tags=tags)


def _word_runs(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.casefold())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
