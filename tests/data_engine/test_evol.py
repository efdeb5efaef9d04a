"""Evol-Instruct's elimination rules and Self-Instruct's filters on crafted inputs (both
sides of each rule), then both generators end to end on the real embedded model."""

from __future__ import annotations

import pytest

from data_engine.config import CleanConfig, RepetitionConfig
from data_engine.config_loader import from_dict
from data_engine.engines.base import Generation
from data_engine.errors import ConfigError
from data_engine.filters import REASONS as CLEAN_REASONS
from data_engine.synth.evol import (EVOL_REASONS, OPERATIONS, PLACEHOLDER, AnswerChecks,
                                    EvolConfig, Sampling, answer_problem, clean_survivors,
                                    content_words, copied_instructions, evolve, extract_prompt,
                                    load_template, no_gain, reason_code, refusal, render,
                                    rewrite_problem, sample_seeds, too_short, unique_ids,
                                    uses_tools)
from data_engine.synth.rows import make_row
from data_engine.synth.self_instruct import (SELF_INSTRUCT_REASONS, TEMPLATE,
                                             SelfInstructConfig, extract_task, most_similar,
                                             rouge_l, self_instruct, tokens, unusable)

REP = RepetitionConfig()
SHORT = "Write a poem about the sea."
LONG = ("I write a lot of notes in meetings, and by the end of the day my letters are barely "
        "legible, even to me. I have tried slowing down, but then I fall behind. Which "
        "exercises or tools would help my handwriting, and how long should I practise each "
        "day? I am left-handed and use a cheap ballpoint pen, if that matters at all. ") * 4


def seed_row(i: int, question: str, answer: str = "A helpful answer with several words.",
             history: bool = False) -> dict:
    turns = [{"role": "user", "content": "I have a question."},
             {"role": "assistant", "content": "Sure, go ahead."}] if history else []
    return {"id": f"seed-{i}", "source": "sample", "tags": ["t"],
            "messages": turns + [{"role": "user", "content": question},
                                 {"role": "assistant", "content": answer}]}


# evol_no_gain ------------------------------------------------------------------------------

@pytest.mark.parametrize("evolved", [
    "",
    "write a poem about the SEA",  # case and punctuation only
    "Write a poem about the ocean.",  # one word swapped
    "Write a poem.",  # lost information
])
def test_no_gain_drops_copies_edits_and_losses(evolved):
    assert no_gain(SHORT, evolved, 5, 16, 1.0) is not None


@pytest.mark.parametrize("parent, evolved", [
    (SHORT, "Write a poem about the sea in under 50 words, rhyming every second line."),
    (SHORT, "Compose a limerick about a lighthouse keeper who fears the dark."),
    (LONG, LONG + " Answer in under 100 words."),
])
def test_no_gain_keeps_real_additions_at_any_length(parent, evolved):
    assert no_gain(parent, evolved, 5, 16, 1.0) is None


def test_similarity_threshold_drops_near_copies_when_set():
    evolved = LONG + " Answer in under 100 words."
    detail = no_gain(LONG, evolved, 5, 16, 0.9)
    assert detail is not None and "Jaccard" in detail
    assert no_gain(SHORT, "Compose a limerick about a lighthouse keeper.", 5, 16, 0.9) is None


# evol_copied_instructions ------------------------------------------------------------------

INSTRUCTIONS = load_template("evol_add_constraints.txt").replace(PLACEHOLDER, " ")


@pytest.mark.parametrize("evolved", [
    "Write a poem about the sea. #Rewritten Prompt#: it must rhyme.",
    "Using the given prompt, write a poem about the sea that rhymes.",
    "Add one more constraint or requirement to the poem about the sea.",
])
def test_copied_instructions_found(evolved):
    assert copied_instructions(evolved, SHORT, INSTRUCTIONS, 6) is not None


@pytest.mark.parametrize("parent, evolved", [
    (SHORT, "Write a rhyming poem about the sea, in the same language as its title."),
    ("Explain what a given prompt is in prompt engineering.",
     "Explain what a given prompt is in prompt engineering, with two examples."),
])
def test_copied_instructions_not_found_in_honest_prompts(parent, evolved):
    assert copied_instructions(evolved, parent, INSTRUCTIONS, 6) is None


