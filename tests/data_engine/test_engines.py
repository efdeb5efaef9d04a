"""Engines against real components: `transformers serve` and stdlib HTTP servers on loopback
for the openai engine, SmolLM2 for the transformers engine, vLLM where a GPU has it."""

from __future__ import annotations

import http.server
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from data_engine.config import EngineConfig
from data_engine.engines import build_engine
from data_engine.engines.base import GREEDY, Counted, EngineError, SamplingParams, progress_line
from data_engine.engines.openai_engine import OpenAIEngine, cut_at_stop, label_logprobs

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}  # retries in milliseconds
SCALE = ["1", "2", "3", "4", "5"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def completion(text: str, finish_reason: str = "stop", logprobs: dict | None = None) -> dict:
    """A chat.completion body as an OpenAI-compatible server sends it."""
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": logprobs,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "error", "code": None}}


# A script maps (request number, request body) to (status, JSON reply, seconds to wait first).
Script = Callable[[int, dict], tuple[int, dict, float]]


class ScriptedServer:
    """A real HTTP server on a loopback port that answers each POST as its script says and
    records what it received: request count, bodies, most requests in flight at once."""

    def __init__(self, script: Script):
        self.script = script
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = len(server.bodies)
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply, delay = server.script(n, body)
                    time.sleep(delay)
                    data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of some tests
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def __enter__(self) -> "ScriptedServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def engine_for(url: str, **kwargs) -> OpenAIEngine:
    options = {"max_concurrency": 4, "timeout_s": 5.0, "max_retries": 2, **FAST, **kwargs}
    return OpenAIEngine("m", url, **options)


# --- openai engine: failure handling against scripted servers --------------------------------

def test_refused_connection_fails_every_row_after_its_retries():
    # Bound but never listening: the kernel refuses connections, and no one else can take it.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        engine = OpenAIEngine("m", f"http://127.0.0.1:{hole.getsockname()[1]}/v1",
                              max_retries=2, timeout_s=2.0, **FAST)  # built while down: fine
        out = engine.generate([user("a"), user("b"), user("c")], GREEDY)
        scores = engine.next_token_scores([user("a")], SCALE)
        engine.close()
    assert len(out) == 3
    for gen in out:
        assert (gen.text, gen.finish_reason) == ("", "error")
        assert gen.error.startswith("connection_error: ") and "(after 3 attempts)" in gen.error
    assert scores[0].error.startswith("connection_error: ")
    assert engine.supports_logprobs  # unreachable says nothing about logprobs


def test_server_errors_are_retried_then_reported_per_row():
    with ScriptedServer(lambda n, body: (503, error_body("overloaded"), 0.0)) as server:
        engine = engine_for(server.url, max_retries=2)
        out = engine.generate([user("a"), user("b"), user("c")], GREEDY)
        engine.close()
    assert server.requests == 3 * (1 + 2)
    assert all(g.finish_reason == "error" and g.error.startswith("server_error: ") for g in out)


def test_slow_server_times_out_after_retries():
    with ScriptedServer(lambda n, body: (200, completion("late"), 2.0)) as server:
        engine = engine_for(server.url, timeout_s=0.3, max_retries=1)
        started = time.monotonic()
        out = engine.generate([user("a"), user("b")], GREEDY)
        elapsed = time.monotonic() - started
        engine.close()
    assert [g.error.split(":")[0] for g in out] == ["timeout", "timeout"]
    assert server.requests == 2 * 2
    assert elapsed < 3.0  # abandoned at timeout_s; waiting the server out takes >= 4 s


def test_an_interrupt_stops_the_workers_instead_of_waiting_out_their_retries():
    """Ctrl+C against a server that never answered took (1 + max_retries) x timeout_s of
    silence (32 s at 8 s x 4): each worker kept retrying, and close() waited for them."""
    import os
    import signal

    with ScriptedServer(lambda n, body: (503, error_body("down"), 0.3)) as server:
        engine = engine_for(server.url, max_concurrency=2, max_retries=50,
                            backoff_base_s=0.5, backoff_max_s=0.5)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl+C
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            engine.generate([user(str(i)) for i in range(8)], GREEDY)
        engine.close()
        seen = server.requests
        time.sleep(1.5)  # no worker starts another request
        assert server.requests == seen
    assert time.monotonic() - started < 4.0  # 50 retries of 8 rows would take minutes
    assert seen <= 2 * 3  # two workers, about a second of 0.8 s attempts


