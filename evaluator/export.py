"""`tunesmith export gguf RUN_DIR`: GGUF files of a run's merged model, each checked against
the form before it on the same prompts before anyone serves it.

The founding failure was a Qwen fine-tune tested only after GGUF Q4 conversion, so nobody
could tell whether training, the merge, the conversion or the quantization broke it. Here
each step is its own stage with its own checks, and the export fails at the first stage
that drifts, naming the form, the number, the tolerance and what to try:

1. `merged/` (bf16 HF) -> `model-f16.gguf` with llama.cpp's own converter
   (`convert_hf_to_gguf.py`, run as a subprocess). Checked against the merged HF model:
   - eos: the GGUF's `tokenizer.ggml.eos_token_id` is the merged model's end of turn (the
     first id of generation_config.json's eos_token_id, `<|im_end|>` for ChatML). The
     converter takes eos from tokenizer_config.json, so a merged folder whose tokenizer
     still says `<|endoftext|>` gives a GGUF that does not stop where the fine-tune does.
   - tokenization: llama.cpp's tokenizer (GGUF vocabulary, `special=True`) and the HF
     tokenizer give identical ids for test strings (Japanese, emoji, ChatML special tokens,
     code, whitespace) and for every scored conversation as rendered text.
   - chat prompt: the GGUF's chat template, rendered the way llama-cpp-python's server
     renders it, gives the same prompt text as the merged tokenizer's template.
   - logits: assistant-only PPL ratio (GGUF / HF), mean KL(HF || GGUF) and the same-top-token
     rate at assistant positions. The HF side is the evaluator's own scoring path
     (`evaluator.compare.load_form` + `scored_logits`, rows rendered by
     `evaluator.perplexity.encode_rows`); the GGUF side is llama.cpp itself
     (llama-cpp-python, `logits_all=True`), fed the same token ids: what users will run,
     not a dequantized copy in transformers. (`eval compare` through transformers' GGUF
     loader sees an F16 file as the merged weights themselves, KL exactly 0, and on
     SmolLM2's probes under-reports q8_0's drift: KL 0.0023 there, 0.0061 in llama.cpp,
     which also quantizes activations.)
2. `model-f16.gguf` -> `model-<type>.gguf` with llama.cpp's quantizer
   (`llama_model_quantize`, in a subprocess). Checked against the F16 GGUF, both scored by
   llama.cpp: PPL ratio, mean KL(F16 || quantized), same-top-token rate; and tensor by
   tensor: each quantized tensor, dequantized (gguf-py), is the F16 file's within its type's
   rounding (`TENSOR_ERROR`). The end-to-end bound of a 4-bit type must leave room for
   4-bit noise, which one broken tensor fits inside (a zeroed attention output of one
   layer in 30 scored PPL ratio 1.14, KL 0.13: a pass); its relative error is 1.0.

The converter comes from the registry: llama-cpp-python's sdist vendors the whole llama.cpp
tree of the version it compiles, including `convert_hf_to_gguf.py`, its `conversion/`
package and `gguf-py` (the wheel it builds keeps only the library). `ensure_converter`
downloads the sdist of the installed llama-cpp-python version once with pip and keeps these
parts in the cache (`<tunesmith cache>/llama.cpp/llama-cpp-python-<version>/`, 2 MB; the
cache is `$TUNESMITH_CACHE`, default ~/.cache/tunesmith), so the converter, the
quantizer and the runtime are one llama.cpp commit. `TUNESMITH_LLAMA_CPP_DIR` points at any
other llama.cpp checkout instead.

Every number lands in RUN_DIR/gguf/export.json, also when a check fails (status, error with
code, message and field). Tolerances, and the measurements they come from, are in
`TOLERANCES` below.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from evaluator.data import EvalError, EvalRow, read_rows, to_row

LLAMA_CPP_PACKAGE = "llama-cpp-python"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
CONVERTER_PARTS = (CONVERTER_SCRIPT, "conversion", "gguf-py", "LICENSE")
CONVERTER_ENV = "TUNESMITH_LLAMA_CPP_DIR"

# What the converter writes directly, and what llama.cpp's quantizer makes from the F16 file
# (llama_ftype values, llama.h). F16 is always made: it is the reference of every other form.
# q5_k_m is left out on purpose: on SmolLM2-135M it measured worse than q4_k_m (mean KL
# 0.10-0.15 vs 0.07-0.08), its 576-wide tensors falling back to q5_1.
REFERENCE = "f16"
QUANT_FTYPES = {"q8_0": 7, "q6_k": 18, "q4_k_m": 15}
TYPES = (REFERENCE, *QUANT_FTYPES)
DEFAULT_TYPES = ("f16", "q4_k_m")

# Rows scored per form; the longest rendered row (longer ones are cut: their first
# MAX_ROW_TOKENS tokens are scored); at most MAX_SCORED_TOKENS assistant tokens in all (two
# forms' log-probabilities over the whole vocabulary are held at once: 2,048 tokens of a
# 152k vocabulary are 1.2 GB each).
DEFAULT_ROWS = 16
MAX_ROW_TOKENS = 1024
MAX_SCORED_TOKENS = 2048
HF_BATCH_ROWS = 4
# The merged model is scored in float32 up to this many bytes of float32 weights (about 2B
# parameters), else in bfloat16, against the looser F16_VS_BF16 tolerance.
HF_FLOAT32_MAX_BYTES = 8 << 30


@dataclass(frozen=True)
class Tolerance:
    """How far a form may drift from the one before it on the scored assistant tokens."""

    max_ppl_ratio: float  # |log(PPL_b / PPL_a)| <= log(max_ppl_ratio), both directions
    max_mean_kl: float  # mean KL(a || b) in nats per token
    min_same_top: float  # share of positions where both put the same token on top


# Measured on SmolLM2-135M-Instruct (the bf16 default model: 30 layers, hidden 576, vocab
# 49152; 180 of its 272 tensors are 576 wide, so k-quants fall back to q5_0/q8_0 there),
# llama-cpp-python 0.3.36 on CPU, on four row sets (the 8 built-in probes, 164 assistant
# tokens, and three sets of 16 rows of the sample data, English instructions and Japanese
# titles, 877-928 tokens each). Each form against the one before it, worst of the four:
#
#   form      PPL ratio        mean KL          same top
#   f16       1.0000-1.0002    2.4e-6-3.1e-6    0.9989-1.0     (vs merged bf16, transformers)
#   q8_0      0.9975-0.9992    0.0052-0.0061    0.9418-0.9656  (vs f16, llama.cpp both)
#   q6_k      0.9934-1.0098    0.0124-0.0145    0.9200-0.9573
#   q4_k_m    1.0594-1.0854    0.0665-0.0775    0.8324-0.9146
#   -- past the q4_k_m tolerance, for contrast:
#   q3_k_m    1.1128-1.1831    0.1578-0.1942    0.7500-0.8537
#   q4_0      1.1700-1.5388    0.3248-0.4048    0.6716-0.7500
#   q2_k      1.2955-1.4715    0.4614-0.5444    0.6089-0.7256
#
# A small model is near the worst case for quantization, so each bound is about twice the
# worst healthy measurement of its type (a larger model drifts less and passes with more
# room), while forms a size class down (q3_k_m, q4_0, q2_k against the q4_k_m bound) or
# another model's weights fail. F16 is held tight: it must match its source within rounding.
TOLERANCES: dict[str, Tolerance] = {
    "f16": Tolerance(max_ppl_ratio=1.01, max_mean_kl=0.002, min_same_top=0.98),
    "q8_0": Tolerance(max_ppl_ratio=1.02, max_mean_kl=0.015, min_same_top=0.88),
    "q6_k": Tolerance(max_ppl_ratio=1.04, max_mean_kl=0.035, min_same_top=0.85),
    "q4_k_m": Tolerance(max_ppl_ratio=1.15, max_mean_kl=0.15, min_same_top=0.75),
}

# F16 against a merged model too large to score in float32 here, scored in bfloat16: on
# SmolLM2-135M (data rows, 877 tokens) bf16 compute alone measured PPL ratio 1.0011, mean
# KL 0.0014 and same top 0.965 against the F16 GGUF (float32 compute: 1.000004, 3e-6, 1.0).
F16_VS_BF16 = Tolerance(max_ppl_ratio=1.01, max_mean_kl=0.005, min_same_top=0.92)

# What to try when a quantized form drifts: the next larger type.
LARGER = {"q4_k_m": "q6_k", "q6_k": "q8_0"}

# The relative RMSE, |dequantized - F16| / |F16|, a quantized file's tensor may have against
# the F16 file's, by the tensor's ggml type. Measured on SmolLM2-135M's F16 export (sampled
# rows of every tensor; q8_0, q6_k and q4_k_m files): Q8_0 0.0055 median / 0.0065 max,
# Q6_K 0.018 / 0.018, Q5_0 (the k-quants' fallback for 576-wide rows) 0.044 / 0.051, Q4_K
# 0.019 / 0.020; tensors left in F32 (norms) equal to the bit. Bounds are 3-5x the worst
# measurement; a broken tensor is far past them (zeroed: 1.0, scaled by 0.5: 0.5, a norm
# scaled by 1.02: 0.02 against 0.001).
TENSOR_ERROR: dict[str, float] = {
    "F32": 1e-3, "F16": 1e-3, "BF16": 1e-2,  # unquantized: F16 rounding of F32 is 5e-4
    "Q8_0": 0.03, "Q6_K": 0.08, "Q5_0": 0.15, "Q5_1": 0.15, "Q5_K": 0.15,
    "Q4_0": 0.25, "Q4_1": 0.25, "Q4_K": 0.25}
TENSOR_ERROR_OTHER = 0.4  # types the export does not make (3- and 2-bit)
TENSOR_ROWS = 64  # rows sampled per tensor: a broken tensor is broken in every row

# Strings whose ids must be identical in both tokenizers: scripts, emoji, ChatML control
# tokens inside text, code and whitespace runs, digits; the founding failure's 」 included.
TOKENIZER_PROBES = (
    "Hello, world! How are you today?",
    "日本の首都は東京です。「東京」は大きな都市です」」」",
    "<|im_start|>user\nこんにちは<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>emoji: 👍🏽 🎉 🇯🇵 👨‍👩‍👧",
    "def add(a, b):\n\treturn a + b  # tabs\tand   spaces\n\n\n",
    "  leading and trailing spaces  ",
    "3.14159 1,000,000 2024-06-01 0x1F",
    "naïve café, Straße, Ελληνικά, русский, 中文, 한국어, العربية",
    '{"name": "Ana", "age": 31, "tags": ["a", "b"]}',
)

# Conversations scored when the run has no test data: short, varied, with the languages and
# formats a chat fine-tune meets (Japanese, code, JSON, multi-turn, a system prompt).
PROBE_CONVERSATIONS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "What is the capital of France?"),
     ("assistant", "The capital of France is Paris.")),
    (("user", "日本の首都はどこですか？"),
     ("assistant", "日本の首都は東京です。東京は日本で最も人口の多い都市です。")),
    (("user", "Write a Python function that adds two numbers."),
     ("assistant", "```python\ndef add(a, b):\n    return a + b\n```")),
    (("user", "Give me a JSON object with a name and an age."),
     ("assistant", '{"name": "Ana", "age": 31}')),
    (("system", "You are a concise assistant."), ("user", "Name three colours."),
     ("assistant", "Red, green and blue.")),
    (("user", "What is 12 times 12?"), ("assistant", "12 times 12 is 144."),
     ("user", "And divided by 4?"), ("assistant", "144 divided by 4 is 36.")),
    (("user", "Translate 'good morning' into Japanese."),
     ("assistant", "「おはようございます」です。")),
    (("user", "Summarise: The cat sat on the mat all afternoon, ignoring the dog."),
     ("assistant", "A cat lounged on a mat all afternoon and ignored a dog.")),
)


class ExportError(Exception):
    """An export that failed: `code`, `message` and the offending `field` (as in
    export.json). Bad input (no merged model, an unknown type) has `bad_input` set."""

    exit_code = 4

    def __init__(self, code: str, message: str, field: str, bad_input: bool = False):
        self.code, self.message, self.field, self.bad_input = code, message, field, bad_input
        super().__init__(f"{field}: {code}: {message}")


# ---------------------------------------------------------------------------------------------
# the converter and the quantizer


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version; ExportError when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LLAMA_CPP_PACKAGE)
    except PackageNotFoundError:
        raise ExportError("llama_cpp_missing", "llama-cpp-python is not installed: GGUF "
                          "export converts, quantizes and scores with llama.cpp; run "
                          "`pip install 'llama-cpp-python[server]==0.3.36'` (it compiles "
                          "llama.cpp, ~8 min on 2 cores)", "llama_cpp", bad_input=True
                          ) from None


def _cache_root() -> Path:
    from tunesmith.models import cache_root

    return cache_root()


def converter_dir(cache: Path | None = None) -> Path:
    """Where `ensure_converter` keeps llama.cpp's converter for the installed version."""
    return (cache or _cache_root()) / "llama.cpp" / f"llama-cpp-python-{llama_cpp_version()}"