def test_extract_prompt_removes_a_leading_label_and_quotes_only():
    assert extract_prompt('#Rewritten Prompt#: "Write a sonnet."') == "Write a sonnet."
    assert extract_prompt("  Created Prompt:\nName a rare bird. ") == "Name a rare bird."
    assert extract_prompt("**Rewritten Prompt:** Name a rare bird.") == "Name a rare bird."
    kept = "Write a sonnet. #Rewritten Prompt#: more"
    assert extract_prompt(kept) == kept


@pytest.mark.parametrize("reply, prompt", [
    # a prompt that starts like a label keeps its words (they used to be cut)
    ("New prompt injection techniques keep appearing. How can a chatbot resist them?",
     "New prompt injection techniques keep appearing. How can a chatbot resist them?"),
    ("Evolved prompt designs often beat hand-written ones. Why?",
     "Evolved prompt designs often beat hand-written ones. Why?"),
    ("#New Prompt# Which French city hosts the oldest university?",
     "Which French city hosts the oldest university?"),
    # what instruct models open with is no part of the prompt
    ("Here's a new prompt:\n\nWhich French city hosts the oldest university?",
     "Which French city hosts the oldest university?"),
    ("Sure! Here is the rewritten prompt: “Write a limerick about tax day.”",
     "Write a limerick about tax day."),
    ("Certainly. Write a limerick about tax day.", "Write a limerick about tax day."),
    ("「東京の観光名所を三つ挙げてください。」", "東京の観光名所を三つ挙げてください。"),
    # text that only looks like an opener stays
    ("Here is a list of numbers: 3, 5, 7. Sort them.",
     "Here is a list of numbers: 3, 5, 7. Sort them."),
    ("Sure-fire ways to save money: list five.", "Sure-fire ways to save money: list five."),
    ('"Hi," she said. "Bye."', '"Hi," she said. "Bye."'),
])
def test_extract_prompt_reads_the_prompt_out_of_an_instruct_models_reply(reply, prompt):
    assert extract_prompt(reply) == prompt


def test_a_rewrite_that_ends_in_commentary_is_copied_instructions():
    evolved = ("Explain photosynthesis to a ten-year-old using a kitchen analogy.\n\nThis "
               "rewritten version adds depth by asking for an analogy.")
    assert copied_instructions(evolved, SHORT, INSTRUCTIONS, 6) == "contains 'rewritten version'"


# evol_refusal, evol_too_short, evol_degenerate_answer, evol_unfinished, engine_error -------

@pytest.mark.parametrize("answer", [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I do not have personal opinions about poems.",
    "I cannot answer that.",
    "I\u2019m unable to write that poem.",
    "申し訳ありませんが、その質問にはお答えできません。",
    "それはできません。",
])
def test_refusals_found(answer):
    assert refusal(answer, 80) is not None


@pytest.mark.parametrize("answer", [
    "I'm sorry to hear that your plant is struggling. Water it only when the top inch of "
    "soil is dry, and add a balanced fertilizer once a month.",
    "Tides come from the moon's gravity. " + "The water bulges toward the moon and away "
    "from it on the far side, so most coasts see two highs a day. " * 8
    + "I cannot stress enough that local geography changes the timing.",
    "水は百度で沸騰します。ただし高い山の上では気圧が低いため、百度まで温度を上げることはできません。",
])
def test_refusals_not_found_in_answers(answer):
    assert refusal(answer, 80) is None


def test_too_short_counts_content_words_in_any_script():
    assert content_words("The cat, and the dog!") == ["cat", "dog"]
    assert too_short("It is the.", 3) is not None
    assert too_short("...", 1) is not None
    assert too_short("Paris is the capital of France.", 3) is None
    assert too_short("東京です。", 3) is None


@pytest.mark.parametrize("gen, suffix", [
    (Generation("", "error", 0, "timeout: no reply in 60 s"), "engine_error"),
    (Generation("」" * 30, "stop", 30), "degenerate_answer"),
    (Generation("The sea is wide and the waves roll in from", "length", 12), "unfinished"),
    (Generation("I'm sorry, I can't do that.", "stop", 8), "refusal"),
    (Generation("Yes.", "stop", 2), "too_short"),
])
def test_answer_problem_names_each_failure(gen, suffix):
    found = answer_problem(gen, AnswerChecks(), REP)
    assert found is not None and found[0] == suffix and found[1]
    assert reason_code("evol", found[0]) in EVOL_REASONS