def test_a_reply_cut_short_is_retried_as_a_bad_response():
    """A 200 whose JSON body was cut short (a server dying mid-write) was
    `internal_error: JSONDecodeError`, never retried."""
    cut = json.dumps(completion("fine"))[:40]
    script = lambda n, body: (200, cut, 0.0) if n < 1 else (200, completion("fine"), 0.0)
    with ScriptedServer(script) as server:
        out = engine_for(server.url, max_retries=2).generate([user("a")], GREEDY)
    assert server.requests == 2 and (out[0].text, out[0].error) == ("fine", None)
    with ScriptedServer(lambda n, body: (200, cut, 0.0)) as server:
        out = engine_for(server.url, max_retries=1).generate([user("a")], GREEDY)
    assert server.requests == 2 and out[0].error.startswith("bad_response: ")


def test_two_failures_then_success_returns_the_row():
    script = lambda n, body: (503, error_body("warming up"), 0.0) if n < 2 \
        else (200, completion("fine"), 0.0)
    with ScriptedServer(script) as server:
        out = engine_for(server.url, max_retries=3).generate([user("a")], GREEDY)
    assert server.requests == 3
    assert (out[0].text, out[0].finish_reason, out[0].error) == ("fine", "stop", None)

    with ScriptedServer(script) as server:  # one retry is not enough for the same server
        out = engine_for(server.url, max_retries=1).generate([user("a")], GREEDY)
    assert server.requests == 2 and out[0].error.startswith("server_error: ")


@pytest.mark.parametrize("status,code,retried", [
    (429, "rate_limited", True), (408, "timeout", True), (400, "bad_request", False),
    (401, "auth_error", False), (404, "not_found", False), (422, "bad_request", False)])
def test_status_codes_map_to_stable_codes_and_retry_policy(status, code, retried):
    with ScriptedServer(lambda n, body: (status, error_body("no"), 0.0)) as server:
        out = engine_for(server.url, max_retries=2).generate([user("a")], GREEDY)
    assert out[0].error.startswith(f"{code}: ")
    assert server.requests == (3 if retried else 1)


def test_order_concurrency_limit_and_sampling_params_reach_the_server():
    def echo(n, body):  # later prompts answer sooner, so completion order is reversed
        prompt = body["messages"][-1]["content"]
        finish = "length" if prompt.endswith("7") else "stop"
        return 200, completion(f"echo {prompt}", finish), 0.05 * (8 - int(prompt[-1]))

    with ScriptedServer(echo) as server:
        engine = engine_for(server.url, max_concurrency=3)
        params = SamplingParams(temperature=0.3, top_p=0.9, max_tokens=7, stop=("\n",), seed=11)
        out = engine.generate([user(f"p{i}") for i in range(8)], params)
        engine.close()
    assert [g.text for g in out] == [f"echo p{i}" for i in range(8)]
    assert [g.finish_reason for g in out] == ["stop"] * 7 + ["length"]
    assert all(g.tokens == 2 for g in out)
    assert 2 <= server.max_in_flight <= 3
    sent = server.bodies[0]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop"], sent["seed"]) \
        == (0.3, 0.9, 7, ["\n"], 11)
    assert sent["model"] == "m"


def test_counted_openai_engine_reports_each_reply_as_it_comes():
    """A generator's one call can hold thousands of requests: the count moves per reply,
    not per call, and only generation is counted."""
    with ScriptedServer(lambda n, body: (200, completion("ok"), 0.05)) as server:
        engine = engine_for(server.url, max_concurrency=2)
        seen = []
        counted = Counted(engine, lambda counts: seen.append(counts["done"]))
        out = counted.generate([user(f"p{i}") for i in range(5)], GREEDY)
        assert [g.text for g in out] == ["ok"] * 5
        # each reply (heard from two threads, in any order), then the call's end
        assert sorted(seen[:-1]) == [1, 2, 3, 4, 5] and seen[-1] == 5
        assert counted.counts() == {"calls": 1, "asked": 5, "done": 5}
        counted.generate([user("again")], GREEDY)
        assert progress_line(counted.counts()) == "6/6 replies (call 2)"
        counted.detach()
        engine.generate([user("not counted")], GREEDY)
        assert counted.counts()["done"] == 6 and engine.on_replies is None
        engine.close()


