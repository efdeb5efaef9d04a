"""Serving on loopback with real processes: a tiny random Llama speaking SmolLM2's vocabulary,
served by the transformers backend (and by vLLM on a GPU machine), checked against local
forward passes of the same weights."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import peft
import pytest
import torch
from openai import BadRequestError, NotFoundError, OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from evaluator.serving import ServeError, client_snippet, max_lora_rank, serve_model, vllm_command
from evaluator.serving.manager import choose_backend, free_port
from evaluator.serving.vllm_cli import find_vllm

TOL = 1e-4


def _tiny_llama(tokenizer, out: Path, hidden: int = 64, dtype=torch.float32) -> Path:
    """A random 2-layer Llama with logits of real-model scale, saved with the tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         initializer_range=0.3 * (64 / hidden) ** 0.5,  # real-model logits
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _lora(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter with non-zero B (init_lora_weights=False), so it changes the outputs."""
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear",
                                                      init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """(model folder "tiny-chat", adapter folder "tiny-lora")."""
    root = tmp_path_factory.mktemp("serving")
    model_dir = _tiny_llama(tokenizer, root / "tiny-chat")
    return model_dir, _lora(model_dir, root / "tiny-lora")


@pytest.fixture(scope="module")
def local(tiny):
    """The served weights, loaded here in float32: base, and base + adapter."""
    model_dir, adapter = tiny
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tuned = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter).eval()
    return base, tuned


@pytest.fixture(scope="module")
def server(tiny):
    with serve_model(tiny[0], backend="transformers", startup_timeout_s=120,
                     log_path=tiny[0].parent / "server.log") as running:
        yield running


def _client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=60)


def _local_logprobs(model, ids: list[int]) -> tuple[list[float], int]:
    """log P(ids[j] | ids[:j]) for j >= 1, and the greedy next token, by one forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return chosen.tolist(), int(logprobs[-1].argmax())


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(49152) for _ in range(rng.randint(2, 40))] for _ in range(n)]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (from /proc, no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# --- the transformers backend, one server for the module ----------------------------------


@pytest.mark.slow
def test_served_under_the_folder_name_and_other_names_get_404(server):
    client = _client(server)
    assert server.backend == "transformers" and server.name == "tiny-chat"
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    reply = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert reply.model == "tiny-chat" and isinstance(reply.choices[0].message.content, str)
    assert 1 <= reply.usage.completion_tokens <= 4
    chunks = list(client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        stream=True))
    assert chunks and {chunk.model for chunk in chunks} == {"tiny-chat"}
    with pytest.raises(NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                  "content": "Hi"}])
    assert err.value.body["message"] == ("model 'gpt-4o' is not served here; this server "
                                         "serves 'tiny-chat'")
    status, body = _post(server.base_url + "/completions", {"model": "other", "prompt": "x"})
    assert status == 404 and body["error"]["type"] == "NotFoundError"


@pytest.mark.slow
def test_prompt_logprobs_equal_a_local_forward_pass(server, local, tokenizer):
    client = _client(server)
    for ids in _prompts(3):
        expected, greedy = _local_logprobs(local[0], ids)
        out = client.completions.create(model="tiny-chat", prompt=ids, echo=True, logprobs=2,
                                        max_tokens=1, temperature=0)
        assert out.model == "tiny-chat"
        (choice,) = out.choices
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert len(lp.token_logprobs) == len(ids) + 1  # the prompt, then the greedy token
        assert lp.token_logprobs[1:-1] == pytest.approx(expected, abs=TOL)
        assert lp.tokens == [tokenizer.decode([t]) for t in ids + [greedy]]
        assert choice.text.startswith(tokenizer.decode(ids))
        # the scored token first, then the top 2; the greedy token is the best of its row
        for j, top in enumerate(lp.top_logprobs[1:], start=1):
            assert 1 <= len(top) <= 3 and top[lp.tokens[j]] == lp.token_logprobs[j]
        assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()))
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:j]) for j in range(len(ids) + 1)]
        assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ids), 1)


