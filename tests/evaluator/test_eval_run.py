"""`eval run` end to end against real servers on loopback with scripted tiny models: the
founding failures (never stopping, looping) fail the gate; a model that answers passes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from evaluator.data import EvalError
from evaluator.run import EvalOptions, model_target, run_eval

ROWS = [
    {"id": "ja-1", "source": "titles_ja", "tags": [], "messages": [
        {"role": "system", "content": "あなたは記事のタイトルを考える編集者です。"},
        {"role": "user", "content": "以下の文章に合うタイトルを付けてください。\n\n毎朝15分の音読を1年続けた。"},
        {"role": "assistant", "content": "朝15分の音読を1年"}]},
    {"id": "ja-2", "source": "titles_ja", "tags": [], "messages": [
        {"role": "user", "content": "タイトルを付けてください。\n\n桜が満開になった。"},
        {"role": "assistant", "content": "満開の桜"}]},
    {"id": "en-1", "source": "faq_en", "tags": [], "messages": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there"}]},
    {"id": "en-2", "source": "faq_en", "tags": ["json"], "messages": [
        {"role": "user", "content": "Reply with a JSON object with key a."},
        {"role": "assistant", "content": "{\"a\": 1}"}]},
]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Today's weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = json.dumps([{"id": "call_8f3k2a", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Kyoto\"}"}}])
# Tool rows as the data engine writes them (tool_calls as JSON text): one calls then answers
# (its call turn is a probe), one offers the tool but answers in text, and one ends with the
# call (a split made by hand: it is a probe too, and its reply is not judged).
TOOL_ROWS = [
    {"id": "tool-1", "source": "tools_en", "tags": [], "tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Kyoto?"},
        {"role": "assistant", "content": "", "tool_calls": CALL},
        {"role": "tool", "tool_call_id": "call_8f3k2a", "content": "{\"sky\": \"sunny\"}"},
        {"role": "assistant", "content": "Sunny in Kyoto."}]},
    {"id": "tool-2", "source": "tools_en", "tags": [], "tools": TOOLS, "messages": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there"}]},
    {"id": "tool-3", "source": "tools_en", "tags": [], "tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Kyoto?"},
        {"role": "assistant", "content": "", "tool_calls": CALL}]},
]


def _data(folder, rows):
    (folder / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("data"), ROWS)


@pytest.fixture(scope="module")
def tool_data_dir(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("tool-data"), ROWS + TOOL_ROWS)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", "eval", "run", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_model_that_never_stops_fails_the_gate(endless_model_dir, tool_data_dir, tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text("usability_min: 0.95\ntool_call_exact_min: 0.5\n"
                    "tool_call_spurious_max: 0.0\n")
    out = tmp_path / "eval"
    rows = len(ROWS + TOOL_ROWS)
    done = _cli("--model", str(endless_model_dir), "--data", str(tool_data_dir), "--baseline",
                "none", "--max-tokens", "24", "--gate", str(gate), "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    usability = metrics["usability"]["model"]
    assert usability["rate"] == 0.0 and usability["failures"]["no_stop"] == rows
    check = next(c for c in metrics["gate"]["checks"] if c["name"] == "usability")
    assert check["status"] == "fail" and "no_stop" in check["reason"]
    calls = next(c for c in metrics["gate"]["checks"] if c["name"] == "tool_calls")
    assert calls["status"] == "fail" and calls["value"] == 0.0
    spurious = next(c for c in metrics["gate"]["checks"] if c["name"] == "tool_call_spurious")
    assert spurious["status"] == "pass" and "0 of 2 replies" in spurious["reason"]
    assert "tool calls 0.000 (0/2 exact, 0 right names, 0 parseable)" in done.stdout
    probed = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines()]
    assert [c["id"] for c in probed] == ["tool-1#call1", "tool-3#call1"]
    assert probed[0]["model"]["output"].startswith("The cat sat on a mat.")
    assert metrics["gate"]["passed"] is False and "FAILED" in done.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["model"]["finish_reason"] for s in samples] == ["length"] * rows
    assert samples[0]["model"]["output"].startswith("The cat sat on a mat.")
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_eval_with_baseline_and_judge(polite_model_dir, looping_model_dir, smollm2_dir,
                                      tool_data_dir, tmp_path):
    """Both sides, the judge, and the tool rows: each tool-call turn is asked as a probe
    (neither model calls), and the row that ends with a call is left out of the judge's
    scores and pairs."""
    out = tmp_path / "eval"
    rows = ROWS + TOOL_ROWS
    lines: list[str] = []
    metrics = run_eval(EvalOptions(data=tool_data_dir, out=out, model=str(polite_model_dir),
                                   baseline=str(looping_model_dir), max_tokens=16,
                                   judge=f"transformers:{smollm2_dir}"), log=lines.append)
    assert set(metrics) >= {"perplexity", "usability", "json_validity", "reference", "judge",
                            "tool_calls", "gate"}
    ppl = metrics["perplexity"]
    assert ppl["model"]["method"] == "server" and set(ppl["model"]["by_source"]) == {
        "titles_ja", "faq_en", "tools_en"}
    assert ppl["ratio"] == pytest.approx(ppl["model"]["ppl"] / ppl["baseline"]["ppl"])
    assert metrics["usability"]["model"]["rate"] == 1.0
    looping = metrics["usability"]["baseline"]
    assert looping["rate"] == 0.0 and looping["degenerate"] == len(rows)
    # "Hello there" is not JSON; the reference row that says exactly that scores 100 chrF
    assert metrics["json_validity"]["model"] == {"rate": 0.0, "rows": 1, "valid": 0}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[2]["model"]["chrf"] == pytest.approx(100.0)
    assert samples[0]["baseline"]["degenerate"] is True
    # "Hello there" makes no call: both call turns are misses, and the rows that answer in
    # text (tool-1's final reply, tool-2) got no false call
    assert metrics["tool_calls"]["model"] == {"rate": 0.0, "calls": 2, "parsed": 0, "names": 0,
                                              "exact": 0, "answer_rows": 2, "spurious": 0,
                                              "format": "hermes"}
    assert metrics["tool_calls"]["baseline"]["exact"] == 0
    probed = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines()]
    assert [c["id"] for c in probed] == ["tool-1#call1", "tool-3#call1"]
    assert probed[0]["prompt"] == "Weather in Kyoto?"
    assert probed[0]["reference_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city": "Kyoto"}'}
    assert probed[0]["model"]["output"] == "Hello there"
    assert probed[0]["model"]["call_parsed"] is False and probed[0]["baseline"] is not None
    assert any("0/2 tool calls made as the data makes them" in line for line in lines)
    call_sample = samples[len(ROWS) + 2]  # tool-3, ending with the call
    assert call_sample["reference"] is None and call_sample["reference_calls"] is not None
    judge = metrics["judge"]
    pair = judge["pairwise"]
    judged = len(rows) - 1
    assert pair["wins"] + pair["ties"] + pair["losses"] + pair["errors"] == judged
    assert pair["tool_call_rows"] == 1 and call_sample["pair"] is None
    assert pair["ci95"] is None or 0.0 <= pair["ci95"][0] <= pair["win_rate"] <= pair["ci95"][1]
    pointwise = judge["pointwise"]["model"]
    assert (pointwise["scored"], pointwise["tool_call_rows"]) == (judged, 1)
    assert call_sample["model"]["judge_score"] is None
    assert all(s["pair"] is not None for s in samples if s["id"] != "tool-3")
    gate = {c["name"]: c for c in metrics["gate"]["checks"]}
    assert gate["usability"]["status"] == "pass"
    assert any("serving" in line for line in lines)
    # both scripted models carry SmolLM2's own template, which drops `tools`
    assert [w.split(":")[0] for w in metrics["warnings"]] == ["model", "baseline"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(page) > 10_000  # plots inline
    assert "tool-call turns of the data" in page


def test_a_served_template_that_ignores_tools_is_named(chat_tokenizer):
    """A base model's own template (SmolLM2's) drops `tools`: its replies to tool rows are
    asked without them while its perplexity scores them in the training template, with
    them. Said, where it went unnoticed; a template that renders tools says nothing."""
    import copy

    from evaluator.data import EvalRow
    from evaluator.run import Target, _template_warnings
    from trainer_service.recipe.chat_format import resolve_template

    row = EvalRow(id="t", source="tools", tags=[], messages=[], tools=TIME_TOOLS,
                  prompt=[{"role": "user", "content": "What time is it?"}])
    plain = EvalRow(id="p", source="faq", tags=[], messages=[],
                    prompt=[{"role": "user", "content": "Hi"}])
    base = Target(label="baseline", path=None)
    assert _template_warnings(base, chat_tokenizer, [plain, row]) == [
        "baseline: its chat template ignores `tools`, so its replies to the 1 row(s) that "
        "offer tools, and its tool-call probes, were asked without them (its perplexity "
        "scores them with them, in the training template): compare its tool numbers with "
        "the other side's with care"]
    assert _template_warnings(base, chat_tokenizer, [plain]) == []
    trained = copy.deepcopy(chat_tokenizer)
    trained.chat_template = resolve_template(trained, "chatml").text
    assert _template_warnings(base, trained, [plain, row]) == []


@pytest.mark.slow
def test_eval_against_a_running_server(polite_model_dir, data_dir, tmp_path, chat_tokenizer):
    from evaluator.serving import serve_model

    # "Hello there" and <|im_end|>: a budget of exactly that many tokens holds the reply
    exact = len(chat_tokenizer.encode("Hello there", add_special_tokens=False)) + 1
    with serve_model(polite_model_dir, backend="transformers", served_name="titles") as server:
        metrics = run_eval(EvalOptions(data=data_dir, out=tmp_path / "eval",
                                       model=server.base_url, max_tokens=16))
        # the stop token as the budget's last token read `length` (no_stop) before
        fits = run_eval(EvalOptions(data=data_dir, out=tmp_path / "fits",
                                    model=server.base_url, max_tokens=exact))
        short = run_eval(EvalOptions(data=data_dir, out=tmp_path / "short",
                                     model=server.base_url, max_tokens=exact - 1))
        with pytest.raises(EvalError) as wrong:
            run_eval(EvalOptions(data=data_dir, out=tmp_path / "x", model=server.base_url,
                                 served_name="other"))
    assert metrics["model"]["name"] == "titles" and metrics["baseline"] is None
    assert metrics["usability"]["model"]["rate"] == 1.0
    assert fits["usability"]["model"]["rate"] == 1.0
    assert short["usability"]["model"]["rate"] == 0.0
    assert short["usability"]["model"]["failures"]["no_stop"] == short["usability"]["model"]["rows"]
    # no row offers tools or calls one: nothing measured, no calls.jsonl
    assert metrics["tool_calls"] is None and not (tmp_path / "eval" / "calls.jsonl").exists()
    assert wrong.value.code == "model_not_served"


TIME_TOOLS = [{"type": "function", "function": {
    "name": "get_time", "description": "The time now.",
    "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.slow
def test_calls_a_server_parses_out_of_the_reply_are_scored(tmp_path):
    """transformers' server parses the calls of a Qwen model (by its model type) out of the
    reply into `message.tool_calls`, whatever `tool_choice` says, and leaves `content`
    empty: the calls are read from there. A scripted model of Qwen3's architecture that
    calls get_time, served so."""
    from tests.evaluator import models
    from tests.trainer_service.test_chat_format import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    model = models.scripted_model(
        tokenizer, tmp_path / "caller", models.chain_of(
            tokenizer, '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'),
        arch="qwen3")
    call = json.dumps([{"id": "call_1", "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"}}])
    rows = [{"id": f"t{i}", "source": "tools", "tags": [], "tools": TIME_TOOLS, "messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "", "tool_calls": call},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"time\": \"12:00\"}"},
        {"role": "assistant", "content": "It is noon."}]}
        for i, question in enumerate(["What time is it?", "Time, please."])]
    data = tmp_path / "data"
    data.mkdir()
    metrics = run_eval(EvalOptions(data=_data(data, rows), out=tmp_path / "eval",
                                   model=str(model), baseline="none", max_tokens=32,
                                   backend="transformers"))
    assert metrics["tool_calls"]["model"] == {
        "rate": 1.0, "calls": 2, "parsed": 2, "names": 2, "exact": 2, "answer_rows": 2,
        "spurious": 2, "format": "hermes"}  # it calls where the rows answer, too
    probed = [json.loads(line) for line in (tmp_path / "eval" / "calls.jsonl").open()]
    assert [p["model"]["output"] for p in probed] == ["", ""]
    assert probed[0]["model"]["tool_calls"] == [{"name": "get_time", "arguments": {}}]


def test_the_baseline_defaults_to_the_runs_base_model(polite_model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(polite_model_dir, run / "merged")
    (run / "run.json").write_text(json.dumps({"spec": {"base_model": "/models/base"}}))
    target, base = model_target(str(run), "model")
    assert target.path == (run / "merged").resolve() and base == "/models/base"
    url, none = model_target("http://127.0.0.1:9/v1/", "model")
    assert url.base_url == "http://127.0.0.1:9/v1" and none is None
    with pytest.raises(EvalError) as missing:
        model_target(str(tmp_path / "nothing"), "baseline")
    assert (missing.value.code, missing.value.field) == ("model_not_found", "baseline")


@pytest.mark.slow
def test_rows_longer_than_the_models_positions_are_cut_not_fatal(polite_model_dir, tmp_path):
    """One row of 2,933 tokens against a model of 1,024 positions made the server refuse the
    batch: exit 1, no outputs, and a hint (`--ppl local`) that would score past the
    model's context."""
    model = tmp_path / "model"
    shutil.copytree(polite_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 96
    (model / "config.json").write_text(json.dumps(config))
    long = {"id": "long", "source": "faq_en", "tags": [], "messages": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there. " * 60}]}
    data = _data(tmp_path, ROWS[2:3] + [long])
    metrics = run_eval(EvalOptions(data=data, out=tmp_path / "eval", model=str(model),
                                   baseline="none", max_tokens=8), log=lambda line: None)
    ppl = metrics["perplexity"]["model"]
    assert ppl["cut_rows"] == 1 and ppl["rows"] == 2 and ppl["ppl"] > 0
    assert metrics["usability"]["model"]["rows"] == 2


def test_a_hub_id_base_is_read_from_the_hugging_face_cache(polite_model_dir, tmp_path,
                                                           monkeypatch):
    """Runs trained on a hub id (how most users name Qwen and Llama bases) record it as
    their base: the default baseline failed `model_not_found` for every one of them."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-chat" / "snapshots" / ("a" * 40)
    shutil.copytree(polite_model_dir, snapshot)
    (cache / "models--acme--tiny-chat" / "refs").mkdir()
    (cache / "models--acme--tiny-chat" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    target, _ = model_target("acme/tiny-chat", "baseline")
    assert target.path == snapshot
    with pytest.raises(EvalError) as missing:
        model_target("acme/not-downloaded", "baseline")
    assert missing.value.code == "model_not_found"
    assert "not in this machine's Hugging Face cache" in missing.value.message


def test_bad_input_exits_2_before_serving_anything(data_dir, tmp_path, polite_model_dir):
    done = _cli("--model", str(polite_model_dir), "--data", str(data_dir), "--judge",
                "nonsense", "--out", str(tmp_path / "e"))
    assert done.returncode == 2 and "bad_engine_spec" in done.stderr
    done = _cli("--model", str(polite_model_dir), "--data", str(data_dir), "--judge",
                f"transformers:{tmp_path / 'no-judge'}", "--out", str(tmp_path / "e"))
    assert done.returncode == 2 and "error: judge: model_not_loadable" in done.stderr
    assert "Traceback" not in done.stderr
    bad_gate = tmp_path / "gate.yaml"
    bad_gate.write_text("usability_min: 2\n")
    done = _cli("--model", str(polite_model_dir), "--data", str(data_dir), "--gate",
                str(bad_gate), "--out", str(tmp_path / "e"))
    assert done.returncode == 2 and "usability_min" in done.stderr
    done = _cli("--model", str(polite_model_dir), "--data", str(tmp_path / "none"),
                "--out", str(tmp_path / "e"))
    assert done.returncode == 2 and "data_not_found" in done.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("change, field, code", [
    ({"limit": 0}, "limit", "bad_option"), ({"concurrency": 0}, "concurrency", "bad_option"),
    ({"max_tokens": 0}, "max_tokens", "bad_option"), ({"out": "a-file"}, "out", "out_not_a_folder"),
    ({"gate": "unreachable", "judge": "transformers:default"}, "gate", "gate_unreachable")])
def test_options_that_would_fail_late_fail_first(data_dir, tmp_path, polite_model_dir, change,
                                                 field, code):
    """Each of these used to serve the model and measure first, then crash (an existing
    file as --out, --concurrency 0), quietly change meaning (--limit 0 evaluated a row,
    --max-tokens 0 the default budget), or judge against a score the scale never reaches."""
    from evaluator.run import EvalOptions, run_eval

    (tmp_path / "a-file").write_text("")
    (tmp_path / "unreachable").write_text("judge_score_min: 9\n")  # valid on a 10-point scale
    options = {"data": data_dir, "out": tmp_path / "e", "model": str(polite_model_dir),
               "baseline": "none", **change}
    for name in ("out", "gate"):
        if isinstance(options.get(name), str):
            options[name] = tmp_path / options[name]
    with pytest.raises(EvalError) as err:
        run_eval(EvalOptions(**options), log=lambda _: None)
    assert (err.value.field, err.value.code) == (field, code) and err.value.bad_input
    assert not (tmp_path / "e").exists()


def test_a_server_that_stopped_answering_is_an_error_not_a_score():
    """A served model killed midway scored usability 0 (40 `error` replies) and, in a
    pipeline, failed the gate with "train longer", blaming the model."""
    from data_engine.engines.base import Generation
    from evaluator.run import Target, _check_server_answered

    dead = [Generation("", "error", 0, "connection_error: Connection refused")] * 3
    with pytest.raises(EvalError) as err:
        _check_server_answered(Target("model", path="/m"), "http://127.0.0.1:9/v1", dead)
    assert (err.value.code, err.value.field) == ("server_died", "model")
    assert not err.value.bad_input
    # one reply got through: the others' errors are the model's to answer for
    _check_server_answered(Target("model", path="/m"), "http://127.0.0.1:9/v1",
                           dead + [Generation("hi", "stop", 1)])