def test_next_token_scores_sum_token_variants_from_top_logprobs():
    top = [{"token": "4", "logprob": -0.5, "bytes": None},
           {"token": " 4", "logprob": -1.5, "bytes": None},
           {"token": "3", "logprob": -2.0, "bytes": None},
           {"token": "Hello", "logprob": -3.0, "bytes": None}]
    logprobs = {"content": [{"token": "4", "logprob": -0.5, "bytes": None,
                             "top_logprobs": top}]}
    with ScriptedServer(lambda n, body: (200, completion("4", "length", logprobs), 0.0)) \
            as server:
        engine = engine_for(server.url)
        scores = engine.next_token_scores([user("rate"), user("rate again")], SCALE)
        engine.close()
    sent = server.bodies[0]
    assert (sent["max_tokens"], sent["logprobs"], sent["top_logprobs"]) == (1, True, 20)
    for s in scores:
        assert s.error is None and s.complete is False
        assert set(s.logprobs) == {"3", "4"}  # absent labels are missing, not -inf
        assert s.logprobs["4"] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-1.5)))
        assert s.logprobs["3"] == pytest.approx(-2.0)
    assert engine.supports_logprobs


def test_server_rejecting_logprobs_turns_scoring_off():
    script = lambda n, body: (400, error_body("logprobs are not supported"), 0.0)
    with ScriptedServer(script) as server:
        engine = engine_for(server.url)
        first = engine.next_token_scores([user("rate")], SCALE)
        seen = server.requests
        again = engine.next_token_scores([user("rate"), user("more")], SCALE)
        engine.close()
    assert first[0].error.startswith("no_logprobs: ") and not engine.supports_logprobs
    assert [s.error.split(":")[0] for s in again] == ["no_logprobs", "no_logprobs"]
    assert server.requests == seen == 1  # known unsupported: no more requests spent on it


def test_chat_template_kwargs_are_sent_until_a_server_rejects_the_field(caplog):
    """Most local servers read `chat_template_kwargs` (thinking off by default); a hosted API
    that takes only OpenAI's fields answers 400, and the run goes on without them."""
    ok = lambda n, body: (200, completion("ok"), 0.0)
    with ScriptedServer(ok) as server:
        engine = engine_for(server.url, template_kwargs={"enable_thinking": False})
        engine.generate([user("a"), user("b")], GREEDY)
        engine.close()
        plain = engine_for(server.url)  # none given: none sent
        plain.generate([user("c")], GREEDY)
        plain.close()
    assert [b.get("chat_template_kwargs") for b in server.bodies] == \
        [{"enable_thinking": False}] * 2 + [None]

    def strict(n, body):
        if "chat_template_kwargs" in body:
            return 400, error_body("Unrecognized request argument supplied: "
                                   "chat_template_kwargs"), 0.0
        return 200, completion("ok"), 0.0

    with ScriptedServer(strict) as server, caplog.at_level("WARNING"):
        engine = engine_for(server.url, template_kwargs={"enable_thinking": False},
                            max_concurrency=1)
        first = engine.generate([user("a")], GREEDY)
        rest = engine.generate([user("b"), user("c")], GREEDY)
        engine.close()
    assert [g.text for g in first + rest] == ["ok"] * 3
    assert ["chat_template_kwargs" in b for b in server.bodies] == [True, False, False, False]
    assert sum("rejects `chat_template_kwargs`" in r.getMessage() for r in caplog.records) == 1


def test_pure_helpers():
    assert cut_at_stop("a, b. c", (".", ",")) == ("a", True)
    assert cut_at_stop("abc", ("x", "")) == ("abc", False)
    assert label_logprobs([("x", -1.0)], SCALE) == {}
    twice = label_logprobs([("2", -1.0), ("2", -1.0), (" 2", -1.0)], ["2"])
    assert twice["2"] == pytest.approx(math.log(2 * math.exp(-1.0)))