def ensure_converter(log: Callable[[str], None] = print, cache: Path | None = None) -> Path:
    """The folder holding llama.cpp's `convert_hf_to_gguf.py` (with `conversion/` and
    `gguf-py/` beside it): `$TUNESMITH_LLAMA_CPP_DIR` if set, else the cached copy from the
    installed llama-cpp-python's sdist, fetched with pip on first use."""
    given = os.environ.get(CONVERTER_ENV)
    if given:
        folder = Path(given).expanduser()
        if not (folder / CONVERTER_SCRIPT).is_file():
            raise ExportError("converter_not_found", f"{CONVERTER_ENV}={given} has no "
                              f"{CONVERTER_SCRIPT} (point it at a llama.cpp checkout)",
                              "converter", bad_input=True)
        return folder
    target = converter_dir(cache)
    if (target / CONVERTER_SCRIPT).is_file():
        return target
    log(f"export: fetching llama.cpp's converter from the {LLAMA_CPP_PACKAGE}=="
        f"{llama_cpp_version()} sdist")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunesmith-llama-cpp-", dir=target.parent) as tmp:
        archive = download_sdist(Path(tmp))
        staging = Path(tmp) / "llama.cpp"
        _extract_converter(archive, staging)
        if (target / CONVERTER_SCRIPT).is_file():  # another process won the race
            return target
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target


