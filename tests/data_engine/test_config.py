"""Config: YAML onto dataclasses, unknown keys and bad values reported together."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_engine.config import DataConfig, load_config
from data_engine.config_loader import from_dict, to_yaml_comments
from data_engine.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_commented_yaml():
    rendered = to_yaml_comments(DataConfig())
    assert "# Whole conversation limit." in rendered
    assert from_dict(DataConfig, yaml.safe_load(rendered)) == DataConfig()


def test_sections_that_are_off_show_their_fields_commented_out():
    from data_engine.synth.evol import EvolConfig
    from data_engine.synth.judge import JudgeConfig

    lines = to_yaml_comments(DataConfig()).splitlines()

    def uncommented(header: str, pad: str) -> dict:
        start = lines.index(f"{pad}# {header}:")
        block = [f"{header}:"]
        for line in lines[start + 1:]:
            if not line.startswith(f"{pad}#   "):
                break
            block.append(line[len(pad) + 2:])  # what removing the "# " leaves, unindented
        return yaml.safe_load("\n".join(block))

    judge = uncommented("judge", "")
    assert from_dict(DataConfig, judge).judge == JudgeConfig()
    evol = uncommented("evol", "  ")
    assert from_dict(DataConfig, {"synth": evol}).synth.evol == EvolConfig()


def test_all_problems_reported_at_once():
    data = {"clean": {"lenght": {}, "disable": ["nope"], "languages": ["japanese"],
                      "repetition": {"max_char_run": "5"}},
            "split": {"train": 0.9, "validation": 0.2, "test": 0.1},
            "inputs": [{"path": "a.jsonl", "format": "csv"}]}
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, data)
    problems = info.value.problems
    expected = ("clean.lenght: unknown key", "clean.repetition.max_char_run: expected int",
                "clean.disable: unknown filter 'nope'", "clean.languages: 'japanese'",
                "split.train + validation + test: must sum to 1",
                "inputs[0].format: 'csv' is not one of")
    assert len(problems) == len(expected)  # keys, types and values in one report
    for start in expected:
        assert sum(p.startswith(start) for p in problems) == 1, (start, problems)


def test_a_wrong_type_does_not_hide_or_make_up_value_problems():
    """An object with a wrongly typed field is checked with that field at its default, so
    its other fields' bad values are still reported and nothing is said of the default; an
    object put in place of a wrong value is not checked."""
    data = {"inputs": [{"path": "a.jsonl"}, 7], "seed": "x", "mix": {"weights": {"a": "b"}},
            "clean": {"length": {"max_tokens": "many", "min_reply_tokens": -1}},
            "split": {"train": 0.9, "validation": 0.2, "test": 0.1}}
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, data)
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "clean.length.max_tokens", "clean.length.min_reply_tokens", "inputs[1]",
        "mix.weights.a", "seed", "split.train + validation + test"]


def test_load_config_resolves_paths_and_merges_cli_inputs(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text(
        "inputs:\n  - path: ../data/a.jsonl\n    source: alpha\nseed: 3\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path / "cfg" / "run.yaml", ["data/a.jsonl", "b.jsonl"], {"seed": 9})
    assert [(Path(i.path), i.source) for i in config.inputs] == [
        (tmp_path / "data" / "a.jsonl", "alpha"), (tmp_path / "b.jsonl", None)]
    assert config.seed == 9


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clean: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_values_that_failed_inside_ray_are_config_errors(tmp_path):
    """Each of these passed the config and failed later: a Ray traceback after clean and
    dedup (engine device, dtype or model; a negative seed), or every row rejected as
    wrong_language (a code the detector does not know)."""
    data = {"seed": -3, "dedup": {"seed": -1}, "split": {"floor_min_rows": -1},
            "clean": {"languages": ["EN", "xx", "en", "ja"]},
            "engine": {"device": "tpu", "dtype": "int4", "model": str(tmp_path / "none")}}
    with pytest.raises(ConfigError) as info:
        config = from_dict(DataConfig, data)
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "clean.languages", "clean.languages", "dedup.seed", "engine.device", "engine.dtype",
        "seed", "split.floor_min_rows"]
    # a model path is checked where the engine runs (a cluster's config names its own paths)
    config = from_dict(DataConfig, {"engine": {"model": str(tmp_path / "none")}})
    assert config.engine.missing_model() == f"engine.model: {tmp_path / 'none'} is not a folder"
    assert any("'EN' is not a language the detector knows" in p for p in info.value.problems)
    ok = from_dict(DataConfig, {"engine": {"device": "cuda:1", "dtype": "bfloat16"},
                                "clean": {"languages": ["en", "zh"]}})
    assert ok.engine.device == "cuda:1"


def test_craft_needs_its_fewshots_and_corpus_on_disk(tmp_path):
    (tmp_path / "cfg.yaml").write_text("synth:\n  craft: {corpus: [docs.jsonl]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "cfg.yaml")
    assert info.value.problems == [
        f"synth.craft.corpus: {tmp_path / 'docs.jsonl'}: no such file or folder",
        "synth.craft.fewshots: must name a JSONL of task examples"]
