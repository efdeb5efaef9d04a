"""CRAFT: task samples rewritten from corpus documents near human few-shots.

Ziegler et al. 2024, "CRAFT Your Dataset: Task-Specific Synthetic Dataset Generation
Through Corpus Retrieval and Augmentation". Two steps:

1. Retrieval: embed the corpus and the few-shots (all-MiniLM-L6-v2, unit vectors); take
   each few-shot's `per_example_k` nearest documents by cosine and the `mean_k` nearest to
   the few-shots' mean; a document found twice (or a second copy of the same text) is used
   once. The order is deterministic: rank 1 of every list, then rank 2, ..., cut at
   `max_documents`, so every few-shot is represented before any gets its k-th document.
2. Augmentation: for each document the engine sees a few of the few-shots and the document
   and writes one sample between `### Instruction`, `### Response` and `### End` lines.

A few-shot is its last user turn and the assistant reply after it; when every few-shot has
the same system turn, the generated rows get it too. Every generation becomes a row with
origin "craft" and the document's id as parent_id; rows that fail are kept with a reason:

- `engine_error`: the engine failed on the request (`_detail`: its error);
- `craft_unfinished`: the reply hit `max_tokens` (finish_reason "length");
- `craft_bad_format`: no `### Instruction` / `### Response`, or one of them empty;
- `craft_copied_fewshot`: the instruction is one of the few-shots' (a small model's habit);
- then any reason of the clean filters (`apply_clean`), e.g. `too_short`, `degenerate_repetition`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from data_engine.config import CleanConfig, _help
from data_engine.engines.base import Engine, Generation, SamplingParams
from data_engine.errors import ConfigError, InputError
from data_engine.synth.rows import apply_clean, generator_name, make_row

log = logging.getLogger(__name__)

ORIGIN = "craft"
CRAFT_REASONS = ("engine_error", "craft_unfinished", "craft_bad_format", "craft_copied_fewshot")
# Fewer than 8 few-shots give retrieval too narrow a picture of the task: an error. More
# than 32 work, but each adds a retrieval list and the lists mostly overlap: a warning.
MIN_FEWSHOTS, MAX_FEWSHOTS = 8, 32
END_MARKER = "### End"


@dataclass
class CraftConfig:
    corpus: list[str] = _help(
        "Corpus files: JSONL, or Parquet (a file or a folder of *.parquet), one document per "
        "row in `text_column`.", factory=list)
    text_column: str = _help("Column holding a document's text.", "text")
    id_column: str | None = _help(
        "Column holding a document's id (the rows' parent_id); default: `file:line` (JSONL) "
        "or `file:row` (Parquet), 1-based.")
    fewshots: str = _help(
        f"JSONL of {MIN_FEWSHOTS}-{MAX_FEWSHOTS} human-written task examples in any input "
        f"format (messages, ShareGPT, Alpaca, prompt/completion). Fewer than {MIN_FEWSHOTS} is "
        f"an error; more than {MAX_FEWSHOTS} is a warning and all are used.", "")
    per_example_k: int = _help("Nearest documents kept per few-shot.", 16)
    mean_k: int = _help("Nearest documents to the few-shots' mean embedding: the task's centre, "
                        "which finds documents between the few-shots' topics.", 32)
    max_documents: int = _help("Documents rewritten at most (one sample each), after removing "
                               "duplicates; taken rank by rank across the few-shots.", 512)
    shots_in_prompt: int = _help(
        "Few-shots shown per rewrite: the one nearest the document plus seeded random others. "
        "More shows the task better but costs context; 2-3 suit 2k-token models.", 3)
    max_document_chars: int = _help("A document is cut (at a space) to this many characters "
                                    "in the prompt.", 2000)
    temperature: float = _help("Sampling temperature of the rewrite.", 0.7)
    top_p: float = _help("Nucleus sampling of the rewrite.", 0.95)
    max_tokens: int = _help("Tokens per rewrite; a reply that hits it is dropped as "
                            "craft_unfinished.", 512)
    embed_batch_size: int = _help("Texts per embedding forward pass.", 64)
    embed_concurrency: int = _help("Ray actors embedding the corpus (each loads the 90 MB model).",
                                   2)
    ray_min_documents: int = _help(
        "Corpora with fewer documents are embedded in process: each Ray actor spends seconds "
        "loading the model before its first batch, more than a small corpus takes.", 2000)

    def check(self) -> list[str]:
        problems = []
        for name in ("per_example_k", "max_documents", "shots_in_prompt", "max_document_chars",
                     "max_tokens", "embed_batch_size", "embed_concurrency"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        for name in ("mean_k", "ray_min_documents"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0")
        if self.shots_in_prompt > MAX_FEWSHOTS:
            problems.append(f"shots_in_prompt: at most {MAX_FEWSHOTS}")
        if self.temperature < 0:
            problems.append("temperature: must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            problems.append("top_p: must be within (0, 1]")
        if not self.text_column:
            problems.append("text_column: must be set")
        return problems


# ---------------------------------------------------------------- few-shots and corpus


@dataclass
class FewShot:
    """The task sample a few-shot shows: its last user turn and the reply to it."""

    instruction: str
    response: str
    system: str | None = None

    @property
    def text(self) -> str:
        return f"{self.instruction}\n{self.response}"


def fewshot_pairs(fewshots: list[dict[str, Any]]) -> list[FewShot]:
    """The few-shots as instruction/response pairs; raises ConfigError listing every bad one
    and when there are fewer than MIN_FEWSHOTS. More than MAX_FEWSHOTS warns."""
    problems, pairs = [], []
    for i, row in enumerate(fewshots):
        turns = [m for m in row.get("messages") or [] if (m.get("content") or "").strip()]
        last = max((k for k, m in enumerate(turns) if m.get("role") == "user"), default=None)
        reply = next((m for m in turns[last + 1:] if m.get("role") == "assistant"), None) \
            if last is not None else None
        if reply is None:
            problems.append(f"fewshots[{i}]: needs a user turn followed by an assistant reply")
            continue
        system = next((m["content"] for m in turns if m.get("role") == "system"), None)
        pairs.append(FewShot(turns[last]["content"].strip(), reply["content"].strip(), system))
    if len(fewshots) < MIN_FEWSHOTS:
        problems.append(f"fewshots: {len(fewshots)} given, CRAFT needs at least {MIN_FEWSHOTS} "
                        "human-written examples of the task")
    if problems:
        raise ConfigError(problems, "craft")
    if len(pairs) > MAX_FEWSHOTS:
        message = (f"craft: {len(pairs)} few-shots given; {MIN_FEWSHOTS}-{MAX_FEWSHOTS} is the "
                   "intended range. All are used: retrieval grows with each one")
        log.warning(message)
        warnings.warn(message, stacklevel=3)
    return pairs


def load_fewshots(path: str | Path) -> list[dict[str, Any]]:
    """Reads a few-shot JSONL file in any input format into rows with `messages`."""
    from data_engine.readers.formats import UnknownFormat, to_messages

    rows, problems = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")  # JSON text may hold U+2028
    except OSError as exc:
        raise InputError(str(path), str(exc), "craft.fewshots") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append({"id": f"fewshot-{number}", "messages": to_messages(json.loads(line),
                                                                            "auto")})
        except (ValueError, UnknownFormat) as exc:
            problems.append(f"fewshots line {number}: {exc}")
    if problems:
        raise ConfigError(problems, str(path))
    return rows


@dataclass
class Corpus:
    """Documents in file order; `skipped` counts rows without text."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    skipped: int = 0