@pytest.mark.slow
def test_a_batch_equals_one_prompt_at_a_time(server, local):
    prompts = _prompts(19, seed=1)  # more than one forward pass (16 prompts at most each)
    status, body = _post(server.base_url + "/completions",
                         {"model": "tiny-chat", "prompt": prompts, "echo": True, "logprobs": 0,
                          "max_tokens": 0, "temperature": 0})
    assert status == 200 and [c["index"] for c in body["choices"]] == list(range(19))
    assert body["usage"]["completion_tokens"] == 0
    for ids, choice in zip(prompts, body["choices"]):
        expected, _ = _local_logprobs(local[0], ids)
        assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=TOL)
    for ids, choice in list(zip(prompts, body["choices"]))[:2]:
        _, alone = _post(server.base_url + "/completions",
                         {"model": "tiny-chat", "prompt": ids, "echo": True, "logprobs": 0,
                          "max_tokens": 0})
        assert alone["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
            choice["logprobs"]["token_logprobs"][1:], abs=TOL)


@pytest.mark.slow
def test_string_prompts_and_refused_requests(server, local, tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    status, body = _post(server.base_url + "/completions",
                         {"prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0})
    assert status == 200
    (choice,) = body["choices"]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert choice["text"] == text and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
        _local_logprobs(local[0], ids)[0], abs=TOL)
    with pytest.raises(BadRequestError, match="max_tokens"):
        _client(server).completions.create(model="tiny-chat", prompt=[1, 2, 3], echo=True,
                                           logprobs=1, max_tokens=5)
    # plain completions go to transformers' own handler, token-id prompts decoded first
    plain = _client(server).completions.create(model="tiny-chat", prompt=ids, max_tokens=3)
    assert plain.model == "tiny-chat" and plain.usage.completion_tokens <= 3


# --- base + adapter, and cleanup when the block raises ------------------------------------


@pytest.mark.slow
def test_adapter_logprobs_and_cleanup_when_the_block_raises(tiny, local):
    model_dir, adapter = tiny
    ids = _prompts(1, seed=2)[0]
    with pytest.raises(RuntimeError, match="the caller failed"):
        with serve_model(model_dir, adapter=adapter, served_name="tuned",
                         backend="transformers", startup_timeout_s=120,
                         log_path=model_dir.parent / "adapter-server.log") as server:
            pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1].split("/")[0])
            assert [m.id for m in _client(server).models.list().data] == ["tuned"]
            out = _client(server).completions.create(model="tuned", prompt=ids, echo=True,
                                                     logprobs=0, max_tokens=1, temperature=0)
            served = out.choices[0].logprobs.token_logprobs[1:-1]
            tuned, _ = _local_logprobs(local[1], ids)
            base, _ = _local_logprobs(local[0], ids)
            assert served == pytest.approx(tuned, abs=TOL)
            assert max(abs(a - b) for a, b in zip(served, base)) > 1e-2
            raise RuntimeError("the caller failed")
    assert not _alive(pid) and _port_free(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of the server's process group is left


def test_bad_folders_are_refused_before_anything_starts(tiny, tmp_path):
    before = _processes_mentioning(str(tmp_path))
    with pytest.raises(ServeError) as err:
        with serve_model(tmp_path / "missing"):
            pass
    assert (err.value.code, err.value.field) == ("model_not_found", "model_dir")
    (tmp_path / "no-config").mkdir()
    with pytest.raises(ServeError) as err:
        with serve_model(tmp_path / "no-config"):
            pass
    assert (err.value.code, err.value.field) == ("model_not_found", "model_dir")
    with pytest.raises(ServeError) as err:
        with serve_model(tiny[0], adapter=tiny[0]):  # a model, not an adapter
            pass
    assert (err.value.code, err.value.field) == ("adapter_not_found", "adapter")
    assert err.value.bad_input and _processes_mentioning(str(tmp_path)) == before == []
    with pytest.raises(ServeError) as err:
        with serve_model(tmp_path / "model.gguf", adapter=tiny[0]):  # a .gguf is served as is
            pass
    assert err.value.code == "adapter_with_gguf" and err.value.bad_input
    for kwargs, code, field in [({"dtype": "fp32"}, "bad_dtype", "dtype"),
                                ({"port": 70000}, "bad_port", "port")]:
        with pytest.raises(ServeError) as err:  # before loading anything, not a traceback
            with serve_model(tiny[0], **kwargs):
                pass
        assert (err.value.code, err.value.field, err.value.bad_input) == (code, field, True)
    # the app itself refuses too, when started directly
    run = subprocess.run([sys.executable, "-m", "evaluator.serving.hf_app",
                          str(tmp_path / "no-config")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "has no config.json" in run.stderr


@pytest.mark.slow
def test_corrupt_weights_fail_with_the_log_tail_and_leave_no_process(tiny, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny[0] / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(ServeError) as err:
        with serve_model(broken, backend="transformers", startup_timeout_s=120,
                         log_path=tmp_path / "server.log"):
            pass
    assert err.value.code == "server_exited" and not err.value.bad_input
    assert "exited with code" in err.value.message and "last log lines" in err.value.message
    assert "Error" in err.value.message.split("last log lines", 1)[1]  # the traceback's end
    assert _processes_mentioning(str(broken)) == []


# --- `tunesmith serve` as a real command ---------------------------------------------------


@pytest.mark.slow
def test_cli_serves_until_sigterm_and_takes_the_server_down(tiny, tmp_path):
    port = free_port("127.0.0.1")
    cli = subprocess.Popen([str(Path(sys.executable).parent / "tunesmith"), "serve",
                            str(tiny[0]), "--port", str(port), "--backend", "transformers",
                            "--log-file", str(tmp_path / "server.log")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in cli.stdout], daemon=True).start()
    printed, deadline = [], time.monotonic() + 120
    try:
        while not printed or not printed[-1].startswith("Serving until"):
            printed.append(lines.get(timeout=max(0.0, deadline - time.monotonic())).rstrip())
        field = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in printed
                 if line.startswith(("base URL:", "pid:"))}
        base_url, server_pid = field["base URL"], int(field["pid"])
        assert base_url == f"http://127.0.0.1:{port}/v1"
        assert client_snippet(base_url, "tiny-chat").strip() in "\n".join(printed)
        with urllib.request.urlopen(base_url + "/models", timeout=10) as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["tiny-chat"]
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert not _alive(server_pid) and _port_free(port)
    assert "server stopped" in cli.stderr.read()


# --- pure parts ----------------------------------------------------------------------------


def test_vllm_command_sets_name_generation_config_and_lora_rank(tiny, tmp_path):
    assert [max_lora_rank(r) for r in (1, 4, 16, 48, 320, 512)] == [1, 8, 16, 64, 320, 512]
    with pytest.raises(ServeError) as err:
        max_lora_rank(600)
    assert (err.value.code, err.value.field) == ("adapter_rank_too_large", "adapter")

    merged = vllm_command(tiny[0], host="127.0.0.1", port=8001, served_name="tiny-chat",
                          extra_args=["--max-model-len", "512"])
    assert merged[:3] == ["vllm", "serve", str(tiny[0])]
    assert merged[merged.index("--served-model-name") + 1] == "tiny-chat"
    assert merged[merged.index("--generation-config") + 1] == "vllm"
    assert merged[merged.index("--port") + 1] == "8001" and "--enable-lora" not in merged
    assert merged[-2:] == ["--max-model-len", "512"]

    adapter = tmp_path / "wide-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 48}))
    with_lora = vllm_command(tiny[0], host="127.0.0.1", port=8001, served_name="wide-lora",
                             adapter=adapter, vllm_bin="/opt/vllm/bin/vllm")
    assert with_lora[0] == "/opt/vllm/bin/vllm" and "--enable-lora" in with_lora
    assert with_lora[with_lora.index("--served-model-name") + 1] == "tiny-chat"  # the base
    assert with_lora[with_lora.index("--lora-modules") + 1] == f"wide-lora={adapter}"
    assert with_lora[with_lora.index("--max-lora-rank") + 1] == "64"


def test_vllm_parses_calls_in_the_form_the_chat_template_writes_them(tmp_path):
    """A model whose template writes tool calls is served by vLLM with its parser, so a
    client's `tool_choice: auto` request gets `tool_calls` (vLLM answers it 400 without);
    one whose template writes none, or whose arguments after `--` choose, gets none."""
    from evaluator.serving.vllm_cli import tool_call_parser
    from tests.trainer_service.test_chat_format import (LLAMA_3X, llama3x_tokenizer,
                                                        qwen_tokenizer)
    from tunesmith.models import fetch_default

    folders = {}
    for name, tok in (("qwen", qwen_tokenizer()), ("llama", llama3x_tokenizer(LLAMA_3X[1]))):
        tok.save_pretrained(tmp_path / name)
        folders[name] = tmp_path / name
    assert tool_call_parser(folders["qwen"]) == "hermes"
    assert tool_call_parser(folders["llama"]) == "llama3_json"
    assert tool_call_parser(fetch_default()) is None  # SmolLM2's template writes no calls
    assert tool_call_parser(folders["qwen"], ["--tool-call-parser", "qwen3_xml"]) is None
    assert tool_call_parser(tmp_path / "missing") is None
    command = vllm_command(folders["qwen"], host="127.0.0.1", port=8001, served_name="q",
                           tool_parser="hermes")
    at = command.index("--tool-call-parser")
    assert command[at - 1:at + 2] == ["--enable-auto-tool-choice", "--tool-call-parser",
                                      "hermes"]


def test_backend_choice():
    vllm_here = find_vllm() is not None
    expected = "vllm" if vllm_here and torch.cuda.is_available() else "transformers"
    assert choose_backend("auto")[0] == expected
    assert choose_backend("transformers") == ("transformers", None)
    with pytest.raises(ServeError) as err:
        choose_backend("tgi")
    assert (err.value.code, err.value.field) == ("bad_backend", "backend")
    if not vllm_here:
        with pytest.raises(ServeError) as err:
            choose_backend("vllm")
        assert (err.value.code, err.value.field) == ("vllm_not_found", "backend")


def test_client_snippet_is_python_naming_the_server():
    snippet = client_snippet("http://127.0.0.1:8000/v1", "tiny-chat")
    compile(snippet, "<snippet>", "exec")
    assert 'base_url="http://127.0.0.1:8000/v1"' in snippet and 'model="tiny-chat"' in snippet


# --- vLLM, on a GPU machine ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_serves_merged_and_adapter_with_prompt_logprobs(tokenizer, tmp_path):
    """vLLM computes in bfloat16, so its log-probs match a float32 pass over the same bf16
    weights to bf16 precision (measured on CPU for this model, bf16 vs float32: mean 0.03,
    max 0.09 nats), not to 1e-4; the adapter moves them by ~2 nats on average. Head size 64:
    not every vLLM attention kernel takes the 16 of the CPU tests' model."""
    if find_vllm() is None:
        pytest.skip("vLLM is not installed (the gpu extra)")
    model_dir = _tiny_llama(tokenizer, tmp_path / "tiny-gpu", hidden=256, dtype=torch.bfloat16)
    adapter = _lora(model_dir, tmp_path / "tiny-gpu-lora")
    small = ["--max-model-len", "512", "--gpu-memory-utilization", "0.3", "--enforce-eager"]
    ids = _prompts(1, seed=3)[0]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tuned = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter).eval()
    expected = {"tiny-gpu": _local_logprobs(base, ids)[0],
                "tiny-gpu-lora": _local_logprobs(tuned, ids)[0]}

    def mean_abs(a: list[float], b: list[float]) -> float:
        return sum(abs(x - y) for x, y in zip(a, b)) / len(a)

    for kwargs, name, other in (({}, "tiny-gpu", "tiny-gpu-lora"),
                                ({"adapter": adapter}, "tiny-gpu-lora", "tiny-gpu")):
        with serve_model(model_dir, backend="vllm", extra_args=small, startup_timeout_s=600,
                         **kwargs) as server:
            client = _client(server)
            assert server.backend == "vllm" and server.name == name
            assert name in [m.id for m in client.models.list().data]
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
            assert reply.model == name and reply.choices[0].message.content is not None
            out = client.completions.create(model=name, prompt=ids, echo=True, logprobs=1,
                                            max_tokens=1, temperature=0)
            served = out.choices[0].logprobs.token_logprobs
            assert served[0] is None and len(served) == len(ids) + 1
            assert mean_abs(served[1:-1], expected[name]) < 0.1
            assert max(abs(a - b) for a, b in zip(served[1:-1], expected[name])) < 0.5
            assert mean_abs(served[1:-1], expected[other]) > 0.5