def test_openai_from_config_needs_base_url():
    with pytest.raises(EngineError) as info:
        OpenAIEngine.from_config(EngineConfig(kind="openai", model="m"))
    assert info.value.code == "no_base_url" and info.value.field == "engine.base_url"


# --- openai engine against a real `transformers serve` ---------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_smollm2(smollm2_dir, tmp_path_factory):
    """`transformers serve` pinned to the local SmolLM2 folder: (base_url, model name).

    The API's model name is the folder path exactly as passed on the command line (replies
    report it with "@main" appended, but requests must not). HF_HOME/hub must exist, or
    /v1/models answers 500 (it scans the hub cache)."""
    yield from _serve(smollm2_dir, tmp_path_factory)


def _serve(model_dir, tmp_path_factory):
    hf_home = tmp_path_factory.mktemp("hf-home")
    (hf_home / "hub").mkdir()
    log_path = hf_home / "serve.log"
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu",
                                 # the folder holds bf16 weights; bf16 matmuls crawl on CPU
                                 "--dtype", "float32"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited {proc.returncode}:\n"
                            f"{log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not healthy in 180 s:\n"
                            f"{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"{base}/v1", str(model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def served_engine(served_smollm2):
    url, model = served_smollm2
    engine = build_engine(EngineConfig(kind="openai", model=model, base_url=url,
                                       api_key_env="TUNESMITH_TEST_NO_SUCH_KEY",
                                       max_concurrency=2, timeout_s=60.0, max_retries=1))
    yield engine
    engine.close()


PROMPTS = [user("Say hi."), user("What is 2+2? Answer with a number.")]


def test_served_model_lists_and_generates_in_order(served_smollm2, served_engine):
    url, _ = served_smollm2
    with urllib.request.urlopen(f"{url}/models", timeout=10) as reply:
        assert json.load(reply)["object"] == "list"  # 200, thanks to HF_HOME/hub existing
    params = SamplingParams(temperature=0.0, max_tokens=8)
    together = served_engine.generate(PROMPTS, params)
    alone = [served_engine.generate([p], params)[0] for p in PROMPTS]
    assert all(g.ok and g.text and g.tokens > 0 for g in together), together
    assert all(g.finish_reason in ("stop", "length") for g in together)
    assert [g.text for g in together] == [g.text for g in alone]  # row i answers prompt i
    assert "4" in together[1].text


def test_served_model_length_and_stop_strings(served_engine):
    short = served_engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=2))
    assert short[0].finish_reason == "length" and short[0].tokens == 2

    full = served_engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=10))
    words = full[0].text.split()
    assert len(words) >= 3, full[0].text
    stop = " " + words[2]
    cut = served_engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=10,
                                                             stop=(stop,)))
    # transformers serve returns the stop string itself; the engine cuts it, as OpenAI does.
    assert cut[0].text == full[0].text[:full[0].text.index(stop)]
    assert cut[0].finish_reason == "stop"