def test_answer_problem_keeps_a_good_answer_and_reports_engine_errors():
    good = Generation("The sea rolls in grey and cold, and gulls cry above the harbour.", "stop")
    assert answer_problem(good, AnswerChecks(), REP) is None
    error = answer_problem(Generation("", "error", 0, "http_500: boom"), AnswerChecks(), REP)
    assert error == ("engine_error", "http_500: boom")
    assert reason_code("evol", "engine_error") == "engine_error"


@pytest.mark.parametrize("gen, evolved, reason", [
    (Generation("", "error", 0, "timeout: x"), "", "engine_error"),
    (Generation("x", "length", 512), "Write a poem about the sea with", "evol_unfinished"),
    (Generation("x", "stop"), "Write a poem. #Given Prompt#", "evol_copied_instructions"),
    (Generation("x", "stop"), "I'm sorry, I cannot rewrite this prompt.", "evol_refusal"),
    (Generation("x", "stop"), "Write a poem about the sea!", "evol_no_gain"),
    (Generation("x", "stop"), "Write a poem poem poem poem about the sea.",
     "evol_degenerate_prompt"),
])
def test_rewrite_problem_names_each_failure(gen, evolved, reason):
    found = rewrite_problem(gen, SHORT, evolved, INSTRUCTIONS, EvolConfig(), REP)
    assert found is not None and found[0] == reason and found[0] in EVOL_REASONS


@pytest.mark.parametrize("evolved", [
    "Write a poem about the sea in exactly four lines, each naming a different fish.",
    "I can't get my poem about the sea to rhyme. Rewrite it with an ABAB scheme.",
])
def test_rewrite_problem_keeps_real_evolutions(evolved):
    assert rewrite_problem(Generation(evolved, "stop"), SHORT, evolved, INSTRUCTIONS,
                           EvolConfig(), REP) is None


# templates, config, seeds, ids, clean ------------------------------------------------------

@pytest.mark.parametrize("op", OPERATIONS)
def test_templates_load_with_one_placeholder(op):
    template = load_template(f"evol_{op}.txt")
    assert template.count(PLACEHOLDER) == 1
    assert render(template, "Print {x} in Python.").count("Print {x} in Python.") == 1
    assert "{examples}" in load_template(TEMPLATE)


def test_configs_check_and_load_from_yaml_data():
    assert EvolConfig().check() == [] and SelfInstructConfig().check() == []
    bad = EvolConfig(operations=["deepen", "shout"], rounds=0, max_similarity=0.0,
                     rewrite=Sampling(max_tokens=0))
    problems = bad.check()
    assert any("shout" in p for p in problems) and any("rounds" in p for p in problems)
    assert any("max_similarity" in p for p in problems)
    with pytest.raises(ConfigError) as err:
        from_dict(EvolConfig, {"rounds": 1, "rewrite": {"max_tokens": 0}}, "evol")
    assert err.value.problems == ["rewrite.max_tokens: must be >= 1"]
    with pytest.raises(ConfigError, match="typo: unknown key"):
        from_dict(EvolConfig, {"typo": 1}, "evol")
    assert from_dict(EvolConfig, {"rounds": 1, "operations": ["deepen"]}).rounds == 1
    assert SelfInstructConfig(machine_examples=8, num_examples=8).check()


def test_sample_seeds_is_seeded_in_input_order_and_skips_rows_without_prompt():
    rows = [seed_row(i, f"Question number {i}?") for i in range(20)]
    rows.append({"id": "no-user", "source": "s", "tags": [],
                 "messages": [{"role": "assistant", "content": "Hello."}]})
    picked = sample_seeds(rows, 5, seed=3)
    assert picked == sample_seeds(rows, 5, seed=3)
    assert [r["id"] for r in picked] == sorted((r["id"] for r in picked),
                                               key=lambda i: int(i.split("-")[1]))
    assert len(picked) == 5
    assert [r["id"] for r in sample_seeds(rows, None, 0)] == [f"seed-{i}" for i in range(20)]
    assert {r["id"] for r in sample_seeds(rows, 5, seed=4)} != {r["id"] for r in picked}