def load_corpus(paths: list[str], text_column: str = "text", id_column: str | None = None
                ) -> Corpus:
    """Reads JSONL and Parquet corpora. A malformed line or a row without text is skipped
    (counted); a missing column in a Parquet file or a repeated id is an error. Without an
    id column a document's id is `FILE:ROW`, FILE the file's name, or where two corpus files
    share a name (`c1/docs.jsonl`, `c2/docs.jsonl`; shards `part-0.parquet` in two folders)
    its path from the folder they have in common."""
    files: list[tuple[str, Path, bool]] = []  # (path as given, file, parquet)
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.glob("*.parquet"))
            if not found:
                raise InputError(raw, "no *.parquet files", "craft.corpus")
            files += [(raw, f, True) for f in found]
        elif p.is_file():
            files.append((raw, p, p.suffix == ".parquet"))
        else:
            raise InputError(raw, "no such file or folder", "craft.corpus")
    labels = _file_labels([f for _, f, _ in files])
    corpus, seen = Corpus(), set()
    for (raw, f, parquet), label in zip(files, labels, strict=True):
        rows = (_parquet_rows if parquet else _jsonl_rows)(f, label, text_column, id_column)
        for doc_id, text in rows:
            if not (isinstance(text, str) and text.strip()) or doc_id is None:
                corpus.skipped += 1
                continue
            if str(doc_id) in seen:
                raise InputError(raw, f"document id {doc_id!r} appears twice; ids must be "
                                 "unique" + ("" if id_column else " (is a file listed twice?)"),
                                 "craft.id_column")
            seen.add(str(doc_id))
            corpus.ids.append(str(doc_id))
            corpus.texts.append(text)
    if not corpus.texts:  # 0 rows made and exit 0 looked like a model that wrote nothing
        raise InputError(", ".join(paths), f"no document has text in the column "
                         f"{text_column!r} ({corpus.skipped} rows without it); name the "
                         "corpus's text column with `craft.text_column`", "craft.corpus")
    if corpus.skipped:
        message = (f"craft: {corpus.skipped} corpus rows have no text in {text_column!r} "
                   "(or no id) and are skipped")
        log.warning(message)
        warnings.warn(message, stacklevel=2)
    return corpus