def download_sdist(folder: Path) -> Path:
    """The installed llama-cpp-python version's sdist (the llama.cpp tree it compiles,
    under vendor/llama.cpp), downloaded with pip into ``folder``; its path."""
    version = llama_cpp_version()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "-q", "-d", str(folder),
         f"{LLAMA_CPP_PACKAGE}=={version}"], capture_output=True, text=True)
    archives = sorted(Path(folder).glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise ExportError("converter_not_found", f"could not download the "
                          f"{LLAMA_CPP_PACKAGE}=={version} sdist that carries llama.cpp's "
                          f"converter ({(done.stderr or done.stdout).strip()[-400:]}); "
                          f"offline, set {CONVERTER_ENV} to a llama.cpp checkout",
                          "converter")
    return archives[0]


def _extract_converter(archive: Path, out: Path) -> None:
    """Copies CONVERTER_PARTS out of the sdist's vendor/llama.cpp into `out`."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp"):
                continue
            if parts[3] in CONVERTER_PARTS and (member.isfile() or member.isdir()):
                member.name = str(Path(*parts[3:]))
                members.append(member)
        if not any(m.name == CONVERTER_SCRIPT for m in members):
            raise ExportError("converter_not_found", f"{archive.name} has no "
                              f"vendor/llama.cpp/{CONVERTER_SCRIPT}", "converter")
        try:
            tar.extractall(out, members=members, filter="data")
        except TypeError:  # Python before 3.11.4: no filters (the members are checked above)
            tar.extractall(out, members=members)


def convert(merged: Path, out_file: Path, converter: Path, log_path: Path,
            outtype: str = REFERENCE) -> float:
    """llama.cpp's converter on `merged` -> `out_file`; returns the seconds it took."""
    command = [sys.executable, str(converter / CONVERTER_SCRIPT), str(merged),
               "--outtype", outtype, "--outfile", str(out_file)]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0 or not out_file.is_file():
        raise ExportError("convert_failed", f"llama.cpp's converter failed on {merged} (exit "
                          f"{done.returncode}); last lines of {log_path}:\n"
                          f"{_tail(log_path)}", "merged")
    return time.monotonic() - start


_QUANTIZE = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),
                                        ctypes.byref(params)))
