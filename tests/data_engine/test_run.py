"""End to end on a real local Ray: the output contract, and the CLI from a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_engine.config import DataConfig, InputConfig, load_config
from data_engine.writers.outputs import REASONS
from data_engine.readers.ingest import check_shapes
from data_engine.run import run

SAMPLE = Path(__file__).resolve().parents[2] / "data_engine" / "sample"
SPLITS = ("train", "validation", "test")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_contract(out: Path) -> dict:
    """Asserts the output contract every run must meet; returns the manifest."""
    from datasets import load_from_disk

    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == counts["kept"] - counts["repeats"] + sum(counts["rejected"].values())
    assert set(counts["rejected"]) == set(REASONS)
    hf = load_from_disk(str(out / "hf"))
    for split in SPLITS:
        rows = read_jsonl(out / f"{split}.jsonl")
        assert len(rows) == counts["splits"][split] == hf[split].num_rows
        assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert sum(counts["splits"].values()) == counts["kept"]
    rejected = read_jsonl(out / "rejected.jsonl")
    assert len(rejected) == sum(counts["rejected"].values())
    for record in rejected:
        assert record["reason"] in REASONS
        assert record["stage"] in ("ingest", "clean", "dedup", "mix")
        assert ("duplicate_of" in record) == (record["stage"] == "dedup")
        assert record["source"]["line"] >= 1 and ("raw" in record or "row" in record)
    assert manifest["seed"] == manifest["config"]["seed"]
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert {"ray", "pyarrow", "tunesmith"} <= set(manifest["versions"])
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") >= 2
    assert manifest["leak_check"]["leaks"] == 0
    return manifest


WEATHER_TOOL = [{"type": "function", "function": {
    "name": "weather", "description": "Today's weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
PARALLEL_CALLS = [
    {"role": "user", "content": "Weather in Kyoto and Osaka?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather",
                                                      "arguments": "{\"city\": \"Kyoto\"}"}},
        {"id": "c2", "type": "function", "function": {"name": "weather",
                                                      "arguments": "{\"city\": \"Osaka\"}"}}]},
    {"role": "tool", "content": "rain", "tool_call_id": "c2", "name": "weather"},
    {"role": "tool", "content": "sun", "tool_call_id": "c1", "name": "weather"},
    {"role": "assistant", "content": "Sun in Kyoto, rain in Osaka."}]


@pytest.mark.slow
def test_run_on_local_ray_mixed_layouts(ray_local, tmp_path):
    from datasets import Dataset

    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"id": "j1", "messages": [{"role": "user", "content": "タイトルを"},
                                             {"role": "assistant", "content": "ワーママの朝時間術"}]},
                   ensure_ascii=False),
        "{oops",
        json.dumps({"messages": [{"role": "user", "content": "A title?"},
                                 {"role": "assistant", "content": "#a #b #c"}]}),
        json.dumps({"id": "tools", "messages": PARALLEL_CALLS, "tools": WEATHER_TOOL}),
        json.dumps({"id": "j1", "messages": [{"role": "user", "content": "Another title?"},
                                             {"role": "assistant", "content": "Kyoto mornings"}]}),
        json.dumps({"id": "unmatched", "messages": PARALLEL_CALLS[:3] + [
            dict(PARALLEL_CALLS[3], tool_call_id="c9")] + PARALLEL_CALLS[4:]}),
    ]) + "\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"instruction": f"{i} 加 1 等于几？", "input": "",
                                          "output": f"{i} 加 1 等于 {i + 1}。"} for i in range(30)]),
                   tmp_path / "math.parquet", row_group_size=7)
    Dataset.from_list([{"question": f"What is item {i}?", "answer": f"Item {i} is a test row."}
                       for i in range(20)]).save_to_disk(str(tmp_path / "qa"))
    config = DataConfig(inputs=[InputConfig(path=str(jsonl)),
                                InputConfig(path=str(tmp_path / "math.parquet")),
                                InputConfig(path=str(tmp_path / "qa"),
                                            columns={"user": "question", "assistant": "answer"})])
    config.ray.shard_rows = 8
    result = run(config, tmp_path / "out", progress=False)
    manifest = check_contract(tmp_path / "out")
    assert manifest["counts"]["input"] == 56 and manifest["counts"]["kept"] == 53
    assert manifest["counts"]["rejected"]["malformed_json"] == 1
    assert manifest["counts"]["rejected"]["tag_list"] == 1
    assert manifest["counts"]["rejected"]["unmatched_tool_call"] == 1
    flow = {name: (c["input"], c["after_clean"], c["kept"]) for name, c in manifest["sources"].items()}
    assert flow == {"chat": (6, 3, 3), "math": (30, 30, 30), "qa": (20, 20, 20)}
    # two different rows with the id j1: both kept, and the manifest says so
    assert [w for w in manifest["warnings"] if "share" in w] == [
        "2 kept rows share 1 id with another, different row (e.g. 'j1'): each id should name "
        "one row (reports, `duplicate_of` and `parent_id` name rows by id); rows sharing an id "
        "land in one split. Give the rows unique ids, or drop the `id` field to have them "
        "hashed"]
    kept = {r["id"]: r for split in SPLITS for r in read_jsonl(tmp_path / "out" / f"{split}.jsonl")}
    # parallel calls stay matched to their results: the ids and names are written back
    assert kept["tools"]["messages"] == PARALLEL_CALLS
    assert kept["tools"]["tools"] == WEATHER_TOOL
    # ... and the counts say how many kept rows offer tools and call them (the unmatched
    # row, dropped, is not counted)
    assert manifest["counts"]["tool_rows"] == {"offer_tools": 1, "call_tools": 1}
    assert "kept rows with tool calls" in result.report_path.read_text(encoding="utf-8")
    assert [s["name"] for s in manifest["stages"]] == ["ingest", "clean", "dedup", "mix", "split",
                                                       "export"]
    assert result.report_path.exists()
    # Same config, same seed: byte-identical split files.
    again = run(config, tmp_path / "again", progress=False)
    for split in SPLITS:
        assert (again.out_dir / f"{split}.jsonl").read_bytes() == \
            (tmp_path / "out" / f"{split}.jsonl").read_bytes()


@pytest.mark.slow
def test_sample_run_matches_planted_defects(ray_local, tmp_path):
    expected = json.loads((SAMPLE / "data" / "expected.json").read_text(encoding="utf-8"))
    config = load_config(SAMPLE / "demo.yaml")
    read = {Path(item.path).name for item in config.inputs}  # demo.yaml need not list every file
    for entries in ("rejected", "exact_duplicates", "near_duplicates", "repaired"):
        expected[entries] = [e for e in expected[entries] if e["file"] in read]
    result = run(config, tmp_path / "out", progress=False)
    check_contract(result.out_dir)
    rejected = read_jsonl(result.out_dir / "rejected.jsonl")
    got = sorted((Path(r["source"]["file"]).name, r["source"]["line"], r["reason"])
                 for r in rejected)
    want = sorted([(r["file"], r["line"], r["reason"]) for r in expected["rejected"]]
                  + [(r["file"], r["line"], "exact_duplicate") for r in expected["exact_duplicates"]]
                  + [(r["file"], r["line"], "near_duplicate") for r in expected["near_duplicates"]])
    assert got == want
    # Each duplicate names the row it duplicates (checked where that row carries its own id).
    by_line = {(Path(r["source"]["file"]).name, r["source"]["line"]): r for r in rejected}
    checked = 0
    for planted in expected["exact_duplicates"] + expected["near_duplicates"]:
        original = planted["duplicate_of"]
        if not original["file"].endswith(".jsonl"):
            continue
        line = (SAMPLE / "data" / original["file"]).read_bytes().split(b"\n")[original["line"] - 1]
        own_id = json.loads(line.decode("utf-8")).get("id")
        if own_id is not None:
            assert by_line[(planted["file"], planted["line"])]["duplicate_of"] == own_id
            checked += 1
    assert checked >= 5
    total_rows = sum(f["rows"] for name, f in expected["files"].items() if name in read)
    assert result.manifest["counts"]["input"] == total_rows
    kept_text = "\n".join((result.out_dir / f"{s}.jsonl").read_text(encoding="utf-8")
                          for s in SPLITS)
    for repaired in expected["repaired"]:
        assert json.dumps(repaired["expected"], ensure_ascii=False)[1:-1] in kept_text


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_version_and_errors(tmp_path):
    assert _cli("--version", cwd=tmp_path).stdout.startswith("tunesmith ")
    missing = _cli("data", "run", "--input", "nope.jsonl", "--out", "o", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.jsonl: no such file" in missing.stderr
    assert not (tmp_path / "o" / ".ray").exists()  # refused before Ray was started
    (tmp_path / "bad.yaml").write_text("clean:\n  lenght: {}\nsplit: {train: 2}\n")
    bad = _cli("data", "run", "--config", "bad.yaml", "--out", "o", cwd=tmp_path)
    assert bad.returncode == 2
    assert "clean.lenght: unknown key" in bad.stderr
    none = _cli("data", "run", "--out", "o", cwd=tmp_path)
    assert none.returncode == 2 and "inputs:" in none.stderr
    (tmp_path / "rows.jsonl").write_text('{"messages": [{"role": "user", "content": "Hi"}, '
                                         '{"role": "assistant", "content": "Hello"}]}\n')
    (tmp_path / "tok.yaml").write_text(f"clean:\n  length: {{tokenizer: {tmp_path / 'no'}}}\n")
    tok = _cli("data", "run", "--config", "tok.yaml", "--input", "rows.jsonl", "--out", "t",
               cwd=tmp_path)
    assert tok.returncode == 2 and "clean.length.tokenizer: cannot load" in tok.stderr
    assert "Traceback" not in tok.stderr and not (tmp_path / "t" / ".ray").exists()


_SESSION_PROBE = """
import sys
from pathlib import Path