def _with_template(model_dir, template: str, tmp_path_factory) -> Path:
    """A folder serving ``model_dir``'s weights (linked) with another chat template."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2-template")
    for item in Path(model_dir).iterdir():
        if not item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (folder / item.name).symlink_to(item)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return folder


def test_tools_reach_the_served_prompt(smollm2_dir, tmp_path_factory):
    """A row's tools go with its request (tool_choice none: a text reply, and no tool parser
    needed on vLLM), so the server renders them into the prompt as training did: SmolLM2
    served with the training template (which shows tools, as a merged model's does) reads
    a longer prompt with them."""
    from transformers import AutoTokenizer

    from trainer_service.recipe.chat_format import resolve_template

    template = resolve_template(AutoTokenizer.from_pretrained(smollm2_dir), "auto").text
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    served = _serve(_with_template(smollm2_dir, template, tmp_path_factory), tmp_path_factory)
    url, model = next(served)
    try:
        engine = OpenAIEngine(model, url, max_retries=1, **FAST)
        plain, offered = engine.generate([PROMPTS[0], PROMPTS[0]], SamplingParams(
            temperature=0.0, max_tokens=4), tools=[None, tools])
        engine.close()
    finally:
        served.close()
    assert plain.ok and offered.ok, (plain, offered)
    assert offered.prompt_tokens > plain.prompt_tokens + 40  # the tools block


def test_template_kwargs_reach_the_served_template(smollm2_dir, tmp_path_factory):
    """`engine.chat_template_kwargs` (by default thinking off) reach `transformers serve`'s
    template: a Qwen3-style switch closes the reasoning block, so a judge's score token is
    the reply's first. Without them the prompt ends where the model would start thinking."""
    served = _serve(_with_template(smollm2_dir, QWEN3_SWITCH_TEMPLATE, tmp_path_factory),
                    tmp_path_factory)
    url, model = next(served)
    try:
        off = build_engine(EngineConfig(kind="openai", model=model, base_url=url,
                                        max_retries=1))
        plain = OpenAIEngine(model, url, max_retries=1, **FAST)  # what the evaluator sends
        params = SamplingParams(temperature=0.0, max_tokens=1)
        closed, opened = off.generate([PROMPTS[0]], params)[0], \
            plain.generate([PROMPTS[0]], params)[0]
        off.close()
        plain.close()
    finally:
        served.close()
    assert closed.ok and opened.ok, (closed, opened)
    assert off.template_kwargs == {"enable_thinking": False}  # accepted, so still sent
    assert closed.prompt_tokens > opened.prompt_tokens  # "<think>\n\n</think>\n\n"


def test_served_model_wrong_name_is_a_bad_request_not_retried(served_smollm2):
    url, _ = served_smollm2
    engine = OpenAIEngine("no-such-model", url, max_retries=3, **FAST)
    out = engine.generate([PROMPTS[0]], GREEDY)
    engine.close()
    assert out[0].error.startswith("bad_request: ") and "after" not in out[0].error


def test_served_model_logprobs_detected(served_smollm2, served_engine):
    url, model = served_smollm2
    probe = urllib.request.Request(f"{url}/chat/completions", method="POST",
                                   headers={"Content-Type": "application/json"},
                                   data=json.dumps({"model": model, "messages": PROMPTS[1],
                                                    "max_tokens": 1, "logprobs": True,
                                                    "top_logprobs": 20}).encode())
    try:
        with urllib.request.urlopen(probe, timeout=60) as reply:
            raw = json.load(reply)["choices"][0].get("logprobs")
    except urllib.error.HTTPError:
        raw = None  # rejected outright
    scores = served_engine.next_token_scores([PROMPTS[1], PROMPTS[0]], SCALE)
    if raw:  # a server that answers with logprobs gets scored
        assert served_engine.supports_logprobs
        assert all(s.error is None and s.complete is False for s in scores)
        assert all(v <= 0.0 for s in scores for v in s.logprobs.values())
    else:  # transformers 5.23 ignores the flag (it logs "Ignoring unsupported fields")
        assert not served_engine.supports_logprobs
        assert all(s.error.startswith("no_logprobs: ") and not s.logprobs for s in scores)


# --- transformers engine on SmolLM2 ----------------------------------------------------------

def test_hf_batched_greedy_equals_one_at_a_time(smollm2_engine):
    prompts = [user("Hi"), user("What is the capital of France? Answer in one word."),
               user("2+3=")]  # different lengths: the batch is left padded
    params = SamplingParams(temperature=0.0, max_tokens=8)
    together = smollm2_engine.generate(prompts, params)
    alone = [smollm2_engine.generate([p], params)[0] for p in prompts]
    assert [(g.text, g.finish_reason, g.tokens) for g in together] \
        == [(g.text, g.finish_reason, g.tokens) for g in alone]
    assert all(g.ok and g.text for g in together)


def test_counted_hf_engine_reports_each_batch(smollm2_engine):
    seen = []
    counted = Counted(smollm2_engine, lambda counts: seen.append(counts["done"]))
    try:
        counted.generate([user(f"Count to {i}.") for i in range(10)],
                         SamplingParams(temperature=0.0, max_tokens=2))
    finally:
        counted.detach()
    assert smollm2_engine.batch_size == 8 and seen == [8, 10, 10]


def test_hf_tiny_budget_finishes_by_length(smollm2_engine):
    out = smollm2_engine.generate([user("Tell me a story.")],
                                  SamplingParams(temperature=0.0, max_tokens=3))
    assert (out[0].finish_reason, out[0].tokens) == ("length", 3)


def test_hf_stop_strings_are_cut(smollm2_engine):
    prompt = [user("Name a color.")]
    full = smollm2_engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=10))[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = " " + words[2]
    cut = smollm2_engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=10,
                                                         stop=(stop,)))[0]
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.finish_reason == "stop" and stop not in cut.text


