"""CRAFT: MiniLM embeddings, retrieval near the few-shots, rewriting into task samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_engine.config import CleanConfig
from data_engine.config_loader import from_dict
from data_engine.engines.base import Generation
from data_engine.errors import ConfigError, InputError
from data_engine.filters import REASONS
from data_engine.synth.craft import (CRAFT_REASONS, BadFormat, CraftConfig, FewShot, Retrieved,
                                     build_prompt, craft, fewshot_pairs, load_corpus,
                                     load_fewshots, parse_sample, retrieve, sample_from,
                                     select_documents)
from data_engine.synth.embed import (SentenceEmbedder, embed_texts, embed_with_ray,
                                     model_dir)

DATA = Path(__file__).parent / "data" / "craft"
FEWSHOTS = DATA / "fewshots.jsonl"
CORPUS = DATA / "corpus.jsonl"
# Each few-shot (in file order) has one document on its exact subject.
TWINS = ["cook-sourdough", "cook-eggs", "cook-onions", "cook-castiron", "cook-risotto",
         "cook-piecrust", "cook-stock", "cook-knife"]


@pytest.fixture(scope="module")
def pairs():
    return fewshot_pairs(load_fewshots(FEWSHOTS))


@pytest.fixture(scope="module")
def corpus():
    return load_corpus([str(CORPUS)], id_column="doc_id")


def cooking(doc_id: str) -> bool:
    return doc_id.startswith("cook-")


# ---------------------------------------------------------------- embeddings


def test_embeddings_are_unit_length_and_rank_a_paraphrase_above_unrelated_text():
    vectors = embed_texts(["How do I reset my password?",
                           "What are the steps to change my login password?",
                           "Penguins live mostly in the Southern Hemisphere.",
                           ""])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > 0.6 > 0.2 > unrelated


def test_embedder_follows_the_sentence_transformers_config():
    embedder = SentenceEmbedder(model_dir(), batch_size=2)
    assert (embedder.max_seq_length, embedder.normalize) == (256, True)
    # The similarity matrix sentence-transformers' README prints for this model and these
    # sentences: mean pooling and normalisation match the reference implementation.
    v = embedder.embed(["The weather is lovely today.", "It's so sunny outside!",
                        "He drove to the stadium."])
    np.testing.assert_allclose(v @ v.T, [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411],
                                         [0.1046, 0.1411, 1.0]], atol=1e-3)
    # Truncation at 256 tokens: words past it change nothing; within it they do.
    long = " ".join(f"word{i % 50}" for i in range(400))
    a, b, c = embedder.embed([long, long + " completely different ending about volcanoes",
                              "short " + long])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(a @ c) < 0.9999
    # Batching and padding do not change a text's vector.
    alone = embedder.embed(["Padding must not matter."])[0]
    padded = embedder.embed(["Padding must not matter.", long])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_ray_batched_embedding_equals_in_process(ray_local):
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()]
    texts += [f"Sentence number {i} is about topic {i % 7}." for i in range(40)]
    local = embed_texts(texts)
    remote = embed_with_ray(texts, concurrency=2, batch_size=8)
    assert remote.shape == local.shape
    np.testing.assert_allclose(remote, local, atol=1e-5)


def test_ray_retrieval_equals_in_process(ray_local, pairs, corpus):
    config = CraftConfig(per_example_k=2, mean_k=4, embed_batch_size=8, embed_concurrency=1)
    in_process = retrieve(pairs, corpus, config)
    config.ray_min_documents = 0
    through_ray = retrieve(pairs, corpus, config)
    assert [(d.doc_id, d.query, d.rank) for d in through_ray] == \
        [(d.doc_id, d.query, d.rank) for d in in_process]
    np.testing.assert_allclose([d.score for d in through_ray], [d.score for d in in_process],
                               atol=1e-5)


# ---------------------------------------------------------------- retrieval


def test_select_documents_goes_rank_by_rank_removes_duplicates_and_caps():
    texts = ["a", "b", "c", "d", "B "]  # document 4 is document 1's text again
    scores = np.array([
        # shot0 shot1 mean
        [0.9, 0.1, 0.5],
        [0.8, 0.7, 0.9],
        [0.1, 0.9, 0.6],
        [0.2, 0.2, 0.7],
        [0.8, 0.7, 0.9],
    ], dtype=np.float32)
    config = CraftConfig(per_example_k=2, mean_k=3, max_documents=10)
    chosen = select_documents(scores, texts, config)
    # rank 1: shot0 -> 0, shot1 -> 2, mean -> 1 (tie with 4: the earlier wins);
    # rank 2: shot0 -> 1 (used), shot1 -> 1 (used), mean -> 4 (same text as 1); rank 3: mean -> 3
    assert [(d, q, r) for d, q, r, _ in chosen] == [(0, "fewshot:0", 1), (2, "fewshot:1", 1),
                                                    (1, "mean", 1), (3, "mean", 3)]
    assert [s for *_, s in chosen] == pytest.approx([0.9, 0.9, 0.9, 0.7])
    config.max_documents = 2
    assert [d for d, *_ in select_documents(scores, texts, config)] == [0, 2]


def test_retrieval_finds_each_fewshots_nearest_document(pairs, corpus):
    docs = retrieve(pairs, corpus, CraftConfig(per_example_k=1, mean_k=0))
    assert [d.doc_id for d in docs] == TWINS
    assert [d.query for d in docs] == [f"fewshot:{i}" for i in range(len(TWINS))]
    assert [d.nearest_fewshot for d in docs] == list(range(len(TWINS)))
    assert all(d.rank == 1 and 0.4 < d.score <= 1.0 for d in docs)


def test_retrieval_by_the_mean_stays_in_the_cluster_and_duplicates_are_used_once(pairs, corpus):
    by_mean = retrieve(pairs, corpus, CraftConfig(per_example_k=1, mean_k=12))
    ids = [d.doc_id for d in by_mean]
    assert len(ids) == len(set(ids))
    assert all(cooking(i) for i in ids), ids
    # The mean finds cooking documents no single few-shot is nearest to.
    assert {d.doc_id for d in by_mean if d.query == "mean"} >= {"cook-general-1",
                                                                "cook-general-2"}
    # The starter's document appears twice in the corpus (whitespace aside): used once.
    assert "cook-sourdough" in ids and "cook-sourdough-copy" not in ids
    # Every list overlaps: 8 per-example picks + 12 by the mean, far fewer documents.
    assert len(ids) < 8 + 12
    wide = retrieve(pairs, corpus, CraftConfig(per_example_k=3, mean_k=0, max_documents=100))
    assert all(cooking(d.doc_id) for d in wide if d.rank == 1)
    assert len({d.doc_id for d in wide}) == len(wide) < 8 * 3


# ---------------------------------------------------------------- inputs and config


def test_fewshot_count_bounds_and_shape(pairs):
    rows = load_fewshots(FEWSHOTS)
    with pytest.raises(ConfigError, match="at least 8"):
        fewshot_pairs(rows[:7])
    broken = rows + [{"messages": [{"role": "user", "content": "no reply"}]}]
    with pytest.raises(ConfigError, match=r"fewshots\[8\]: needs a user turn"):
        fewshot_pairs(broken)
    many = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(33)]
    with pytest.warns(UserWarning, match="33 few-shots"):
        assert len(fewshot_pairs(many)) == 33
    assert pairs[0] == FewShot("How do I keep my sourdough starter alive?",
                               pairs[0].response, None)


def test_load_corpus_jsonl_and_parquet(tmp_path, corpus):
    assert len(corpus.ids) == 25 and corpus.skipped == 1  # one blank document
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one"}\nnot json\n\n{"body": "x"}\n{"text": "two"}\n')
    plain = load_corpus([str(jsonl)])
    assert (plain.ids, plain.texts, plain.skipped) == (["c.jsonl:1", "c.jsonl:5"],
                                                       ["one", "two"], 2)
    pq.write_table(pa.table({"body": ["x", "y"], "key": ["k1", "k2"]}), tmp_path / "p.parquet")
    parquet = load_corpus([str(tmp_path / "p.parquet")], text_column="body", id_column="key")
    assert (parquet.ids, parquet.texts) == (["k1", "k2"], ["x", "y"])
    with pytest.raises(InputError, match="no column text"):
        load_corpus([str(tmp_path / "p.parquet")])
    pq.write_table(pa.table({"body": ["z"], "key": ["k1"]}), tmp_path / "q.parquet")
    with pytest.raises(InputError, match="'k1' appears twice"):
        load_corpus([str(tmp_path)], text_column="body", id_column="key")
    # JSONL with the text under another name gave 0 rows and exit 0, saying nothing
    (tmp_path / "content.jsonl").write_text('{"content": "one"}\n{"content": "two"}\n')
    with pytest.raises(InputError, match="no document has text in the column 'text' "
                                         "\\(2 rows without it\\)"):
        load_corpus([str(tmp_path / "content.jsonl")])
    with pytest.warns(UserWarning, match="2 corpus rows have no text"):
        load_corpus([str(jsonl)])


def test_corpus_files_that_share_a_name_get_distinct_default_ids(tmp_path):
    """`c1/docs.jsonl` and `c2/docs.jsonl` (or two folders of `part-0.parquet` shards)
    failed with "document id 'docs.jsonl:1' appears twice", no id column being set."""
    for name in ("c1", "c2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "docs.jsonl").write_text(f'{{"text": "{name} one"}}\n')
        pq.write_table(pa.table({"text": [f"{name} shard"]}),
                       tmp_path / name / "part-0.parquet")
    both = load_corpus([str(tmp_path / "c1" / "docs.jsonl"), str(tmp_path / "c2" / "docs.jsonl")])
    assert both.ids == ["c1/docs.jsonl:1", "c2/docs.jsonl:1"]
    shards = load_corpus([str(tmp_path / "c1"), str(tmp_path / "c2")])
    assert shards.ids == ["c1/part-0.parquet:1", "c2/part-0.parquet:1"]
    with pytest.raises(InputError, match="appears twice.*listed twice"):
        load_corpus([str(tmp_path / "c1" / "docs.jsonl")] * 2)


def test_config_reports_every_problem():
    bad = CraftConfig(per_example_k=0, mean_k=-1, top_p=0.0, shots_in_prompt=40)
    problems = "\n".join(bad.check())
    for expected in ("per_example_k: must be >= 1", "mean_k: must be >= 0",
                     "top_p: must be within", "shots_in_prompt: at most 32"):
        assert expected in problems
    assert from_dict(CraftConfig, {"corpus": ["a.jsonl"], "mean_k": 5}).mean_k == 5
    with pytest.raises(ConfigError, match="per_exmple_k: unknown key"):
        from_dict(CraftConfig, {"per_exmple_k": 3})


def test_bad_fewshots_fail_before_a_model_loads(tmp_path):
    from data_engine.config import DataConfig, load_config
    from data_engine.synth.runner import run_generator

    three = load_fewshots(FEWSHOTS)[:3]

    def no_model():
        raise AssertionError("the model was loaded before the few-shots were checked")

    config = DataConfig()
    config.synth.craft = CraftConfig(corpus=[str(CORPUS)])
    with pytest.raises(ConfigError, match="3 given, CRAFT needs at least 8"):
        run_generator("craft", config, no_model, fewshots=three, corpus=[str(CORPUS)])
    with pytest.raises(InputError, match="no such file"):
        run_generator("craft", config, no_model, fewshots=load_fewshots(FEWSHOTS),
                      corpus=[str(tmp_path / "missing.jsonl")])
    # `data run` reads the file when it loads its config, before ingest, clean and dedup
    shots = tmp_path / "shots.jsonl"
    shots.write_text("".join(json.dumps(r) + "\n" for r in three), encoding="utf-8")
    run = tmp_path / "run.yaml"
    run.write_text(f"inputs: [{{path: {CORPUS}}}]\n"
                   f"synth: {{craft: {{fewshots: {shots}, corpus: [{CORPUS}]}}}}\n")
    with pytest.raises(ConfigError, match=r"synth.craft.fewshots: .*shots.jsonl: fewshots: 3 "
                                          "given"):
        load_config(run)


# ---------------------------------------------------------------- augmentation


@pytest.mark.parametrize("text, expected", [
    ("### Instruction\nWhat is a roux?\n### Response\nFlour cooked in fat.\n### End",
     ("What is a roux?", "Flour cooked in fat.")),
    ("Sure, here it is.\n\n**Instruction:** Name a herb.\n**Response:** Basil.\n\n"
     "### Instruction\nA second sample is ignored\n### Response\nignored",
     ("Name a herb.", "Basil.")),
    ("Instruction: Why rest dough?\nResponse: Gluten relaxes.\nResponse times vary.",
     ("Why rest dough?", "Gluten relaxes.\nResponse times vary.")),
    ("## Instructions:\nTranslate to French.\n### Input\ncheese\n### Response:\nfromage",
     ("Translate to French.\n\ncheese", "fromage")),
    # lines of the answer that look like bare headers end nothing (they used to cut it)
    ("### Instruction\nWrite total(xs).\n### Response\ndef total(xs):\n    return sum(xs)"
     "\n\nExample:\nInput: [1, 2, 3]\nOutput: 6\nResponse: 6\nEnd: done\n### End",
     ("Write total(xs).", "def total(xs):\n    return sum(xs)\n\nExample:\nInput: [1, 2, 3]"
      "\nOutput: 6\nResponse: 6\nEnd: done")),
    # a bare Input: line is the instruction's text, kept as written
    ("### Instruction\nLabel the review positive or negative.\nInput: The battery died.\n"
     "### Response\nnegative",
     ("Label the review positive or negative.\nInput: The battery died.", "negative")),
    # a bare Response: inside a marked instruction is text; the marked one answers
    ("### Instruction\nReply to: 'Response: due Friday'\nResponse: keep it short\n"
     "### Response\nNoted.", ("Reply to: 'Response: due Friday'\nResponse: keep it short",
                               "Noted.")),
    # bare headers throughout: a second bare Instruction: ends the first sample
    ("Instruction: Name a herb.\nResponse: Basil.\nInstruction: Another\nResponse: Dill",
     ("Name a herb.", "Basil.")),
])
def test_parse_sample_accepts_the_format_and_common_variants(text, expected):
    assert parse_sample(text) == expected


@pytest.mark.parametrize("text, why", [
    ("", "no ### Instruction"),
    ("Here is a question about bread and its answer.", "no ### Instruction"),
    ("### Response\nAn answer\n### Instruction\nA question", "no ### Response"),
    ("### Instruction\nA question only", "no ### Response"),
    ("### Instruction\n\n### Response\nAn answer", "empty instruction"),
    ("### Instruction\nA question\n### Response\n   \n### End", "empty response"),
])
def test_parse_sample_rejects_malformed_and_empty_replies(text, why):
    with pytest.raises(BadFormat, match=why):
        parse_sample(text)


def test_sample_from_gives_each_failure_its_reason():
    shots = {"how do i boil an egg?"}
    good = "### Instruction\nHow do I poach an egg?\n### Response\nSwirl simmering water."
    messages, reason, _ = sample_from(Generation(good, "stop"), shots, "Be brief.")
    assert reason is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "How do I poach an egg?"
    assert sample_from(Generation("", "error", 0, "timeout: 60 s"), shots, None)[1:] == \
        ("engine_error", "timeout: 60 s")
    assert sample_from(Generation(good, "length", 512), shots, None)[1] == "craft_unfinished"
    bad = sample_from(Generation("just prose", "stop"), shots, None)
    assert bad == ([{"role": "assistant", "content": "just prose"}], "craft_bad_format",
                   "no ### Instruction line")
    copied = "### Instruction\nHow do I  boil an egg?\n### Response\nTen minutes."
    assert sample_from(Generation(copied, "stop"), shots, None)[1] == "craft_copied_fewshot"


def test_prompt_shows_the_nearest_fewshot_and_the_document(pairs):
    doc = Retrieved("d1", "Word " * 1000, 0.7, "fewshot:4", 1, nearest_fewshot=4)
    config = CraftConfig(shots_in_prompt=3, max_document_chars=300)
    prompt = build_prompt(doc, pairs, config, seed=1)
    assert prompt == build_prompt(doc, pairs, config, seed=1)
    assert prompt.count("### Instruction\n") == 3
    last_shot = prompt.rsplit("### Instruction\n", 1)[1]
    assert last_shot.startswith(pairs[4].instruction)
    assert "Word Word" in prompt and prompt.count("Word") < 70
    assert "$examples" not in prompt and "$document" not in prompt
    others = {build_prompt(doc, pairs, config, seed=s) for s in range(6)}
    assert len(others) > 1  # the other shots are drawn with the seed


def test_craft_end_to_end_with_the_embedded_model(smollm2_engine):
    # SmolLM2-135M writes poor samples: this checks structure, not quality; kept small
    # (2 documents, 40 tokens) because it runs on CPU.
    config = CraftConfig(per_example_k=1, mean_k=0, max_documents=2, shots_in_prompt=1,
                         max_tokens=40, max_document_chars=300, id_column="doc_id")
    rows = craft(load_fewshots(FEWSHOTS), [str(CORPUS)], smollm2_engine, config,
                 CleanConfig(), seed=0)
    assert [r["parent_id"] for r in rows] == TWINS[:2]  # one row per document, in order
    allowed = set(CRAFT_REASONS) | set(REASONS)
    for row in rows:
        assert row["origin"] == "craft" and row["source"] == "craft"
        assert row["generator"] == f"transformers:{smollm2_engine.model}"
        assert row["id"].startswith("craft-")
        assert row["_reason"] is None or row["_reason"] in allowed, row
        if row["_reason"] is None:
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
            assert all(m["content"].strip() for m in row["messages"])
        else:
            assert row["_detail"]
    assert len({r["id"] for r in rows}) == len(rows)


def test_near_equal_cosines_are_ties_that_go_to_the_earlier_document():
    from data_engine.synth.craft import _top

    # A document and its copy, embedded in batches of other lengths, differ by ~1e-7.
    scores = np.array([0.2, 0.6547322, 0.9, 0.65473225, 0.6547321])
    assert _top(scores, 2).tolist() == [2, 1]
    assert _top(scores, 4).tolist() == [2, 1, 3, 4]
    assert _top(np.array([0.5, 0.50002, 0.1]), 1).tolist() == [1]  # 2e-5 apart: no tie