"""


def quantize(source: Path, out_file: Path, qtype: str, log_path: Path,
             threads: int | None = None) -> dict[str, Any]:
    """llama.cpp's quantizer (`llama_model_quantize`, the code behind `llama-quantize`) in
    a subprocess, its log kept; returns seconds and how many tensors fell back to another
    type (k-quants need rows that are a multiple of 256)."""
    threads = threads or max(1, (os.cpu_count() or 1))
    command = [sys.executable, "-c", _QUANTIZE, str(source), str(out_file),
               str(QUANT_FTYPES[qtype]), str(threads)]
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not out_file.is_file():
        raise ExportError("quantize_failed", f"llama.cpp's quantizer failed making {qtype} "
                          f"(exit {done.returncode}); last lines of {log_path}:\n"
                          f"{_tail(log_path)}", "types")
    text = log_path.read_text(encoding="utf-8", errors="replace")
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", text)
    return {"seconds": round(time.monotonic() - start, 2),
            "fallback_tensors": int(fallback.group(1)) if fallback else 0,
            "tensors": int(fallback.group(2)) if fallback else None}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# llama.cpp as a scorer


class LlamaCppLogits:
    """A GGUF in llama.cpp that answers like a causal LM for the evaluator's scoring code:
    `model(input_ids=..., attention_mask=...).logits`, row by row, each from an empty KV
    cache (the ids are used as given: no BOS is added)."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None):
        from llama_cpp import Llama

        self.path = path
        threads = threads or os.cpu_count() or 1
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx,
                         n_ubatch=min(n_ctx, 512), logits_all=True, verbose=False,
                         n_threads=threads, n_threads_batch=threads)

    def __call__(self, input_ids, attention_mask):
        import numpy as np
        import torch

        rows = []
        for ids, attention in zip(input_ids.tolist(), attention_mask.tolist()):
            n = int(sum(attention))
            self.llm.reset()
            self.llm.eval(ids[:n])
            logits = torch.from_numpy(np.array(self.llm.scores[:n], dtype=np.float32))
            if n < len(ids):
                logits = torch.cat([logits, logits.new_zeros(len(ids) - n, logits.shape[1])])
            rows.append(logits)
        return _Output(torch.stack(rows))

    def close(self) -> None:
        self.llm.close()


@dataclass
class _Output:
    logits: Any


def gguf_vocab(path: Path):
    """llama.cpp's view of a GGUF's vocabulary and metadata (no weights loaded)."""
    from llama_cpp import Llama

    with _quiet_stderr():  # a vocab-only load warns that its context exceeds 0 trained tokens
        return Llama(model_path=str(path), vocab_only=True, verbose=False)


@contextmanager
def _quiet_stderr():
    """Silences what C code writes to file descriptor 2 for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def agreement(first: Sequence[tuple[Any, Any]], second: Iterable[tuple[Any, Any]]
              ) -> dict[str, Any]:
    """`evaluator.compare.agreement`, failing as an export."""
    from evaluator.compare import agreement as compare_agreement
    from evaluator.data import EvalError

    try:
        return compare_agreement(first, second)
    except EvalError as exc:
        raise ExportError(exc.code, exc.message, exc.field) from None


def _scored(model, encoded, batch_rows: int) -> list[tuple[Any, Any]]:
    from evaluator.compare import scored_logits

    return list(scored_logits(model, encoded, batch_rows))


# ---------------------------------------------------------------------------------------------
# checks


def _check(name: str, ok: bool, **numbers: Any) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), **numbers}


def tensor_check(reference: Path, quantized: Path, rows: int = TENSOR_ROWS) -> dict[str, Any]:
    """Every tensor of ``quantized`` against the same tensor of ``reference`` (the F16 file):
    ``rows`` evenly spaced rows of each, dequantized with gguf-py, relative RMSE within
    ``TENSOR_ERROR`` of its type. A missing tensor or another shape fails too."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    def sample(tensor, at):
        data = tensor.data if tensor.data.ndim == 1 else tensor.data[at]
        return dequantize(data, tensor.tensor_type).astype(np.float32).ravel()

    source = {t.name: t for t in GGUFReader(str(reference)).tensors}
    failed, worst, checked = [], None, 0
    for tensor in GGUFReader(str(quantized)).tensors:
        kind = tensor.tensor_type.name
        limit = TENSOR_ERROR.get(kind, TENSOR_ERROR_OTHER)
        ref = source.get(tensor.name)
        if ref is None or list(ref.shape) != list(tensor.shape):
            failed.append({"tensor": tensor.name, "type": kind, "error": None, "max": limit,
                           "problem": "not in the F16 file" if ref is None else
                           f"shape {list(tensor.shape)}, F16 {list(ref.shape)}"})
            continue
        at = None
        if tensor.data.ndim > 1:
            n = tensor.data.shape[0]
            at = np.unique(np.linspace(0, n - 1, min(rows, n)).astype(np.int64))
        got, want = sample(tensor, at), sample(ref, at)
        error = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))
        checked += 1
        entry = {"tensor": tensor.name, "type": kind, "error": round(error, 6), "max": limit}
        if worst is None or error / limit > worst["error"] / worst["max"]:
            worst = entry
        if not error <= limit:  # NaN fails
            failed.append(entry)
    return _check("tensors", not failed, tensors=checked, failed=len(failed),
                  failures=failed[:10], worst=worst)


def drift_checks(stats: dict[str, Any], tolerance: Tolerance) -> list[dict[str, Any]]:
    """The three drift checks of one comparison against its tolerance."""
    ratio = stats["ppl_ratio"]
    return [
        _check("ppl_ratio", abs(math.log(ratio)) <= math.log(tolerance.max_ppl_ratio),
               value=round(ratio, 5), ppl_reference=round(stats["ppl_a"], 4),
               ppl=round(stats["ppl_b"], 4), max=tolerance.max_ppl_ratio,
               min=round(1 / tolerance.max_ppl_ratio, 5)),
        _check("mean_kl", stats["mean_kl"] <= tolerance.max_mean_kl,
               value=round(stats["mean_kl"], 6), max=tolerance.max_mean_kl),
        _check("same_top_rate", stats["same_top_rate"] >= tolerance.min_same_top,
               value=round(stats["same_top_rate"], 5), min=tolerance.min_same_top),
    ]