import ray

from data_engine.config import RayConfig
from data_engine.executor import ray_session

with ray_session(RayConfig(num_cpus=1), Path(sys.argv[1])) as session:
    assert ray.is_initialized()
session.wait_stopped()  # the shutdown ran in the background since the block ended
assert not ray.is_initialized()
try:
    with ray_session(RayConfig(num_cpus=1), Path(sys.argv[1])):
        raise KeyError("boom")
except KeyError:
    assert not ray.is_initialized()  # a failed block stops Ray before the error leaves it
print("stopped")
"""


def test_embedded_ray_stops_after_the_session_and_on_errors(tmp_path):
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", _SESSION_PROBE, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr[-2000:]


@pytest.mark.slow
def test_cli_on_the_bundled_sample_subprocess(tmp_path):
    import data_engine

    config = Path(data_engine.__file__).resolve().parent / "sample" / "demo.yaml"
    proc = _cli("data", "run", "--config", str(config), "--out", str(tmp_path / "demo" / "data"),
                "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report:" in proc.stdout and "manifest:" in proc.stdout
    manifest = check_contract(tmp_path / "demo" / "data")
    assert manifest["counts"]["rejected"]["tag_list"] > 0
    assert (tmp_path / "demo" / "data" / ".ray").is_dir() or manifest["ray"]["address"] == "local"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_against_a_ray_cluster(tmp_path):
    """`--ray-address` joins a separately started head (`ray start`), same code path."""
    import shutil
    import socket
    import tempfile
    import time

    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ts-rc-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             f"--temp-dir={temp_dir}", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        (tmp_path / "in.jsonl").write_text("\n".join(
            json.dumps({"prompt": f"Question {i}?", "completion": f"Answer number {i}."})
            for i in range(40)) + "\n{bad\n")
        command = [sys.executable, "-m", "tunesmith", "data", "run", "--input", "in.jsonl",
                   "--out", "out", "--ray-address", f"127.0.0.1:{port}", "--no-progress"]
        # A driver without RAY_AUTH_MODE is refused by the token-auth head: the error says
        # which variable to set (Ray's own says only "Failed to connect").
        no_auth = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = subprocess.run(command, cwd=tmp_path, env=no_auth, capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode == 3, refused.stderr[-3000:]
        assert "set RAY_AUTH_MODE=token here as on the head" in refused.stderr
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        manifest = check_contract(tmp_path / "out")
        assert manifest["ray"]["address"] == f"127.0.0.1:{port}"
        assert manifest["counts"]["kept"] == 40 and manifest["counts"]["rejected"]["malformed_json"] == 1
        assert not (tmp_path / "out" / ".ray").exists()  # the cluster's temp dir, not ours
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _rows_file(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"Answer number {i}."}]}) + "\n" for i in range(n)))
    return path


def test_an_out_that_cannot_hold_the_outputs_is_refused_before_reading(tmp_path):
    """An --out that is the inputs' folder (its train.jsonl replaced the input), a file, or
    holds a folder where a file goes: exit 2 before anything is read, the input untouched."""
    from data_engine.errors import OutputPlaceError

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = _rows_file(inputs / "train.jsonl")
    before = source.read_bytes()
    (tmp_path / "a-file").write_text("")
    (tmp_path / "blocked" / "train.jsonl").mkdir(parents=True)
    for input_path, out, said in [
            (source, inputs, "overlaps the input"),  # the run would write inputs/train.jsonl
            (inputs, inputs, "overlaps the input"),  # and read it back next time
            (source, tmp_path / "a-file", "exists and is not a folder"),
            (source, tmp_path / "a-file" / "sub", "cannot be made"),
            (source, tmp_path / "blocked", "is in the way")]:
        config = DataConfig(inputs=[InputConfig(path=str(input_path))])
        with pytest.raises(OutputPlaceError) as err:
            run(config, out, progress=False)
        assert said in str(err.value) and err.value.exit_code == 2, (out, err.value)
    assert source.read_bytes() == before and not (inputs / "rejected.jsonl").exists()


def test_an_input_none_of_whose_rows_has_its_shape_is_refused(tmp_path):
    """A `columns:` mapping naming absent columns (or a file of no chat shape) rejected every
    row as a bare `unknown_format` and went on; now exit 2 before Ray starts, naming the
    field, the missing columns and the keys the rows have. Mixed files still run."""
    from data_engine.errors import InputError

    pq.write_table(pa.Table.from_pylist([{"q": f"What is {i}?", "a": f"It is {i}."}
                                         for i in range(20)]), tmp_path / "qa.parquet")
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n"
                                                 for i in range(150)))
    for item, field, said in [
            (InputConfig(path=str(tmp_path / "qa.parquet"),
                         columns={"user": "question", "assistant": "answer"}),
             "inputs[1].columns", "user=question, assistant=answer are not columns of the row"),
            (InputConfig(path=str(tmp_path / "qa.parquet"),
                         columns={"user": "q", "assistant": "answer"}),
             "inputs[1].columns", "assistant=answer is not a column"),
            (InputConfig(path=str(tmp_path / "text.jsonl")), "inputs[1].path",
             "none of its first 100 rows can be read as a chat row"),
            (InputConfig(path=str(tmp_path / "qa.parquet"), format="alpaca"),
             "inputs[1].format", "format 'alpaca' needs instruction, output")]:
        config = DataConfig(inputs=[InputConfig(path=str(_rows_file(tmp_path / "ok.jsonl"))),
                                    item])
        with pytest.raises(InputError) as err:
            run(config, tmp_path / "out", progress=False)
        assert err.value.field == field and said in err.value.message, err.value
        assert "keys: a, q" in err.value.message or "keys: text" in err.value.message
    assert not (tmp_path / "out" / "rejected.jsonl").exists()
    # one good row among the first 100 lines: the file runs (bad rows are rejected rows)
    mixed = tmp_path / "mixed.jsonl"
    lines = (tmp_path / "text.jsonl").read_text().splitlines(keepends=True)
    mixed.write_text("".join(lines[:99]) + _rows_file(tmp_path / "one.jsonl", 1).read_text())
    check_shapes([InputConfig(path=str(mixed))])


def test_a_missing_engine_model_is_refused_before_ray_starts(tmp_path):
    """With the judge on, an engine.model folder that is not there failed inside a Ray actor
    (a 145-line traceback, after clean and dedup)."""
    from data_engine.config import EngineConfig
    from data_engine.errors import ConfigError
    from data_engine.synth.judge import JudgeConfig

    config = DataConfig(inputs=[InputConfig(path=str(_rows_file(tmp_path / "rows.jsonl")))],
                        engine=EngineConfig(model=str(tmp_path / "no-model")),
                        judge=JudgeConfig())
    with pytest.raises(ConfigError, match="engine.model: .* is not a folder"):
        run(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / ".ray").exists()


def test_a_folder_input_reads_its_jsonl_and_parquet_files(tmp_path):
    from data_engine.readers.shards import _files_of

    _rows_file(tmp_path / "b.jsonl")
    pq.write_table(pa.table({"messages": ["x"]}), tmp_path / "a.parquet")
    (tmp_path / "notes.txt").write_text("not data")
    assert _files_of(str(tmp_path)) == [(str(tmp_path / "a.parquet"), "parquet"),
                                        (str(tmp_path / "b.jsonl"), "jsonl")]


def test_inputs_with_no_rows_or_unreadable_are_input_errors(ray_local, tmp_path):
    """Empty and blank files, a Parquet of no rows, or a file that is not Parquet: a
    one-line error naming the file (they were tracebacks). A run that fails once started
    has removed an earlier run's outputs, so train.jsonl never looks finished without its
    manifest; one refused while planning (the unreadable file) changed nothing."""
    from data_engine.errors import InputError

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    pq.write_table(pa.table({"messages": pa.array([], pa.string())}), tmp_path / "none.parquet")
    (tmp_path / "broken.parquet").write_text("garbage")
    out = tmp_path / "out"
    for name, said in [("empty.jsonl", "no rows to read"), ("blank.jsonl", "no rows to read"),
                       ("none.parquet", "no rows to read"),
                       ("broken.parquet", "not a readable Parquet file")]:
        out.mkdir(exist_ok=True)
        for stale in ("train.jsonl", "report.html", "manifest.json"):
            (out / stale).write_text("from an earlier run")
        with pytest.raises(InputError) as err:
            run(DataConfig(inputs=[InputConfig(path=str(tmp_path / name))]), out,
                progress=False)
        assert str(tmp_path / name) in str(err.value) and said in str(err.value), err.value
        assert err.value.exit_code == 2
        left = [(out / stale).exists() for stale in ("train.jsonl", "report.html",
                                                     "manifest.json")]
        assert left == [name == "broken.parquet"] * 3, (name, left)


def test_an_unreachable_cluster_fails_at_once(tmp_path):
    """`--ray-address` at a port nothing listens on hung for minutes in Ray's retries (the
    run was killed after 400 s), and `notahost` was a ValueError traceback: both exit 3."""
    import socket
    import time

    from data_engine.executor import _unreachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert _unreachable(f"127.0.0.1:{listening.getsockname()[1]}") is None
    assert _unreachable("notahost") == "not a host:port address"
    assert _unreachable("127.0.0.1:1").startswith("nothing answers there")
    _rows_file(tmp_path / "rows.jsonl")
    started = time.monotonic()
    done = _cli("data", "run", "--input", "rows.jsonl", "--out", "o", "--ray-address",
                "127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "cannot connect to Ray at 127.0.0.1:1: nothing answers there" in done.stderr
    assert time.monotonic() - started < 60


def test_a_second_run_into_the_same_out_is_refused(tmp_path):
    """Two runs into one --out cleared each other's stage parts, and the one that finished
    published train.jsonl with rows missing (15,000 of 50,000), exit 0."""
    from data_engine.errors import OutputPlaceError
    from data_engine.run import _holding

    source = _rows_file(tmp_path / "rows.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    with _holding(out):  # a run in progress (the lock is per open file, so this process too)
        with pytest.raises(OutputPlaceError) as err:
            run(DataConfig(inputs=[InputConfig(path=str(source))]), out, progress=False)
    assert f"another run is writing into it (pid {os.getpid()})" in str(err.value)
    assert err.value.exit_code == 2 and not (out / ".stages").exists()


def test_a_run_that_fails_after_exporting_leaves_no_split_file(ray_local, tmp_path,
                                                                  monkeypatch):
    """The JSONL outputs keep `.partial` names until the manifest is written: a run killed
    (or failing) while exporting left a train.jsonl of 15,802 rows of ~237k that training
    read as the whole split. The next run clears the partial files and publishes."""
    import data_engine.run as run_module

    source = _rows_file(tmp_path / "rows.jsonl", n=40)
    out = tmp_path / "out"
    config = DataConfig(inputs=[InputConfig(path=str(source))])

    def fail(*args, **kwargs):
        raise RuntimeError("killed while drawing the report")

    with monkeypatch.context() as patched:
        patched.setattr(run_module, "write_report", fail)
        with pytest.raises(RuntimeError, match="killed while drawing"):
            run(config, out, progress=False)
    assert (out / "train.jsonl.partial").stat().st_size > 0  # the export had run
    assert not [p.name for p in out.iterdir() if p.name.endswith(".jsonl")]
    assert not (out / "manifest.json").exists() and not (out / "hf").exists()
    counts = run(config, out, progress=False).manifest["counts"]
    assert sum(len(read_jsonl(out / f"{split}.jsonl")) for split in SPLITS) == counts["kept"]
    assert counts["kept"] + sum(counts["rejected"].values()) == 40
    assert not list(out.glob("*.partial"))