def test_hf_next_token_scores_for_a_1_to_5_scale(smollm2_engine):
    rate = [{"role": "user", "content": "Rate this answer from 1 to 5. Reply with one digit "
             "only.\nQ: 2+2?\nA: 4"}]
    scores = smollm2_engine.next_token_scores([rate, user("Pick a number from 1 to 5.")], SCALE)
    for s in scores:
        assert s.error is None and s.complete is True
        assert set(s.logprobs) == set(SCALE)
        assert all(math.isfinite(v) and v < 0.0 for v in s.logprobs.values())
        assert math.log(sum(math.exp(v) for v in s.logprobs.values())) <= 1e-6
    alone = smollm2_engine.next_token_scores([rate], SCALE)[0]
    for label in SCALE:  # left padding in the batch does not move the scores
        assert alone.logprobs[label] == pytest.approx(scores[0].logprobs[label], abs=1e-3)


def test_hf_scores_through_a_shared_prefix_equal_the_plain_forward(smollm2_engine):
    """Judge-style prompts share a long rubric: scoring continues from that prefix's KV
    cache, batch by batch, and must give the plain left-padded forward's scores."""
    from data_engine.engines.hf import MIN_SHARED_PREFIX, shared_prefix

    rubric = ("You are grading answers. A good answer is correct, on topic, complete and "
              "fluent; a bad one is wrong, off topic, empty or repeats itself. Read the "
              "question and the answer, then reply with one digit from 1 (bad) to 5 (good).")
    pairs = [("2+2?", "4"), ("Capital of France?", "Paris is the capital of France."),
             ("Name a colour.", "the the the the"), ("Why is the sky blue?", "Bananas."),
             ("What is ice?", "Frozen water, solid below 0 degrees Celsius.")]
    convs = [[{"role": "system", "content": rubric},
              {"role": "user", "content": f"Q: {q}\nA: {a}\nScore:"}] for q, a in pairs]
    engine = smollm2_engine
    ids = [engine.tokenizer.encode(engine.render(c), add_special_tokens=False) for c in convs]
    assert shared_prefix(ids) >= MIN_SHARED_PREFIX  # the fast path is the one under test
    before = engine.batch_size
    engine.batch_size = 2  # several batches, each from its own copy of the prefix cache
    try:
        shared = engine.next_token_scores(convs, SCALE)
        engine.share_prefix = False
        plain = engine.next_token_scores(convs, SCALE)
    finally:
        engine.share_prefix, engine.batch_size = True, before
    for a, b in zip(shared, plain):
        assert a.error is None and b.error is None
        for label in SCALE:
            assert a.logprobs[label] == pytest.approx(b.logprobs[label], abs=1e-3)
    assert shared_prefix([[1, 2, 3], [1, 2, 4]]) == 2
    assert shared_prefix([[1, 2], [1, 2, 3]]) == 1  # every row keeps a token of its own
    assert shared_prefix([[1, 2, 3]]) == 0


# Gemma 2's template refuses a system turn; DeepSeek-R1's opens a reasoning block in every
# generation prompt (both abridged to what matters here, ChatML tokens kept for SmolLM2).
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
FORCED_THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
QWEN3_SWITCH_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}")