def eos_check(gguf_meta: dict[str, str], token_text: Callable[[int], str],
              is_eog: Callable[[int], bool], merged: Path, hf_tokenizer) -> dict[str, Any]:
    """The GGUF's eos id against the merged model's end of turn (generation_config.json's
    first eos id, else config.json's, else the tokenizer's). Recorded beside it: whether
    llama.cpp itself ends generation on that token (it also stops on tokens it recognises
    by name, such as <|im_end|>, which hides a wrong eos in llama.cpp but not in runtimes
    that go by the declared eos)."""
    expected, source = _merged_eos(merged, hf_tokenizer)
    raw = gguf_meta.get("tokenizer.ggml.eos_token_id")
    got = int(raw) if raw is not None else None
    return _check("eos", got is not None and got == expected,
                  gguf={"id": got, "token": token_text(got) if got is not None else None},
                  merged={"id": expected, "token": hf_tokenizer.convert_ids_to_tokens(expected)
                          if expected is not None else None, "from": source},
                  tokenizer_eos=hf_tokenizer.eos_token,
                  llama_cpp_end_of_generation=is_eog(expected) if expected is not None
                  else None)


def _merged_eos(merged: Path, tokenizer) -> tuple[int | None, str]:
    for name in ("generation_config.json", "config.json"):
        path = merged / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if isinstance(value, list) and value:
                return int(value[0]), f"{name} (first of {value})"
            if isinstance(value, int):
                return value, name
    return tokenizer.eos_token_id, "tokenizer_config.json"


def tokenization_check(hf_tokenizer, llama_vocab, texts: Sequence[str]) -> dict[str, Any]:
    """Ids of each text from the HF tokenizer and from llama.cpp's (special tokens parsed,
    no BOS added) must be identical."""
    mismatches = []
    for text in texts:
        ours = hf_tokenizer.encode(text, add_special_tokens=False)
        theirs = llama_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if list(ours) != list(theirs):
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                      min(len(ours), len(theirs)))
            mismatches.append({"text": text[:120], "hf": ours[max(0, at - 2):at + 6],
                               "gguf": list(theirs[max(0, at - 2):at + 6]), "at": at,
                               "hf_len": len(ours), "gguf_len": len(theirs)})
    return _check("tokenization", not mismatches, strings=len(texts),
                  mismatches=mismatches[:5], mismatched=len(mismatches))


def chat_prompt_check(hf_tokenizer, llama_vocab, prompts: Sequence[list[dict[str, Any]]],
                      tools: Sequence[list[dict[str, Any]] | None] | None = None
                      ) -> dict[str, Any]:
    """The prompt llama-cpp-python's server renders from the GGUF's chat template (its
    Jinja2ChatFormatter, with the GGUF's eos/bos) against the merged tokenizer's; ``tools``:
    per prompt, the definitions its request offers (None: none), rendered on both sides."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama_vocab.metadata.get("tokenizer.chat_template")
    if not template:
        return _check("chat_prompt", False, reason="the GGUF has no tokenizer.chat_template: "
                      "llama.cpp servers would fall back to a generic chat format")
    mismatches = []
    eos_id, bos_id = llama_vocab.token_eos(), llama_vocab.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template, eos_token=_piece(llama_vocab, eos_id),
        bos_token=_piece(llama_vocab, bos_id), stop_token_ids=[eos_id])
    for messages, offered in zip(prompts, tools or [None] * len(prompts)):
        ours = hf_tokenizer.apply_chat_template(messages, tools=offered, tokenize=False,
                                                add_generation_prompt=True)
        theirs = formatter(messages=messages, tools=offered).prompt
        if ours != theirs:
            mismatches.append({"hf": ours[-200:], "gguf": theirs[-200:]})
    return _check("chat_prompt", not mismatches, prompts=len(prompts),
                  mismatches=mismatches[:3], mismatched=len(mismatches))


def _is_eog(llama_vocab, token: int) -> bool:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama_vocab.model)
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def _piece(llama_vocab, token: int) -> str:
    if token is None or token < 0:
        return ""
    return llama_vocab.detokenize([token], special=True).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# rows


BUILT_IN_PROBES = "built-in probes"


def probe_rows() -> list[EvalRow]:
    return [to_row({"id": f"probe-{i}", "source": "probe",
                    "messages": [{"role": r, "content": c} for r, c in turns]}, f"probe:{i}")
            for i, turns in enumerate(PROBE_CONVERSATIONS)]


def export_rows(run_dir: Path, data_dir: Path | None, limit: int
                ) -> tuple[list[EvalRow], str]:
    """(rows, where they came from): DATA_DIR's test split (else validation) when given,
    else the run's dataset (run.json spec.dataset), else the built-in probes."""
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    else:
        run_json = run_dir / "run.json"
        if run_json.is_file():
            spec = json.loads(run_json.read_text(encoding="utf-8")).get("spec") or {}
            if spec.get("dataset"):
                dataset = Path(spec["dataset"])
                candidates.append(dataset if dataset.is_absolute() or dataset.is_dir()
                                  else run_dir / dataset)
    for folder in candidates:
        for split in ("test", "validation"):
            try:
                rows = [r for r in read_rows(folder, split) if r.answered]
            except EvalError:
                continue
            if rows:
                return rows[:limit], f"{folder}/{split}.jsonl"
    if data_dir is not None:
        raise ExportError("data_not_found", f"{data_dir} has no test or validation rows "
                          "ending with an assistant turn", "data", bad_input=True)
    return probe_rows()[:limit], BUILT_IN_PROBES


