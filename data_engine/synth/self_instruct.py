"""Self-Instruct (Wang et al. 2022): the baseline Evol-Instruct and CRAFT are compared with.

From seed tasks (the last user turn of each seed row, but rows with tools: `uses_tools`),
each request shows the engine `num_examples` sampled tasks (seed tasks, plus up to
`machine_examples` it wrote earlier, as in the paper) and asks for one new task. New tasks
too similar to any task already in the pool are dropped; the rest join the pool, so later
requests see them, and are answered.

Similarity is ROUGE-L, as in the paper, so its 0.7 threshold carries over; tokens are Latin
words and single CJK characters (the paper's tokenizer keeps only [a-z0-9], so every
Japanese task would score 0 against every other).

Reason codes (`_reason`; `_detail` says why in words):
- `engine_error`: the request failed; `_detail` is the engine's error.
- `self_instruct_degenerate_prompt`: the new task loops.
- `self_instruct_unfinished`: the new task or its answer hit max_tokens without stopping.
- `self_instruct_copied_instructions`: the new task copies the generation prompt.
- `self_instruct_refusal`: the engine declines to write a task or to answer it.
- `self_instruct_unusable`: too few or too many words, starts with punctuation, or names
  something a text model cannot do (image, file, ...: the paper's keyword filter).
- `self_instruct_similar`: ROUGE-L with a task in the pool at or above `max_similarity`.
- `self_instruct_degenerate_answer`, `self_instruct_too_short`: as in Evol-Instruct.
- any clean-filter reason, set by `apply_clean`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from data_engine.config import CleanConfig, _help
from data_engine.engines.base import Engine, Generation
from data_engine.errors import ConfigError
from data_engine.filters.repetition import is_degenerate
from data_engine.synth.evol import (AnswerChecks, Sampling, answer_problem, clean_survivors,
                                    copied_instructions, derived_seed, last_user_turn,
                                    load_template, reason_code, refusal, strip_opener,
                                    unique_ids, unquote, uses_tools)
from data_engine.synth.rows import generator_name, make_row

SELF_INSTRUCT_REASONS = (
    "engine_error", "self_instruct_degenerate_prompt", "self_instruct_unfinished",
    "self_instruct_copied_instructions", "self_instruct_refusal", "self_instruct_unusable",
    "self_instruct_similar", "self_instruct_degenerate_answer", "self_instruct_too_short")
TEMPLATE = "self_instruct_generate.txt"
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+")
_LABEL = re.compile(r"^\s*[*#_]*\s*(?:new\s+)?(?:task|instruction)\s*\d*\s*[:.：]\s*[*_]*\s*",
                    re.IGNORECASE)  # `Task 9:`, `**New task:**`
_NEXT_TASK = re.compile(r"\n\s*(?:new\s+)?(?:task|instruction)\s*\d+\s*[:.：]", re.IGNORECASE)
# The paper drops tasks starting with punctuation; opening quotes and brackets start honest ones.
_BAD_START = set("!#$%&*+,-./:;<=>?@\\^_`|~、。・…")


@dataclass
class SelfInstructConfig:
    num_requests: int = _help("Requests for a new task; each yields at most one row.", 64)
    batch_size: int = _help(
        "Requests per engine call; tasks accepted in one call join the example pool of the "
        "next (the paper's bootstrapping).", 16)
    num_examples: int = _help("Example tasks per request (the paper: 8).", 8)
    machine_examples: int = _help(
        "Of those, how many are earlier generated tasks when there are some (the paper: 2).", 2)
    max_similarity: float = _help(
        "ROUGE-L with any task in the pool at or above which a new task is dropped "
        "(the paper: 0.7).", 0.7)
    min_words: int = _help("A new task needs more than this many words (the paper: 3).", 3)
    max_words: int = _help("... and at most this many (the paper: 150).", 150)
    unusable_keywords: list[str] = _help(
        "Words that ask for what a text model cannot do (the paper's list).",
        factory=lambda: ["image", "images", "graph", "graphs", "picture", "pictures", "file",
                         "files", "map", "maps", "draw", "plot", "go to", "video", "videos",
                         "audio", "flowchart", "diagram"])
    instruction: Sampling = _help("Sampling for the new task; 1.0 for varied tasks (near "
                                  "duplicates are dropped anyway).",
                                  factory=lambda: Sampling(temperature=1.0, max_tokens=256))
    answer: Sampling = _help("Sampling for the answer.", factory=Sampling)
    copy_min_words: int = _help("A run of this many words from the generation prompt means "
                                "the task copied it.", 6)
    checks: AnswerChecks = _help("Refusal and too-short thresholds.", factory=AnswerChecks)

    def check(self) -> list[str]:
        problems = [f"{name}: must be >= 1" for name in
                    ("num_requests", "batch_size", "num_examples", "copy_min_words")
                    if getattr(self, name) < 1]
        if not 0 <= self.machine_examples < max(self.num_examples, 1):
            problems.append("machine_examples: must be >= 0 and below num_examples")
        if not 0.0 < self.max_similarity <= 1.0:
            problems.append("max_similarity: must be within (0, 1]")
        if not 0 <= self.min_words < self.max_words:
            problems.append("min_words, max_words: need 0 <= min_words < max_words")
        return problems


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists: their longest common subsequence against both lengths."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 2 * lcs / (len(a) + len(b))


def most_similar(candidate: list[str], pool: list[list[str]], threshold: float
                 ) -> tuple[int, float] | None:
    """(index, score) of the first pool task with ROUGE-L >= ``threshold``, or None.

    The shared-token count bounds the LCS, so most pairs skip the quadratic step."""
    bag = Counter(candidate)
    for i, other in enumerate(pool):
        bound = 2 * sum((bag & Counter(other)).values()) / (len(candidate) + len(other) or 1)
        if bound < threshold:
            continue
        score = rouge_l(candidate, other)
        if score >= threshold:
            return i, score
    return None


def unusable(task: str, config: SelfInstructConfig) -> str | None:
    """Why ``task`` is not a task a text model can learn from, or None."""
    words = len(task.split()) if task.isascii() else len(tokens(task))
    if words <= config.min_words:
        return f"{words} words (<= {config.min_words})"
    if words > config.max_words:
        return f"{words} words (> {config.max_words})"
    if task[0] in _BAD_START:
        return f"starts with {task[0]!r}"
    low = task.casefold()
    for word in config.unusable_keywords:
        if re.search(rf"\b{re.escape(word.casefold())}\b", low):
            return f"asks for {word!r}"
    return None


def extract_task(text: str) -> str:
    """The new task from a reply: a leading `Task 9:` label and any further numbered tasks
    the engine went on to list are removed."""
    text = _LABEL.sub("", strip_opener(text), count=1)
    return unquote(_NEXT_TASK.split(text, maxsplit=1)[0].strip())


def task_problem(gen: Generation, task: str, instructions: str, config: SelfInstructConfig,
                 clean: CleanConfig) -> tuple[str, str] | None:
    """(reason, detail) for an unusable new task, before the similarity test, or None."""
    if not gen.ok:
        return "engine_error", gen.error or "unknown error"
    if is_degenerate(task, clean.repetition):
        return "self_instruct_degenerate_prompt", "the new task loops"
    if gen.finish_reason == "length" and not _NEXT_TASK.search(gen.text):
        # Cut inside the task itself, not in a list of further tasks that is dropped anyway.
        return "self_instruct_unfinished", f"the task hit max_tokens ({gen.tokens} tokens)"
    copied = copied_instructions(task, "", instructions, config.copy_min_words)
    if copied:
        return "self_instruct_copied_instructions", copied
    declined = refusal(task, 0, inability=False)
    if declined:
        return "self_instruct_refusal", f"the engine declines: {declined!r}"
    bad = unusable(task, config)
    return ("self_instruct_unusable", bad) if bad else None


def self_instruct(seeds: list[dict[str, Any]], engine: Engine, config: SelfInstructConfig,
                  clean: CleanConfig, seed: int) -> list[dict[str, Any]]:
    """New tasks and their answers, kept or eliminated, in request order."""
    problems = config.check()
    if problems:
        raise ConfigError(problems, "self_instruct")
    seed_tasks = [(row, row["messages"][turn]["content"].strip()) for row in seeds
                  if (turn := last_user_turn(row["messages"])) is not None
                  and not uses_tools(row)]
    if not seed_tasks:
        return []
    generator = generator_name(engine)
    template = load_template(TEMPLATE)
    instructions = template.replace("{examples}", " ")
    pool = [tokens(task) for _, task in seed_tasks]
    pool_text = [task for _, task in seed_tasks]
    machine: list[str] = []
    rng = random.Random(derived_seed(seed, "self_instruct"))
    rows: list[dict[str, Any] | None] = []
    accepted: list[tuple[int, dict[str, Any], str]] = []
    for call, start in enumerate(range(0, config.num_requests, config.batch_size)):
        requests = []
        for _ in range(min(config.batch_size, config.num_requests - start)):
            n_machine = min(config.machine_examples, len(machine))
            n_seed = min(config.num_examples - n_machine, len(seed_tasks))
            picked = rng.sample(range(len(seed_tasks)), n_seed)
            examples = [seed_tasks[i][1] for i in picked] + rng.sample(machine, n_machine)
            listing = "\n".join(f"Task {j + 1}: {t}" for j, t in enumerate(examples))
            requests.append((seed_tasks[picked[0]][0], template.replace("{examples}", listing)))
        gens = engine.generate([[{"role": "user", "content": prompt}] for _, prompt in requests],
                               config.instruction.params(derived_seed(seed, "task", call)))
        for (parent, _), gen in zip(requests, gens):
            task = extract_task(gen.text) if gen.ok else ""
            problem = task_problem(gen, task, instructions, config, clean)
            if problem is None:
                task_tokens = tokens(task)
                hit = most_similar(task_tokens, pool, config.max_similarity)
                if hit is not None:
                    problem = ("self_instruct_similar", f"ROUGE-L {hit[1]:.2f} with "
                               f"{pool_text[hit[0]][:80]!r}")
                else:
                    pool.append(task_tokens)
                    pool_text.append(task)
                    machine.append(task)
                    accepted.append((len(rows), parent, task))
                    rows.append(None)  # answered below
                    continue
            rows.append(_row([{"role": "user", "content": task}], parent, generator, *problem))
    answers = engine.generate([[{"role": "user", "content": task}] for _, _, task in accepted],
                              config.answer.params(derived_seed(seed, "answer"))
                              ) if accepted else []
    for (i, parent, task), gen in zip(accepted, answers):
        messages = [{"role": "user", "content": task}]
        if gen.ok:
            messages.append({"role": "assistant", "content": gen.text.strip()})
        problem = answer_problem(gen, config.checks, clean.repetition)
        reason = (reason_code("self_instruct", problem[0]), problem[1]) if problem else \
            (None, None)
        rows[i] = _row(messages, parent, generator, *reason)
    return unique_ids(clean_survivors(rows, clean))  # type: ignore[arg-type]


def _row(messages: list[dict[str, Any]], parent: dict[str, Any], generator: str,
         reason: str | None, detail: str | None) -> dict[str, Any]:
    return make_row(messages, "self_instruct", parent["id"], generator,
                    parent.get("source") or "self_instruct", reason=reason, detail=detail,
                    tags=list(parent.get("tags") or []))
