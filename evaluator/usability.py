"""Usability: would a user get an answer? Generation through the served model, then per
reply: did it stop with the end-of-turn token within the budget, is it non-empty, does it
loop (the data engine's degenerate-repetition detector)? Plus JSON validity for rows tagged
`json` and reference metrics (chrF, ROUGE-L) where the data has the answer.

A reply "stopped" when the server's finish_reason is `stop`: it ended on one of the model's
end-of-sequence ids (the merged model's generation config lists the end-of-turn token
first) rather than at `max_tokens`, within the budget. The server is asked for one token
more than the budget: vLLM and `transformers serve` test the length before the stop token,
so a reply whose end-of-turn token was the budget's last token read `length`. The budget
defaults to the recipe's sanity budget, 1.5x the 95th percentile of the reference replies'
token lengths (64..1,024): a model that learned when to stop ends within its data's
lengths.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from data_engine.config import RepetitionConfig
from data_engine.engines.base import Generation, SamplingParams
from data_engine.filters.repetition import TOKEN, is_degenerate
from evaluator.data import EvalRow
from trainer_service.recipe.chat_format import call_arguments

JSON_TAG = "json"
# The order a reply's single failure is named in; every condition is also counted alone.
FAILURES = ("error", "no_stop", "empty", "degenerate")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)


class _Tokenizer:
    """rouge-score's tokenizer interface, with the repetition detector's tokens: words,
    numbers, and any other non-space character on its own (kana, kanji). ROUGE-L's own
    tokenizer keeps only [a-z0-9] and would score Japanese as empty."""

    def tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(text.lower())


def budget_for(tokenizer, rows: Sequence[EvalRow]) -> int:
    """The sanity budget over the rows that end with an assistant turn (a reply or a tool
    call: what the model is asked to generate)."""
    from trainer_service.recipe.run import sanity_budget

    return sanity_budget(tokenizer, [r.messages for r in rows if r.answered])


def generate(base_url: str, model_name: str, rows: Sequence[EvalRow], max_tokens: int,
             concurrency: int = 8, api_key: str | None = None, timeout_s: float = 600.0
             ) -> list[Generation]:
    """Greedy replies to every row's prompt, in order; a failed request is a row with
    `error` set, never a missing one."""
    from data_engine.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(model_name, base_url, api_key=api_key, max_concurrency=concurrency,
                          timeout_s=timeout_s, max_retries=2)
    try:
        # one more: a stop token at the budget's last position must read `stop` (see above)
        return engine.generate([r.prompt for r in rows],
                               SamplingParams(temperature=0.0, max_tokens=max_tokens + 1),
                               tools=[r.tools for r in rows])
    finally:
        engine.close()


def json_valid(text: str) -> bool:
    """The reply parses as JSON, bare or inside one ``` fence."""
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return False
    return True


def judge_reply(row: EvalRow, gen: Generation, repetition: RepetitionConfig,
                budget: int | None = None) -> dict[str, Any]:
    """One reply's usability fields, as samples.jsonl records them. With ``budget``, a reply
    stopped only when its stop token came within it (`generate` asks for one more)."""
    text = gen.text or ""
    stopped = gen.error is None and gen.finish_reason == "stop" \
        and (budget is None or (gen.tokens or 0) <= budget)
    # A reply the server parsed into calls (`message.tool_calls`) may leave no text: it
    # answered, with its calls.
    flags = {"error": gen.error is not None, "no_stop": gen.error is None and not stopped,
             "empty": not text.strip() and not gen.tool_calls,
             "degenerate": bool(text.strip()) and is_degenerate(text, repetition)}
    failure = next((name for name in FAILURES if flags[name]), None)
    return {"output": text, "finish_reason": gen.finish_reason, "tokens": gen.tokens,
            "stopped": stopped,
            "empty": flags["empty"], "degenerate": flags["degenerate"],
            "usable": failure is None, "failure": failure, "error": gen.error,
            "json_valid": json_valid(text) if JSON_TAG in row.tags else None,
            "chrf": None, "rouge_l": None, "judge_score": None, "judge_mass": None,
            # calls the server parsed out of the reply (`message.tool_calls`), not in `output`
            "tool_calls": [{"name": name, "arguments": call_arguments(arguments)}
                           for name, arguments in gen.tool_calls or []] or None}


def summarize(replies: Sequence[dict[str, Any]], budget: int) -> dict[str, Any]:
    usable = sum(r["usable"] for r in replies)
    failures = {name: sum(r["failure"] == name for r in replies) for name in FAILURES}
    return {"rate": usable / len(replies) if replies else None, "rows": len(replies),
            "usable": usable, "budget_tokens": budget, "failures": failures,
            "degenerate": sum(r["degenerate"] for r in replies)}


def summarize_json(replies: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    judged = [r["json_valid"] for r in replies if r["json_valid"] is not None]
    if not judged:
        return None
    return {"rate": sum(judged) / len(judged), "rows": len(judged), "valid": sum(judged)}


def add_reference_scores(rows: Sequence[EvalRow], replies: Sequence[dict[str, Any]]
                         ) -> dict[str, Any] | None:
    """Sentence chrF (sacrebleu, 0-100) and ROUGE-L F1 (rouge-score, 0-1) per reply with a
    reference, written into the replies; corpus chrF and mean ROUGE-L returned."""
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    pairs = [(row, reply) for row, reply in zip(rows, replies)
             if row.reference is not None and reply["error"] is None]
    if not pairs:
        return None
    chrf = CHRF()
    rouge = RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    for row, reply in pairs:
        reply["chrf"] = chrf.sentence_score(reply["output"], [row.reference]).score
        reply["rouge_l"] = rouge.score(row.reference, reply["output"])["rougeL"].fmeasure
    corpus = chrf.corpus_score([r["output"] for _, r in pairs],
                               [[row.reference for row, _ in pairs]]).score
    return {"chrf": corpus, "rouge_l": sum(r["rouge_l"] for _, r in pairs) / len(pairs),
            "rows": len(pairs)}