def _probes_it_renders(tokenizer, rows: list[EvalRow]) -> list[EvalRow]:
    """The built-in probes the model's template takes: Gemma's, for one, refuses the probe
    with a system prompt (the run's own rows, when there are any, must all render)."""
    from trainer_service.recipe.chat_format import ChatFormatError, encode_row, resolve_template

    try:
        template = resolve_template(tokenizer, "auto")  # once, not once per probe
    except ChatFormatError:
        return rows  # the encoding says why
    kept = []
    for row in rows:
        try:
            encode_row(tokenizer, template, row.messages, tools=row.tools)
        except ChatFormatError:
            continue
        kept.append(row)
    return kept or rows  # none renders: let the encoding say why


# ---------------------------------------------------------------------------------------------
# the export


def check_types(types: Sequence[str]) -> list[str]:
    """The forms to make, F16 first (every quantized form is checked against it)."""
    wanted = [t.strip().lower() for t in types if t and t.strip()]
    unknown = [t for t in wanted if t not in TYPES]
    if unknown:
        raise ExportError("bad_type", f"unknown GGUF type(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(TYPES)}", "types", bad_input=True)
    return [REFERENCE] + [t for t in dict.fromkeys(wanted) if t != REFERENCE]


def export_gguf(run_dir: Path, types: Sequence[str] = DEFAULT_TYPES,
                data_dir: Path | None = None, out_dir: Path | None = None,
                rows: int = DEFAULT_ROWS, log: Callable[[str], None] = print,
                tolerances: dict[str, Tolerance] | None = None,
                threads: int | None = None, require_verified: bool = True,
                ) -> dict[str, Any]:
    """Converts RUN_DIR/merged to GGUF (`model-f16.gguf`, then each quantized type from
    it) into `out_dir` (default RUN_DIR/gguf), checks each form against the one before it,
    writes export.json there and returns its content. Raises ExportError (after writing
    export.json) at the first form that fails a check; the files made so far are kept.

    A run whose run.json says it did not succeed (its merged model failed verification:
    it does not stop, loops, or lost the adapter) is refused, `run_not_verified`, unless
    ``require_verified`` is False (`--force`): each form is checked against the one before
    it, so a broken merged model makes a Q4 file that passes every check, the founding
    failure. The recipe's own export, which runs after its verification, passes False."""
    run_dir = Path(run_dir).resolve()
    merged = run_dir / "merged" if (run_dir / "merged").is_dir() else run_dir
    if not (merged / "config.json").is_file():
        raise ExportError("merged_not_found", f"{run_dir} has no merged/ model folder (a "
                          "finished `tunesmith train run` writes RUN_DIR/merged)", "run_dir",
                          bad_input=True)
    verified = run_status(run_dir)
    if require_verified and verified["status"] not in ("succeeded", None):
        raise ExportError(
            "run_not_verified", f"{run_dir}/run.json says the run {verified['status']}"
            + (f" ({verified['code']}: {verified['message']})" if verified["code"] else "")
            + ": its merged model did not pass verification, and a GGUF of it would pass "
            "every export check, each form being checked against the one before it. Fix "
            "the run, or export anyway with --force", "run_dir", bad_input=True)
    forms = check_types(types)
    limits = {**TOLERANCES, **(tolerances or {})}
    # the inputs first: a bad --data or a missing llama.cpp leaves an earlier export whole
    eval_rows = export_rows(run_dir, data_dir, rows)
    converter = ensure_converter(log)
    out = Path(out_dir).resolve() if out_dir else run_dir / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    # An export replaces the folder's forms: none of an earlier one is left behind, of the
    # types asked for now or not (an unchecked q4_k_m of earlier weights sat beside an
    # export.json that no longer listed it).
    for stale in [*out.glob("model-*.gguf"), *out.glob("quantize-*.log"), out / "convert.log"]:
        stale.unlink(missing_ok=True)
    state: dict[str, Any] = {"status": "running", "run_dir": str(run_dir),
                             "run_status": verified["status"],
                             "merged": str(merged), "out_dir": str(out), "types": forms,
                             "stages": [],
                             "tolerances": {t: asdict(limits[t]) for t in forms}}
    try:
        _export(merged, out, forms, limits, eval_rows, converter, state, log, threads)
    except ExportError as exc:
        state.update(status="failed", error={"code": exc.code, "message": exc.message,
                                             "field": exc.field})
        _write(out / "export.json", state)
        raise
    except BaseException as exc:  # a crash (or Ctrl+C) still leaves a readable record
        state.update(status="failed", error={"code": "export_crashed", "field": "export",
                                             "message": f"{type(exc).__name__}: {exc}"})
        _write(out / "export.json", state)
        raise
    state["status"] = "succeeded"
    _write(out / "export.json", state)
    return state


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str),
                    encoding="utf-8")