def _file_labels(files: list[Path]) -> list[str]:
    """What default ids name each file by: its name, or, when two files share a name, its
    path from the folder all the files have in common."""
    names = [f.name for f in files]
    if len(set(names)) == len(names):
        return names
    full = [f.resolve() for f in files]
    common = Path(os.path.commonpath([f.parent for f in full]))
    return [f.relative_to(common).as_posix() for f in full]


def _jsonl_rows(path: Path, label: str, text_column: str, id_column: str | None):
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                yield None, None
                continue
            yield (row.get(id_column) if id_column else f"{label}:{number}",
                   row.get(text_column))


def _parquet_rows(path: Path, label: str, text_column: str, id_column: str | None):
    import pyarrow.parquet as pq

    wanted = [text_column] + ([id_column] if id_column else [])
    names = pq.ParquetFile(path).schema_arrow.names
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(str(path), f"no column {', '.join(missing)} (has {', '.join(names)})",
                         "craft.corpus")
    table = pq.read_table(path, columns=wanted)
    texts = table.column(text_column).to_pylist()
    ids = table.column(id_column).to_pylist() if id_column else \
        [f"{label}:{i}" for i in range(1, len(texts) + 1)]
    yield from zip(ids, texts)


# ---------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class Retrieved:
    """One chosen document: which query found it first, at what rank and cosine, and the
    few-shot nearest to it (always shown in its prompt)."""

    doc_id: str
    text: str
    score: float
    query: str  # "fewshot:<i>" or "mean"
    rank: int  # 1-based within that query's list
    nearest_fewshot: int


# Cosines this close are a tie: the same text embedded in batches of other lengths moves by
# up to ~1e-6 (padding changes the kernels' rounding), which must not reorder a document and
# its copy between an in-process and a Ray run.
_TIE_DECIMALS = 5


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties (to 1e-5) go to the earlier
    document, also at the k-th place."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    key = np.round(scores, _TIE_DECIMALS)
    if k < len(key):  # every document as good as the k-th one, its ties included
        part = np.flatnonzero(key >= np.partition(key, len(key) - k)[len(key) - k])
    else:
        part = np.arange(len(key))
    return part[np.lexsort((part, -key[part]))][:k]


def select_documents(scores: np.ndarray, texts: list[str], config: CraftConfig
                     ) -> list[tuple[int, str, int, float]]:
    """Pure core of retrieval over a (documents, few-shots + 1) cosine matrix whose last
    column is the mean query. Returns (document index, query, rank, score) in use order."""
    n_shots = scores.shape[1] - 1
    lists = [(f"fewshot:{j}", _top(scores[:, j], config.per_example_k)) for j in range(n_shots)]
    lists.append(("mean", _top(scores[:, n_shots], config.mean_k)))
    chosen, seen_docs, seen_texts = [], set(), set()
    for rank in range(max(len(order) for _, order in lists)):
        for column, (query, order) in enumerate(lists):
            if rank >= len(order) or len(chosen) >= config.max_documents:
                continue
            doc = int(order[rank])
            key = " ".join(texts[doc].split()).lower()
            if doc in seen_docs or key in seen_texts:
                continue
            seen_docs.add(doc)
            seen_texts.add(key)
            chosen.append((doc, query, rank + 1, float(scores[doc, column])))
    return chosen


