"""Checks on what a server is asked to serve, done before any process starts, and the one
piece of environment both backends need (an existing HF_HOME)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

from evaluator.serving.errors import ServeError


def check_model_dir(path: Path | str) -> Path:
    """The absolute model folder; ServeError(model_not_found) unless it holds a config.json."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ServeError("model_not_found", f"{folder} is not a folder", field="model_dir")
    if not (folder / "config.json").is_file():
        raise ServeError("model_not_found", f"{folder} has no config.json; pass a merged model "
                         "folder or the base model of an adapter", field="model_dir")
    return folder


def check_adapter_dir(path: Path | str) -> Path:
    """The absolute adapter folder; ServeError(adapter_not_found) unless it holds a PEFT
    adapter_config.json."""
    folder = Path(path).expanduser().resolve()
    if not (folder / "adapter_config.json").is_file():
        raise ServeError("adapter_not_found", f"{folder} has no adapter_config.json (a PEFT "
                         "adapter folder, as `tunesmith train run` writes)", field="adapter")
    return folder


def adapter_rank(folder: Path) -> int:
    """The LoRA rank `r` an adapter was trained with (adapter_config.json)."""
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ServeError("bad_adapter", f"{folder / 'adapter_config.json'} has no LoRA "
                         f"rank `r` (found {rank!r})", field="adapter")
    return rank


def ensure_hf_home(env: MutableMapping[str, str]) -> Path:
    """Sets `env["HF_HOME"]` to a folder that exists with its `hub/` inside.

    transformers' serving code scans `$HF_HOME/hub` and fails when it is missing, as on a
    fresh machine that has only local models. An unwritable default home (a read-only
    container) falls back to a fresh temporary folder.
    """
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = Path(env.get("HF_HOME") or cache / "huggingface")
    try:
        (home / "hub").mkdir(parents=True, exist_ok=True)
    except OSError:
        home = Path(tempfile.mkdtemp(prefix="tunesmith-hf-home-"))
        (home / "hub").mkdir()
    env["HF_HOME"] = os.fspath(home)
    return home
