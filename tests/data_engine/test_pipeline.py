"""Stage functions without Ray: reason precedence, disabled filters, count conservation."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_engine.config import CleanConfig, DataConfig, InputConfig
from data_engine.pipeline.clean import clean_batch
from data_engine.pipeline.split import assign_splits
from data_engine.schema import SPLITS
from data_engine.readers.ingest import ingest_shards
from data_engine.readers.shards import plan_shards
from data_engine.writers.outputs import REASONS, DatasetWriter

from .helpers import chat, work_table


def test_clean_batch_first_reason_wins_and_ingest_rejects_pass_through():
    rows = [chat("Q", "  "), chat("Q", "#a #b<|im_end|>"), chat("Q", "A proper answer here."), []]
    table = work_table(rows)
    reasons = table.column("_reason").to_pylist()
    reasons[3] = "malformed_json"
    stages = [None, None, None, "ingest"]
    table = table.set_column(table.schema.get_field_index("_reason"), "_reason",
                             pa.array(reasons, pa.string()))
    table = table.set_column(table.schema.get_field_index("_stage"), "_stage",
                             pa.array(stages, pa.string()))
    out = clean_batch(table, CleanConfig())
    assert out.column("_reason").to_pylist() == ["empty_turn", "special_token_literal", None,
                                                 "malformed_json"]
    assert out.column("_stage").to_pylist() == ["clean", "clean", None, "ingest"]
    assert out.column("num_tokens").to_pylist()[2] > 0


def test_disabled_filters_do_not_run():
    table = work_table([chat("Q", "自己紹介｜子育て｜ワーママ｜30代")])
    assert clean_batch(table, CleanConfig()).column("_reason").to_pylist() == ["tag_list"]
    out = clean_batch(table, CleanConfig(disable=["tag_list"]))
    assert out.column("_reason").to_pylist() == [None]


def _row_strategy():
    text = st.sampled_from(["記事のタイトル", "这是答案。", "A fine answer here.", "", "  ",
                            "自己紹介｜子育て｜ワーママ｜30代", "」」」」」」」", "OK",
                            "<|im_end|>", "Das ist eine deutsche Antwort, ganz bestimmt falsch."])
    role = st.sampled_from(["user", "assistant", "system", "tool", "bot"])
    messages = st.lists(st.builds(lambda r, c: {"role": r, "content": c}, role, text), max_size=4)
    return st.one_of(
        st.builds(lambda m: json.dumps({"messages": m}, ensure_ascii=False), messages),
        st.builds(lambda q, a: json.dumps({"prompt": q, "completion": a}, ensure_ascii=False),
                  text, text),
        st.builds(lambda q, a: json.dumps({"conversations": [{"from": "human", "value": q},
                                                             {"from": "gpt", "value": a}]}), text, text),
        st.builds(lambda q, a: json.dumps({"instruction": q, "input": "", "output": a}), text, text),
        st.just('{"unknown": 1}'), st.just("{not json"), st.just("[1, 2]"), st.just(""),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.lists(_row_strategy(), max_size=25), min_size=1, max_size=3),
       shard_rows=st.integers(1, 7))
def test_counts_are_conserved_over_random_mixtures(tmp_path_factory, files, shard_rows):
    tmp = tmp_path_factory.mktemp("mix")
    inputs = []
    for i, lines in enumerate(files):
        path = tmp / f"part{i}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        inputs.append(InputConfig(path=str(path)))
    config = DataConfig(inputs=inputs, clean=CleanConfig(languages=["ja", "en", "zh"]))
    shards, _ = plan_shards(inputs, shard_rows)
    writer = DatasetWriter(tmp / "out")
    if shards:
        batch = ingest_shards(pa.Table.from_pylist([s.to_dict() for s in shards]), inputs)
        batch = clean_batch(batch, config.clean)
        kept = batch.filter(pc.is_null(batch.column("_reason")))
        codes = iter(assign_splits(kept.column("id").to_pylist(), kept.column("source").to_pylist(),
                                   np.ones(kept.num_rows, np.int64), np.zeros((0, 2), np.int64),
                                   config.split, config.seed).split.tolist())
        writer.write(batch.append_column("split", pa.array(
            [None if r else SPLITS[next(codes)] for r in batch.column("_reason").to_pylist()],
            pa.string())))
    writer.close()  # the JSONL outputs; `hf/` (a child process each example) is not counted
    writer.publish()
    non_blank = sum(1 for lines in files for line in lines if line.strip())
    assert writer.input == non_blank
    assert writer.input == writer.kept + sum(writer.rejected.values())
    assert set(writer.rejected) == set(REASONS)
    rejected = [json.loads(x) for x in (tmp / "out" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == sum(writer.rejected.values())
    assert all(r["reason"] in REASONS and r["source"]["line"] >= 1 for r in rejected)
    kept = sum(len((tmp / "out" / f"{s}.jsonl").read_text().splitlines())
               for s in ("train", "validation", "test"))
    assert kept == writer.kept