def test_hf_engine_renders_for_judging_templates_with_no_system_role_or_forced_thinking(
        smollm2_engine):
    """Gemma 2's template raised on the judge's system turn (a traceback, no output), and
    with a reasoning template the score was read at the first token of the reasoning."""
    from jinja2 import TemplateError

    engine, own = smollm2_engine, smollm2_engine.tokenizer.chat_template
    conv = [{"role": "system", "content": "You grade answers."},
            {"role": "user", "content": "Q: 2+2?\nA: 4\nScore 1-5:"}]
    try:
        engine.tokenizer.chat_template = NO_SYSTEM_TEMPLATE
        assert engine.render(conv) == ("<|im_start|>user\nYou grade answers.\n\nQ: 2+2?\nA: 4\n"
                                       "Score 1-5:<|im_end|>\n<|im_start|>assistant\n")
        scores = engine.next_token_scores([conv, user("Hi")], SCALE)
        assert all(s.error is None and set(s.logprobs) == set(SCALE) for s in scores)
        engine.tokenizer.chat_template = FORCED_THINK_TEMPLATE
        assert engine.render(conv[1:]).endswith("assistant\n<think>\n\n</think>\n\n")
        engine.tokenizer.chat_template = QWEN3_SWITCH_TEMPLATE  # thinking off, as asked
        assert engine.render(conv[1:]).endswith("assistant\n<think>\n\n</think>\n\n")
        engine.template_kwargs = {"enable_thinking": True}  # engine.chat_template_kwargs
        assert engine.render(conv[1:]).endswith("assistant\n")
        # a template that fails otherwise fails that row, not the call
        engine.tokenizer.chat_template = "{{ raise_exception('broken template') }}"
        with pytest.raises(TemplateError):
            engine.render(conv)
        out = engine.generate([conv], SamplingParams(temperature=0.0, max_tokens=2))
        assert out[0].error.startswith("template_error: broken template")
        assert engine.next_token_scores([conv], SCALE)[0].error.startswith("template_error")
    finally:
        engine.tokenizer.chat_template = own
        engine.template_kwargs = {"enable_thinking": False}


# --- vllm engine -----------------------------------------------------------------------------

def test_vllm_module_imports_without_vllm_and_fails_with_an_actionable_error():
    import importlib.util

    from data_engine.engines import vllm_engine

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    assert "vllm" not in sys.modules
    for build in (lambda: vllm_engine.VLLMEngine("anything"),
                  lambda: build_engine(EngineConfig(kind="vllm", model="default"))):
        with pytest.raises(EngineError) as info:
            build()
        assert (info.value.code, info.value.field) == ("vllm_missing", "engine.kind")
        assert "tunesmith[gpu]" in str(info.value)


def test_vllm_row_mapping_helpers():
    from data_engine.engines.vllm_engine import first_token_top, output_row, vllm_sampling

    assert vllm_sampling(SamplingParams(temperature=0.0, max_tokens=5)) \
        == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 5}
    assert vllm_sampling(SamplingParams(stop=("x",), seed=3))["stop"] == ["x"]
    entry = {"logprob": -0.1, "rank": 1, "decoded_token": " 4"}
    as_dict = [{52: entry, 7: {"logprob": -2.5, "rank": 2, "decoded_token": "3"}}]
    assert first_token_top(as_dict) == [(" 4", -0.1), ("3", -2.5)]
    assert first_token_top([[entry, None]]) == [(" 4", -0.1)]  # Arrow-unified shape
    assert first_token_top(None) == [] and first_token_top([]) == []
    row = output_row({"ts_row_index": 4, "generated_text": "4", "num_generated_tokens": 1,
                      "logprobs": as_dict})
    assert (row["ts_row_index"], row["text"], row["tokens"], row["top_tokens"]) \
        == (4, "4", 1, [" 4", "3"])


@pytest.mark.gpu
def test_vllm_generates_and_scores_on_gpu(smollm2_dir, ray_local):
    pytest.importorskip("vllm", reason="the gpu extra (vllm, ray[llm]) is not installed")
    from data_engine.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(smollm2_dir), batch_size=4, replicas=1, max_model_len=512)
    prompts = [user("What is 2+2? Answer with a number."), user("Say hi.")]
    out = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    assert all(g.ok and g.text for g in out) and "4" in out[0].text
    short = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=2))
    assert [g.finish_reason for g in short] == ["length", "length"]
    scores = engine.next_token_scores(prompts, SCALE)
    assert all(s.error is None and s.logprobs for s in scores)
    assert all(v <= 0.0 for s in scores for v in s.logprobs.values())
    engine.close()