def retrieve(pairs: list[FewShot], corpus: Corpus, config: CraftConfig) -> list[Retrieved]:
    """The documents CRAFT rewrites, with the query that found each and its cosine."""
    from data_engine.synth.embed import embed_texts, embed_with_ray

    if not corpus.texts:
        return []
    shots = embed_texts([p.text for p in pairs])
    mean = shots.mean(axis=0)
    queries = np.vstack([shots, mean / max(float(np.linalg.norm(mean)), 1e-12)])
    if len(corpus.texts) >= config.ray_min_documents:
        scores = embed_with_ray(corpus.texts, queries=queries,
                                concurrency=config.embed_concurrency,
                                batch_size=config.embed_batch_size)
    else:
        scores = embed_texts(corpus.texts) @ queries.T
    chosen = select_documents(scores, corpus.texts, config)
    log.info("craft: %d documents chosen from %d (%d skipped without text)", len(chosen),
             len(corpus.texts), corpus.skipped)
    return [Retrieved(corpus.ids[d], corpus.texts[d], score, query, rank,
                      int(np.argmax(scores[d, :len(pairs)])))
            for d, query, rank, score in chosen]


# ---------------------------------------------------------------- augmentation


class BadFormat(ValueError):
    """A reply is not one sample in the `### Instruction` / `### Response` format."""


# A header line: `### Instruction`, `**Response:**`, `Instruction: text`, ... Without
# markdown a colon is required, so prose starting with "Response times" is not a header.
_KEYWORD = r"(instructions?|input|response|end)\b"
_HEADER = re.compile(rf"^[ \t]*(?:(?:#{{1,6}}[ \t]*|\*\*){_KEYWORD}[ \t]*(?:\*\*)?[ \t]*:?"
                     rf"|{_KEYWORD}[ \t]*:)(?:[ \t]*\*\*)?[ \t]*",
                     re.IGNORECASE | re.MULTILINE)


def _headers(text: str) -> list[tuple[str, int, int, bool]]:
    """(kind, start, end, marked) of every header line: kind one of instruction/input/
    response/end; marked when it has markdown (`###`, `**`), where a bare one is `Word:`."""
    out = []
    for m in _HEADER.finditer(text):
        kind = (m.group(1) or m.group(2)).lower()
        out.append(("instruction" if kind.startswith("instruction") else kind, m.start(),
                    m.end(), m.group(1) is not None))
    return out


def parse_sample(text: str) -> tuple[str, str]:
    """(instruction, response) from a reply. Headers may carry markdown (`###`, `**`) and a
    colon, and text may follow on the header's line. The response header is the first
    marked one after the instruction and before any second `### Instruction` (a bare
    `Response:` only when none is marked). A
    marked `### Input` section is appended to the instruction; a bare `Input:` line is
    text of it, kept as written. The response runs to the next marked header (`### End`,
    a second sample's `### Instruction`), or after a bare `Response:` also to a bare
    `Instruction:`: a line of the answer such as `Input: [1, 2, 3]` or `End:` ends
    nothing. Anything after the first sample is ignored. Raises BadFormat saying what is
    missing."""
    headers = _headers(text)
    first = next((i for i, h in enumerate(headers) if h[0] == "instruction"), None)
    if first is None:
        raise BadFormat("no ### Instruction line")
    # a second sample's marked `### Instruction` ends the search
    limit = next((i for i in range(first + 1, len(headers))
                  if headers[i][3] and headers[i][0] == "instruction"), len(headers))
    answers = [i for i in range(first + 1, limit) if headers[i][0] == "response"]
    if not answers:
        raise BadFormat("no ### Response line after the instruction")
    response = next((i for i in answers if headers[i][3]), answers[0])
    marked = headers[response][3]
    # the instruction, and any marked Input sections; bare headers in between are its text
    cuts = [i for i in range(first + 1, response) if headers[i][3] and headers[i][0] == "input"]
    bounds = [first] + cuts + [response]
    parts = [text[headers[a][2]:headers[b][1]].strip() for a, b in zip(bounds, bounds[1:])]
    instruction = "\n\n".join(p for p in parts if p)
    end = next((h[1] for h in headers[response + 1:]
                if h[3] or (not marked and h[0] == "instruction")), len(text))
    reply = text[headers[response][2]:end].strip()
    if not instruction:
        raise BadFormat("empty instruction")
    if not reply:
        raise BadFormat("empty response")
    return instruction, reply


