"""`hf/` is saved by a child process: the DatasetDict it writes, and its failures."""

from __future__ import annotations

import signal

import pyarrow as pa
import pytest
from datasets import load_from_disk

from data_engine.errors import OutputError
from data_engine.writers.hf import HfSave


def _stream(path, ids: list[str]) -> None:
    table = pa.table({"id": pa.array(ids, pa.string()),
                      "n": pa.array(range(len(ids)), pa.int64())})
    with pa.ipc.new_stream(str(path), table.schema) as sink:
        sink.write_table(table)


def test_the_child_saves_each_stream_as_a_split(tmp_path):
    _stream(tmp_path / "a.arrow", ["x", "y"])
    _stream(tmp_path / "b.arrow", ["z"])
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "stale.txt").write_text("from an earlier run")
    HfSave({"train": tmp_path / "a.arrow", "test": tmp_path / "b.arrow"},
           tmp_path / "hf").wait()
    saved = load_from_disk(str(tmp_path / "hf"))
    assert saved["train"]["id"] == ["x", "y"] and saved["test"]["n"] == [0]
    assert not (tmp_path / "hf" / "stale.txt").exists()


def test_an_empty_split_loads_with_its_columns(tmp_path):
    _stream(tmp_path / "a.arrow", ["x", "y", "z"])
    _stream(tmp_path / "b.arrow", [])  # e.g. 3 kept rows: validation and test get none
    HfSave({"train": tmp_path / "a.arrow", "validation": tmp_path / "b.arrow"},
           tmp_path / "hf").wait()
    saved = load_from_disk(str(tmp_path / "hf"))
    assert saved["train"].num_rows == 3 and saved["validation"].num_rows == 0
    assert saved["validation"].column_names == ["id", "n"]


def test_a_failed_save_raises_with_the_childs_error(tmp_path):
    _stream(tmp_path / "a.arrow", ["x"])
    (tmp_path / "hf").write_text("a file where the folder goes")
    with pytest.raises(OutputError) as failed:
        HfSave({"train": tmp_path / "a.arrow"}, tmp_path / "hf").wait()
    assert failed.value.field == "out" and "NotADirectoryError" in str(failed.value)


def test_cancel_stops_a_running_save(tmp_path):
    _stream(tmp_path / "a.arrow", ["x"])
    saving = HfSave({"train": tmp_path / "a.arrow"}, tmp_path / "hf")
    saving.cancel()  # long before `datasets` is imported
    assert saving._process.returncode == -signal.SIGKILL
    assert not (tmp_path / "hf").exists()