def _export(merged: Path, out: Path, forms: list[str], limits: dict[str, Tolerance],
            eval_rows: tuple[list[EvalRow], str], converter: Path, state: dict[str, Any],
            log: Callable[[str], None], threads: int | None) -> None:
    from transformers import AutoTokenizer

    from evaluator.compare import load_form
    from evaluator.perplexity import encode_rows

    state["llama_cpp_python"] = llama_cpp_version()
    state["converter"] = str(converter / CONVERTER_SCRIPT)
    state["scored_by"] = {"merged": "transformers (float32, evaluator.compare.load_form)",
                          "gguf": f"llama.cpp (llama-cpp-python {state['llama_cpp_python']},"
                                  " logits_all)"}
    eval_rows, source = eval_rows
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    if source == BUILT_IN_PROBES:
        eval_rows = _probes_it_renders(tokenizer, eval_rows)
    try:
        encoded = encode_rows(tokenizer, eval_rows)
    except EvalError as exc:
        raise ExportError(exc.code, exc.message, "tokenizer") from None
    encoded = _within_budget(encoded)
    n_ctx = max(len(e.ids) for e in encoded) + 8
    state["rows"] = {"source": source, "count": len(encoded),
                     "scored_tokens": sum(e.scored for e in encoded)}
    _write(out / "export.json", state)

    # stage 1: merged (HF) -> F16 GGUF
    f16 = out / f"model-{REFERENCE}.gguf"
    log(f"export: converting {merged} -> {f16.name} with llama.cpp's converter")
    stage: dict[str, Any] = {"form": REFERENCE, "file": str(f16), "against": "merged",
                             "log": str(out / "convert.log")}
    state["stages"].append(stage)
    stage["convert_seconds"] = round(convert(merged, f16, converter, out / "convert.log"), 2)
    stage["bytes"] = f16.stat().st_size
    vocab = gguf_vocab(f16)
    try:
        texts = list(TOKENIZER_PROBES) + _rendered(tokenizer, eval_rows)
        asked = [r for r in eval_rows if r.prompt]
        checks = [eos_check(vocab.metadata, lambda i: _piece(vocab, i),
                            lambda i: _is_eog(vocab, i), merged, tokenizer),
                  tokenization_check(tokenizer, vocab, texts),
                  chat_prompt_check(tokenizer, vocab, [r.prompt for r in asked],
                                    [r.tools for r in asked])]
    finally:
        vocab.close()
    log("export: scoring the merged model (transformers) and the F16 GGUF (llama.cpp)")
    start = time.monotonic()
    dtype = hf_dtype(merged)
    stage["merged_dtype"] = dtype
    model, _ = load_form(str(merged), dtype=dtype)
    reference = _scored(model, encoded, HF_BATCH_ROWS)
    del model
    scorer = LlamaCppLogits(f16, n_ctx, threads)
    try:
        f16_scores = _scored(scorer, encoded, 1)
    finally:
        scorer.close()
    stats = agreement(reference, f16_scores)
    del reference
    stage["score_seconds"] = round(time.monotonic() - start, 2)
    stage["scores"] = _rounded(stats)
    limit_f16 = limits[REFERENCE] if dtype == "float32" else F16_VS_BF16
    stage["tolerance"] = asdict(limit_f16)
    checks += drift_checks(stats, limit_f16)
    stage["checks"] = checks
    _finish(stage, REFERENCE, "the merged model", limit_f16, stats, out, state, log)

    # stage 2: F16 -> each quantized form
    for qtype in forms[1:]:
        target = out / f"model-{qtype}.gguf"
        log(f"export: quantizing {f16.name} -> {target.name} with llama.cpp's quantizer")
        stage = {"form": qtype, "file": str(target), "against": REFERENCE,
                 "log": str(out / f"quantize-{qtype}.log")}
        state["stages"].append(stage)
        stage.update(quantize(f16, target, qtype, out / f"quantize-{qtype}.log", threads))
        stage["bytes"] = target.stat().st_size
        start = time.monotonic()
        scorer = LlamaCppLogits(target, n_ctx, threads)
        try:
            stats = agreement(f16_scores, _scored(scorer, encoded, 1))
        finally:
            scorer.close()
        stage["score_seconds"] = round(time.monotonic() - start, 2)
        stage["scores"] = _rounded(stats)
        stage["tolerance"] = asdict(limits[qtype])
        stage["checks"] = drift_checks(stats, limits[qtype]) + [tensor_check(f16, target)]
        _finish(stage, qtype, "the F16 GGUF", limits[qtype], stats, out, state, log)


def run_status(run_dir: Path) -> dict[str, Any]:
    """The run's status, error code and message from RUN_DIR/run.json (status None without
    one: a merged folder made elsewhere)."""
    try:
        record = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": None, "code": None, "message": None}
    error = record.get("error") or {}
    return {"status": record.get("status"), "code": error.get("code"),
            "message": error.get("message")}


def hf_dtype(merged: Path) -> str:
    """float32 for the merged model's scoring unless its float32 weights would pass
    HF_FLOAT32_MAX_BYTES (safetensors hold 16-bit weights: twice their size)."""
    size = sum(f.stat().st_size for f in merged.glob("*.safetensors"))
    return "float32" if 2 * size <= HF_FLOAT32_MAX_BYTES else "bfloat16"


def _within_budget(encoded: Sequence[Any]) -> list[Any]:
    """Rows cut to MAX_ROW_TOKENS, then taken in order while they add assistant tokens
    within MAX_SCORED_TOKENS (at least one row)."""
    kept, total = [], 0
    for e in encoded:
        e = replace(e, ids=e.ids[:MAX_ROW_TOKENS], mask=e.mask[:MAX_ROW_TOKENS])
        if kept and total + e.scored > MAX_SCORED_TOKENS:
            break
        kept.append(e)
        total += e.scored
    return kept


def _rendered(tokenizer, rows: Sequence[EvalRow]) -> list[str]:
    """Each scored conversation as the text a server would tokenize."""
    from trainer_service.recipe.chat_format import normalize_messages

    texts = []
    for row in rows:
        try:
            texts.append(tokenizer.apply_chat_template(normalize_messages(row.messages),
                                                       tools=row.tools, tokenize=False))
        except Exception:  # noqa: BLE001 - a template that cannot render is caught elsewhere
            continue
    return texts