def test_seeds_with_tools_are_left_out(smollm2_engine):
    """The generators answer in text without calling tools: a tool task would be answered
    with made-up results, and a kept tool-call history would lose its definitions."""
    call = [{"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    offers = {**seed_row(1, "What is the weather in Paris?"),
              "tools": '[{"type": "function", "function": {"name": "get_weather"}}]'}
    calls = seed_row(2, "What is the weather in Paris?")
    calls["messages"][1:] = [{"role": "assistant", "content": "", "tool_calls": call},
                             {"role": "tool", "content": "21 C", "tool_call_id": "c1"},
                             {"role": "assistant", "content": "It is 21 C in Paris."}]
    history = seed_row(3, "And in Lyon?")  # a tool exchange before the last user turn
    history["messages"][:0] = calls["messages"]
    plain = seed_row(0, "How do I back up my phone?")
    rows = [plain, offers, calls, history, {**seed_row(4, "Why?"), "tools": None}]
    assert [uses_tools(r) for r in rows] == [False, True, True, True, False]
    assert [r["id"] for r in sample_seeds(rows, None, 0)] == ["seed-0", "seed-4"]
    assert self_instruct(rows[1:4], smollm2_engine, SelfInstructConfig(), CleanConfig(),
                         seed=1) == []


def test_unique_ids_suffixes_repeats():
    rows = [make_row([{"role": "user", "content": ""}], "evol", "p", "g", "s",
                     "engine_error", "x") for _ in range(3)]
    first = rows[0]["id"]
    seen: dict[str, int] = {}
    assert [r["id"] for r in unique_ids(rows[:2], seen)] == [first, first + "-2"]
    assert unique_ids(rows[2:], seen)[0]["id"] == first + "-3"  # counted across rounds


def test_clean_survivors_rejects_with_filter_reasons_and_leaves_eliminated_rows():
    ok = make_row([{"role": "user", "content": "Name a sea bird."},
                   {"role": "assistant", "content": "The herring gull is a common sea bird."}],
                  "evol", "p1", "g", "s")
    leak = make_row([{"role": "user", "content": "Name a fish."},
                     {"role": "assistant", "content": "Cod.<|im_end|> More text here."}],
                    "evol", "p2", "g", "s")
    gone = make_row([{"role": "user", "content": "x <|im_end|>"}], "evol", "p3", "g", "s",
                    "evol_no_gain", "identical")
    out = clean_survivors([ok, leak, gone], CleanConfig())
    assert [r["_reason"] for r in out] == [None, "special_token_literal", "evol_no_gain"]
    assert out[2]["_detail"] == "identical"


# Self-Instruct filters ---------------------------------------------------------------------

def test_rouge_l():
    assert rouge_l(["a", "b", "c", "d"], ["a", "b", "c", "d"]) == 1.0
    assert rouge_l(["a", "b"], ["c", "d"]) == 0.0
    assert rouge_l(["a", "b", "c", "d"], ["a", "c", "d", "e"]) == pytest.approx(2 * 3 / 8)
    assert tokens("Write 2 haiku、春の雨") == ["write", "2", "haiku", "春", "の", "雨"]


def test_most_similar_finds_near_tasks_only():
    pool = [tokens(t) for t in ("Write a poem about the sea.", "List three uses of vinegar.",
                                "春の季語を使って俳句を作ってください。")]
    hit = most_similar(tokens("Write a short poem about the sea."), pool, 0.7)
    assert hit is not None and hit[0] == 0 and hit[1] >= 0.7
    assert most_similar(tokens("秋の季語を使って俳句を作ってください。"), pool, 0.7)[0] == 2
    assert most_similar(tokens("Explain how a bicycle gear works."), pool, 0.7) is None


@pytest.mark.parametrize("task", ["Write poems.", "Describe this image of a cat in detail.",
                                  "- List five rivers in Europe.", "word " * 151])
def test_unusable_tasks(task):
    assert unusable(task.strip(), SelfInstructConfig()) is not None


@pytest.mark.parametrize("task", ["List five rivers in Europe and their lengths.",
                                  "「春」をテーマに俳句を三つ作ってください。",
                                  "Explain the mapping of keys in a Python dict."])
def test_usable_tasks(task):
    assert unusable(task, SelfInstructConfig()) is None


def test_extract_task():
    assert extract_task("Task 9: Name two moons.\nTask 10: Explain tides.") == "Name two moons."
    assert extract_task('"Translate hello into French."') == "Translate hello into French."
    assert extract_task("**New task:** Name two moons.") == "Name two moons."
    assert extract_task("Here is a new task:\n\nWrite a limerick about tides.\nTask 10: x") \
        == "Write a limerick about tides."
    assert extract_task("Sure! Write a limerick about tides.") == "Write a limerick about tides."


# end to end on the embedded model ----------------------------------------------------------

@pytest.fixture
def one_thread():
    """Generation on one intra-op thread: on a small shared CPU box two OpenMP threads spin
    waiting for each other (this file took 384 s with 2 threads and 60 s with 1 on 2 busy
    cores); a 135M model gains little from a second thread anyway."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SEEDS = [seed_row(0, "How can I improve my handwriting?"),
         seed_row(1, "What should I consider when adopting a dog?", history=True),
         seed_row(2, "How do I back up my phone?")]


def check_rows(rows, origin, reasons, parent_ids, generator):
    for row in rows:
        assert row["origin"] == origin and row["generator"] == generator
        assert row["parent_id"] in parent_ids and row["id"].startswith(f"{origin}-")
        assert row["_reason"] is None or row["_reason"] in reasons, row["_reason"]
        assert (row["_reason"] is None) == (row["_detail"] is None)
        last = row["messages"][-1]
        if row["_reason"] is None or row["_reason"].endswith(("_answer", "_too_short")):
            # answered: a new user turn and its reply
            assert last["role"] == "assistant" and row["messages"][-2]["role"] == "user"
            assert last["content"].strip() or row["_reason"]
        elif row["_reason"].endswith(("_prompt", "_copied_instructions", "_no_gain",
                                      "_similar", "_unusable")):
            assert last["role"] == "user"  # eliminated before anything was answered
    assert len({row["id"] for row in rows}) == len(rows)


def test_evolve_end_to_end_is_deterministic(smollm2_engine, one_thread):
    config = EvolConfig(rounds=1, rewrite=Sampling(temperature=0.7, max_tokens=40),
                        answer=Sampling(temperature=0.7, max_tokens=24))
    rows = evolve(SEEDS, smollm2_engine, config, CleanConfig(), seed=7)
    assert len(rows) == len(SEEDS)  # one evolution per seed and round, kept or not
    assert [r["parent_id"] for r in rows] == [s["id"] for s in SEEDS]
    check_rows(rows, "evol", set(EVOL_REASONS) | set(CLEAN_REASONS),
               {s["id"] for s in SEEDS}, f"transformers:{smollm2_engine.model}")
    for row, parent in zip(rows, SEEDS):
        assert row["messages"][:len(parent["messages"]) - 2] == parent["messages"][:-2]
        assert row["tags"][0] == "t" and row["tags"][1].removeprefix("evol:") in OPERATIONS
    assert evolve(SEEDS, smollm2_engine, config, CleanConfig(), seed=7) == rows
    with pytest.raises(ConfigError):
        evolve(SEEDS, smollm2_engine, EvolConfig(rounds=0), CleanConfig(), seed=7)


def test_self_instruct_end_to_end_is_deterministic(smollm2_engine, one_thread):
    config = SelfInstructConfig(num_requests=3, batch_size=2, num_examples=3,
                                machine_examples=1,
                                instruction=Sampling(temperature=1.0, max_tokens=32),
                                answer=Sampling(temperature=0.7, max_tokens=24))
    rows = self_instruct(SEEDS, smollm2_engine, config, CleanConfig(), seed=1)
    assert len(rows) == config.num_requests  # one row per request, kept or not
    check_rows(rows, "self_instruct", set(SELF_INSTRUCT_REASONS) | set(CLEAN_REASONS),
               {s["id"] for s in SEEDS}, f"transformers:{smollm2_engine.model}")
    assert self_instruct(SEEDS, smollm2_engine, config, CleanConfig(), seed=1) == rows
