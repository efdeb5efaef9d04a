"""The data engine's config: YAML maps onto these dataclasses; unknown keys are errors.

`tunesmith data config` prints the defaults below as commented YAML.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_engine.config_loader import from_dict
from data_engine.errors import ConfigError

FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "columns")
COLUMN_ROLES = ("system", "user", "assistant", "id")

# Chat-control literals the tokenizer adds; data containing them as text teaches the model
# to emit or mis-parse them. Any `<|...|>` token is matched by pattern besides these.
DEFAULT_SPECIAL_TOKENS = ["<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


def _help(text: str, default: Any = None, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class InputConfig:
    path: str = _help("A JSONL file, a Parquet file or folder, or a datasets save_to_disk folder.", "")
    format: str = _help("Row format: auto (detected per row) | " + " | ".join(FORMATS[1:]) + ".",
                        "auto")
    source: str | None = _help("Value of the `source` column; default: the file's stem.")
    columns: dict[str, str] | None = _help(
        "Column mapping for other shapes, role -> column, e.g. {user: question, assistant: answer}; "
        "keys: " + ", ".join(COLUMN_ROLES) + ".")

    def check(self) -> list[str]:
        problems = []
        if not self.path:
            problems.append("path: must be set")
        if self.format not in FORMATS:
            problems.append(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "columns" and not self.columns:
            problems.append("columns: format 'columns' needs a mapping")
        for key in self.columns or {}:
            if key not in COLUMN_ROLES:
                problems.append(f"columns.{key}: unknown role (known: {', '.join(COLUMN_ROLES)})")
        if self.columns and not {"user", "assistant"} <= set(self.columns):
            problems.append("columns: needs at least `user` and `assistant`")
        return problems


@dataclass
class LengthConfig:
    tokenizer: str | None = _help(
        "Tokenizer (local folder or hub id) for exact token counts; default: a character "
        "estimate (1 token per CJK character, 4 other characters per token).")
    min_reply_tokens: int = _help(
        "Every assistant reply needs at least this many tokens. A 1-token reply teaches the stop "
        "token and little else; set 1 for classification labels.", 2)
    max_tokens: int = _help(
        "Whole conversation limit. Keep it equal to training max_seq_length: longer rows are "
        "truncated in training and lose the reply's end-of-turn token.", 2048)
    turn_overhead_tokens: int = _help(
        "Tokens the chat template adds per turn (ChatML: <|im_start|>, role, newline, <|im_end|>, "
        "newline).", 5)

    def check(self) -> list[str]:
        problems = []
        if self.min_reply_tokens < 0:
            problems.append("min_reply_tokens: must be >= 0")
        if self.max_tokens <= self.min_reply_tokens:
            problems.append("max_tokens: must exceed min_reply_tokens")
        if self.turn_overhead_tokens < 0:
            problems.append("turn_overhead_tokens: must be >= 0")
        return problems


@dataclass
class RepetitionConfig:
    max_char_run: int = _help(
        "Longest allowed run of one character (digits, spaces and rule characters like -=_*~#. "
        "are exempt). 4 flags `」」」」」` while keeping `……` and `！！！`.", 4)
    max_word_repeats: int = _help(
        "Most times a word or short phrase may repeat back to back (`the the the` is 3).", 2)
    max_phrase_tokens: int = _help(
        "Longest phrase, in tokens, checked for back-to-back repeats; 12 covers "
        "`ありがとうございます` (10 characters, one token each).", 12)
    max_compression_ratio: float = _help(
        "Replies of 200+ bytes may compress (zlib) at most this much. Measured: prose 1.5-3x, "
        "code up to 4x, loops 10-20x.", 8.0)

    def check(self) -> list[str]:
        problems = []
        if self.max_char_run < 1:
            problems.append("max_char_run: must be >= 1")
        if self.max_word_repeats < 1:
            problems.append("max_word_repeats: must be >= 1")
        if self.max_phrase_tokens < 1:
            problems.append("max_phrase_tokens: must be >= 1")
        if self.max_compression_ratio <= 1.0:
            problems.append("max_compression_ratio: must be > 1")
        return problems


@dataclass
class TagListConfig:
    max_chars: int = _help("Only single-line replies up to this length are checked.", 200)
    max_segment_chars: int = _help(
        "A keyword is at most this long; longer segments read as text.", 12)
    min_strong_segments: int = _help("Segments split by ｜ or | that make a tag list.", 3)
    min_weak_segments: int = _help("Segments split by 、 ・ / , ， that make a tag list "
                                   "(4, so `京都・大阪・神戸を巡る旅` stays a title).", 4)

    def check(self) -> list[str]:
        problems = []
        for name in ("max_chars", "max_segment_chars", "min_strong_segments", "min_weak_segments"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        return problems


@dataclass
class CleanConfig:
    fix_mojibake: bool = _help("Repair UTF-8 read as Latin-1/cp1252 (ftfy.fix_encoding).", True)
    normalize_width: bool = _help(
        "NFKC where safe: full-width letters/digits to ASCII and half-width katakana to "
        "full-width; superscripts, circled numbers and CJK punctuation are left alone.", True)
    disable: list[str] = _help("Filter names to skip (see README: reasons).", factory=list)
    special_tokens: list[str] = _help(
        "Literals that must not appear in content, besides any `<|...|>` token.",
        factory=lambda: list(DEFAULT_SPECIAL_TOKENS))
    languages: list[str] = _help(
        "ISO 639-1 codes the assistant replies must be in; empty: no language filter.",
        factory=list)
    length: LengthConfig = _help("Token length bounds.", factory=LengthConfig)
    repetition: RepetitionConfig = _help("Degenerate repetition thresholds.",
                                         factory=RepetitionConfig)
    tag_list: TagListConfig = _help("Keyword-list detection thresholds.", factory=TagListConfig)

    def check(self) -> list[str]:
        from data_engine.filters import FILTER_NAMES

        problems = [f"disable: unknown filter {name!r} (known: {', '.join(FILTER_NAMES)})"
                    for name in self.disable if name not in FILTER_NAMES]
        problems += [f"languages: {code!r} is not a 2-letter code" for code in self.languages
                     if not (isinstance(code, str) and len(code) == 2 and code.isalpha())]
        return problems


@dataclass
class SplitConfig:
    train: float = _help("Share of kept rows in train.", 0.8)
    validation: float = _help("Share in validation: without one, overfitting goes unseen.", 0.1)
    test: float = _help("Share in test, held out for the evaluator.", 0.1)

    def check(self) -> list[str]:
        problems = [f"{name}: must be within [0, 1]" for name in ("train", "validation", "test")
                    if not 0.0 <= getattr(self, name) <= 1.0]
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            problems.append(f"train + validation + test: must sum to 1, got {total:g}")
        return problems


@dataclass
class RayConfig:
    address: str | None = _help(
        "Ray cluster address (or RAY_ADDRESS); default: an embedded local Ray on 127.0.0.1.")
    num_cpus: int | None = _help("CPUs for the embedded local Ray; default: all.")
    shard_rows: int = _help("Input rows per ingest task; one block each.", 5000)

    def check(self) -> list[str]:
        problems = []
        if self.shard_rows < 1:
            problems.append("shard_rows: must be >= 1")
        if self.num_cpus is not None and self.num_cpus < 1:
            problems.append("num_cpus: must be >= 1")
        return problems


@dataclass
class DataConfig:
    inputs: list[InputConfig] = _help("Input datasets; --input adds more.", factory=list)
    clean: CleanConfig = _help("Normalisers and filters.", factory=CleanConfig)
    split: SplitConfig = _help("Train/validation/test ratios.", factory=SplitConfig)
    seed: int = _help("Seed for every random choice; same seed, same outputs.", 0)
    ray: RayConfig = _help("Where and how the stages run.", factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None, extra_inputs: list[str] = (),
                overrides: dict[str, Any] | None = None) -> DataConfig:
    """Reads a YAML config (or defaults), resolves input paths and adds CLI inputs.

    Input paths in the file are relative to the file's folder; CLI inputs are relative to
    the working directory. A CLI input naming a path the file lists reuses the file's entry.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: no such file"], origin) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"], origin) from None
        data = loaded or {}
        base = path.resolve().parent
    if overrides:
        data = {**data, **overrides}
    config = from_dict(DataConfig, data, origin)
    for item in config.inputs:
        item.path = str((base / item.path).resolve())
    known = {item.path for item in config.inputs}
    for raw in extra_inputs:
        resolved = str(Path(raw).resolve())
        if resolved not in known:
            config.inputs.append(InputConfig(path=resolved))
            known.add(resolved)
    return config