def render_shot(shot: FewShot) -> str:
    return f"### Instruction\n{shot.instruction}\n### Response\n{shot.response}\n{END_MARKER}"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head).rstrip() + " ..."


@lru_cache(maxsize=1)
def _template() -> Template:
    return Template(resources.files("data_engine.synth").joinpath(
        "prompts/craft_rewrite.txt").read_text(encoding="utf-8"))


def build_prompt(doc: Retrieved, pairs: list[FewShot], config: CraftConfig, seed: int) -> str:
    """The rewrite prompt: the nearest few-shot last (nearest the document), seeded others
    before it. The choice depends on the seed and the document only, not on run order."""
    others = [i for i in range(len(pairs)) if i != doc.nearest_fewshot]
    rng = random.Random(f"{seed}:{doc.doc_id}")
    shown = rng.sample(others, min(config.shots_in_prompt - 1, len(others)))
    shown.append(doc.nearest_fewshot)
    return _template().safe_substitute(
        examples="\n\n".join(render_shot(pairs[i]) for i in shown),
        document=_cut(doc.text.strip(), config.max_document_chars)).strip()


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def precheck(fewshots: list[dict[str, Any]], corpus_paths: list[str], config: CraftConfig,
             clean: CleanConfig) -> list[FewShot]:
    """What CRAFT can tell before a model loads: its settings, the few-shots (as pairs) and
    that each corpus path exists. Raises ConfigError or InputError."""
    problems = config.check() + clean.check()
    if problems:
        raise ConfigError(problems, "craft")
    pairs = fewshot_pairs(fewshots)
    for raw in corpus_paths:
        if not Path(raw).exists():
            raise InputError(raw, "no such file or folder", "craft.corpus")
    return pairs


def craft(fewshots: list[dict[str, Any]], corpus_paths: list[str], engine: Engine,
          config: CraftConfig, clean: CleanConfig, seed: int) -> list[dict[str, Any]]:
    """CRAFT end to end: one row per retrieved document, kept or with its `_reason`.

    ``fewshots`` are rows with `messages` (`load_fewshots`); the caller resolves
    `config.fewshots` and `config.corpus` into them and ``corpus_paths``."""
    pairs = precheck(fewshots, corpus_paths, config, clean)
    corpus = load_corpus(corpus_paths, config.text_column, config.id_column)
    docs = retrieve(pairs, corpus, config)
    if not docs:
        return []
    systems = {p.system for p in pairs}
    system = systems.pop() if len(systems) == 1 else None
    copied = {_norm(p.instruction) for p in pairs}
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_tokens=config.max_tokens, stop=(END_MARKER,), seed=seed)
    prompts = [[{"role": "user", "content": build_prompt(d, pairs, config, seed)}] for d in docs]
    generations = engine.generate(prompts, params)
    generator = generator_name(engine)
    rows = []
    for doc, gen in zip(docs, generations, strict=True):
        messages, reason, detail = sample_from(gen, copied, system)
        rows.append(make_row(messages, ORIGIN, doc.doc_id, generator, ORIGIN, reason, detail))
    return apply_clean(rows, clean)


def sample_from(gen: Generation, fewshot_instructions: set[str], system: str | None
                ) -> tuple[list[dict[str, str]], str | None, str | None]:
    """(messages, reason, detail) for one rewrite. A failed rewrite keeps the raw reply as
    an assistant turn, so the report shows what the model wrote."""
    raw = [{"role": "assistant", "content": gen.text}]
    if not gen.ok:
        return raw, "engine_error", gen.error
    if gen.finish_reason == "length":
        return raw, "craft_unfinished", f"no end after {gen.tokens} tokens"
    try:
        instruction, response = parse_sample(gen.text)
    except BadFormat as exc:
        return raw, "craft_bad_format", str(exc)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
    if _norm(instruction) in fewshot_instructions:
        return messages, "craft_copied_fewshot", "the instruction is a few-shot's"
    return messages, None, None