def _rounded(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()}


def _finish(stage: dict[str, Any], form: str, against: str, tolerance: Tolerance,
            stats: dict[str, Any], out: Path, state: dict[str, Any],
            log: Callable[[str], None]) -> None:
    failed = [c for c in stage["checks"] if not c["ok"]]
    stage["ok"] = not failed
    _write(out / "export.json", state)
    for check in stage["checks"]:
        shown = check.get("value")
        if check["name"] == "tensors":
            worst = check["worst"] or {}
            shown = (f"{check['failed']} past their type's bound" if check["failed"] else
                     f"{check['tensors']} within bounds; closest {worst.get('tensor')} "
                     f"{worst.get('error')} of {worst.get('max')}")
        log(f"export: {form} vs {against}: {check['name']} "
            f"{'ok' if check['ok'] else 'FAILED'}" + (f" ({shown})" if shown is not None
                                                      else ""))
    if failed:
        first = failed[0]
        code = {"eos": "eos_mismatch", "tokenization": "tokenization_mismatch",
                "chat_prompt": "chat_template_mismatch",
                "tensors": "tensor_mismatch"}.get(first["name"], f"{form}_drift")
        raise ExportError(code, _explain(form, against, failed, tolerance, stats, stage, out),
                          "eos_token" if first["name"] == "eos" else
                          "tokenizer" if first["name"] in ("tokenization", "chat_prompt")
                          else "types")


def _explain(form: str, against: str, failed: list[dict[str, Any]], tolerance: Tolerance,
             stats: dict[str, Any], stage: dict[str, Any], out: Path) -> str:
    """One sentence per failed check, then what to try."""
    file = Path(stage["file"]).name
    lines = []
    for check in failed:
        name = check["name"]
        if name == "eos":
            g, m = check["gguf"], check["merged"]
            lines.append(
                f"{file} ends a sequence with {g['token']!r} (id {g['id']}), but the merged "
                f"model ends its turns with {m['token']!r} (id {m['id']}, {m['from']}): "
                "a runtime that stops on the GGUF's declared eos runs past the end of every "
                "reply (the founding failure; llama.cpp itself "
                + ("also stops on it by name, which hides the bug there" if
                   check.get("llama_cpp_end_of_generation") else "does not stop on it either")
                + "). The converter takes eos from "
                "merged/tokenizer_config.json (eos_token, now "
                f"{check['tokenizer_eos']!r}); set it to {m['token']!r} there, or re-merge "
                "with a tokenizer whose eos is the end-of-turn token, and export again.")
        elif name == "tokenization":
            bad = check["mismatches"][0] if check["mismatches"] else {}
            lines.append(
                f"llama.cpp tokenizes {check['mismatched']} of {check['strings']} test strings "
                f"differently from the merged tokenizer, e.g. {bad.get('text', '')!r} at token "
                f"{bad.get('at')}: HF {bad.get('hf')} vs GGUF {bad.get('gguf')}. The converter "
                "may not know this tokenizer's pre-tokenizer (see convert.log for "
                "'chkhsh'); a model served from this file reads prompts differently from "
                "the one that was trained.")
        elif name == "chat_prompt":
            lines.append(
                "the GGUF's chat template renders prompts differently from the merged "
                f"tokenizer's ({check.get('reason') or check.get('mismatched')} of "
                f"{check.get('prompts', '?')} prompts differ); servers would send the model "
                "a format it was not trained on.")
        elif name == "tensors":
            shown = ", ".join(
                f"{f['tensor']} ({f['type']}: " + (f"relative error {f['error']:.3g} > "
                                                   f"{f['max']}" if f["error"] is not None
                                                   else f["problem"]) + ")"
                for f in check["failures"][:3])
            lines.append(
                f"{check['failed']} tensor(s) of {file} are not the F16 file's within their "
                f"type's rounding: {shown}. A quantized tensor this far from its source is "
                "broken, not rounded (a zeroed or rescaled tensor): quantize again from an "
                "intact F16 file; if it repeats, suspect the quantizer.")
        elif name == "ppl_ratio":
            lines.append(
                f"{form} drifted from {against}: PPL ratio {check['value']:.4f} (PPL "
                f"{check['ppl_reference']:.3f} -> {check['ppl']:.3f}) is outside the "
                f"tolerance {check['min']:.4f}..{check['max']:.4f}.")
        elif name == "mean_kl":
            lines.append(f"{form} drifted from {against}: mean KL {check['value']:.5f} nats/token "
                         f"is above the tolerance {check['max']}.")
        elif name == "same_top_rate":
            lines.append(f"{form} drifted from {against}: the top token agrees at "
                         f"{check['value']:.1%} of assistant positions, below the tolerance "
                         f"{check['min']:.0%}.")
    drift = any(c["name"] in ("ppl_ratio", "mean_kl", "same_top_rate") for c in failed)
    if drift:
        if form == REFERENCE:
            lines.append("An F16 file should match its source within rounding: suspect the "
                         "converter (its llama.cpp version may not support this architecture "
                         "faithfully) or weights out of float16 range (bf16 values above "
                         "65504).")
        elif LARGER.get(form):
            lines.append(f"Try a larger type (--types {REFERENCE},{LARGER[form]}); small models "
                         "lose more to quantization than large ones.")
        else:
            lines.append(f"{form} is the largest quantized type: serve the F16 file, or "
                         "score more rows (--data) if this is a small sample.")
    if drift:
        lines.append(f"Measured on {stats['tokens']} assistant tokens.")
    lines.append(f"Every check is in {out / 'export.json'}; the file is kept at "
                 f"{stage['file']} for inspection.")
    return " ".join(lines)
