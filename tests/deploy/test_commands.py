"""Every command line in deploy/ names a real CLI entry point and parses with its flags.

`tunesmith WORDS --help` must exit 0 (WORDS: the argv up to the first flag), and the whole
argv must parse with the command's own parser (unknown flags, missing required options and
bad values fail) without running it. `ray ...` lines parse with Ray's click CLI the same way.
The vLLM command lines must equal what `tunesmith serve --backend vllm` builds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy import common

TUNESMITH_COMMANDS = common.commands_of("tunesmith")
RAY_COMMANDS = common.commands_of("ray")


def _words(argv: tuple[str, ...]) -> tuple[str, ...]:
    words = []
    for word in argv[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    return tuple(words)


def test_commands_are_found_everywhere_they_are_used():
    """Guards the extraction itself: each place that runs tunesmith contributes commands."""
    sources = {c.source.split(" ")[0] for c in TUNESMITH_COMMANDS}
    for expected in ("deploy/ray/cluster.yaml", "deploy/k8s/rayjob-synth-evol.yaml",
                     "deploy/k8s/rayjob-data-run.yaml", "deploy/k8s/trainer.yaml",
                     "deploy/docker/compose.yaml", "deploy/README.md", "deploy/ray/README.md"):
        assert expected in sources, f"no tunesmith command found in {expected}"
    assert any(c.argv[1:3] == ("synth", "evol") for c in TUNESMITH_COMMANDS
               if c.source.startswith("deploy/ray/README.md"))
    ray_sources = {c.source.split(" ")[0] for c in RAY_COMMANDS}
    assert {"deploy/ray/cluster.yaml", "deploy/ray/README.md"} <= ray_sources


@pytest.fixture(scope="module")
def help_exit_codes():
    """`tunesmith WORDS --help` for each distinct WORDS, run in parallel."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    procs = {}
    for words in sorted({_words(c.argv) for c in TUNESMITH_COMMANDS}):
        procs[words] = subprocess.Popen([str(common.TUNESMITH), *words, "--help"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, cwd=common.ROOT)
    out = {}
    for words, proc in procs.items():
        stdout, _ = proc.communicate(timeout=60)
        out[words] = (proc.returncode, stdout.decode(errors="replace"))
    return out


@pytest.mark.parametrize("command", TUNESMITH_COMMANDS,
                         ids=[f"{c.source}: {' '.join(c.argv)[:70]}" for c in TUNESMITH_COMMANDS])
def test_tunesmith_command_is_a_real_entry_point(command, help_exit_codes):
    code, output = help_exit_codes[_words(command.argv)]
    assert code == 0, f"{command.source}: `tunesmith {' '.join(_words(command.argv))} --help` " \
                      f"exited {code}:\n{output[-2000:]}"


def _leaf(root, words: list[str]):
    cmd, path = root, []
    while getattr(cmd, "commands", None) and words and words[0] in cmd.commands:
        path.append(words[0])
        cmd = cmd.commands[words.pop(0)]
    return cmd, path, words


@pytest.mark.parametrize("command", TUNESMITH_COMMANDS,
                         ids=[f"{c.source}: {' '.join(c.argv)[:70]}" for c in TUNESMITH_COMMANDS])
def test_tunesmith_command_parses(command):
    import typer.main

    from tunesmith.cli import app

    cmd, path, rest = _leaf(typer.main.get_command(app), list(command.argv[1:]))
    if getattr(cmd, "commands", None):
        # A group with only options left (`tunesmith --version`): run it for real.
        result = subprocess.run([str(common.TUNESMITH), *path, *rest], capture_output=True,
                                timeout=60, cwd=common.ROOT)
        assert result.returncode == 0, f"{command.source}: {result.stderr.decode()[-1000:]}"
        return
    try:
        cmd.make_context(" ".join(["tunesmith", *path]), rest, resilient_parsing=False)
    except Exception as exc:  # the CLI's own usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        pytest.fail(f"{command.source}: `{' '.join(command.argv)}` does not parse: {message}")


@pytest.mark.parametrize("command", RAY_COMMANDS,
                         ids=[f"{c.source}: {' '.join(c.argv)[:70]}" for c in RAY_COMMANDS])
def test_ray_command_parses(command, monkeypatch):
    from ray.scripts.scripts import cli

    monkeypatch.chdir(common.ROOT)  # `ray up deploy/ray/cluster.yaml` checks the file exists
    cmd, path, rest = _leaf(cli, list(command.argv[1:]))
    assert path, f"{command.source}: `{' '.join(command.argv)}` names no ray subcommand"
    assert not getattr(cmd, "commands", None), \
        f"{command.source}: `ray {' '.join(path)}` is a group, not a command"
    try:
        cmd.make_context(" ".join(["ray", *path]), rest, resilient_parsing=False)
    except Exception as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        pytest.fail(f"{command.source}: `{' '.join(command.argv)}` does not parse: {message}")


def _vllm_commands() -> list[tuple[str, list[str]]]:
    out = []
    deployment = common.find("Deployment", "tunesmith-vllm")
    c = common.container(deployment, "vllm")
    out.append(("deploy/k8s/vllm.yaml", list(c["command"]) + list(c.get("args", []))))
    env = {"SERVED_MODEL_NAME": "tunesmith-ft", "VLLM_GPU_MEMORY_UTILIZATION": "0.45"}
    compose = common.compose()
    out.append(("deploy/docker/compose.yaml",
                [_interpolate(w, env) for w in compose["services"]["vllm"]["command"]]))
    return out


def _interpolate(value: str, env: dict[str, str]) -> str:
    import re

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""),
                  value)


@pytest.mark.parametrize("source,argv", _vllm_commands(), ids=[s for s, _ in _vllm_commands()])
def test_vllm_command_is_what_tunesmith_serve_builds(source, argv):
    from evaluator.serving.vllm_cli import vllm_command

    assert argv[:2] == ["vllm", "serve"], source
    model = Path(argv[2])
    served = argv[argv.index("--served-model-name") + 1]
    expected = vllm_command(model, host="0.0.0.0", port=8000, served_name=served)
    # Flags the project's builder sets, then any extra arguments a deployment adds.
    assert argv[:len(expected)] == expected, f"{source}: {argv} does not start with {expected}"
    assert argv[2] == "/models/merged"



@pytest.mark.parametrize("argv", [["serve", "m", "--startup-timeout", "-5"],
                                  ["trainer", "serve", "--drain-timeout", "-1"]])
def test_negative_timeouts_are_usage_errors(argv):
    """`--startup-timeout -5` failed at once with "did not answer within -5 s" (exit 1)."""
    result = subprocess.run([str(common.TUNESMITH), *argv], capture_output=True, text=True,
                            timeout=60, cwd=common.ROOT)
    assert result.returncode == 2, result.stderr[-1000:]
    assert "greater than or equal" in result.stderr
