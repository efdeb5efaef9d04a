"""Character n-gram hashing, MinHash signatures (rensa) and LSH band keys, over whole batches.

Everything here is vectorised over a batch: n-gram hashes come from NumPy over the batch's
concatenated code points, signatures from rensa's bulk R-MinHash, band keys from NumPy.

N-grams are padded: each text is framed by n-1 pad characters on both sides, so a text of
any length (even shorter than n) has n-grams, and its first and last characters weigh as
much as the middle ones. A text's n-grams depend on nothing but the text.
"""

from __future__ import annotations

import array

import numpy as np

_PAD = "\x00"
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
# Hashes per block in `ngram_hashes` (8 bytes each: a block and its scratch fit in L2).
_BLOCK = 1 << 15


def ngram_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the padded character n-grams of every text, flat, with row offsets.

    Row i's hashes are ``hashes[offsets[i]:offsets[i + 1]]`` (len(text) + n - 1 of them,
    repeats included).
    """
    pad = _PAD * (n - 1)
    # Framing every text as pad + text shares each pad run between neighbours; a window
    # starting in a text's leading pad ends within that text or its trailing pad.
    inner = np.frombuffer(pad.join(texts).encode("utf-32-le"), dtype=np.uint32)
    cps = np.zeros(len(inner) + 2 * (n - 1), dtype=np.uint32)
    cps[n - 1:n - 1 + len(inner)] = inner
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + (n - 1)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Windows of row i start at its leading pad: position sum(len_j + n - 1 for j < i), which
    # is offsets[i]; the windows between rows are exactly the next row's leading-pad windows.
    total = int(offsets[-1])
    hashes = np.empty(total, dtype=np.uint64)
    # A block at a time, so that the ~17 passes over it stay in cache.
    block = np.empty(min(total, _BLOCK) + n - 1, dtype=np.uint64)
    for lo in range(0, total, _BLOCK):
        width = min(_BLOCK, total - lo)
        c = block[:width + n - 1]
        c[:] = cps[lo:lo + width + n - 1]
        h = hashes[lo:lo + width]
        np.multiply(c[:width], _FNV_PRIME, out=h)  # FNV-1a from 0: (0 ^ c) * prime
        for k in range(1, n):
            h ^= c[k:k + width]
            h *= _FNV_PRIME
        shifted = c[:width]  # the code points are used up: reuse their memory
        np.right_shift(h, np.uint64(31), out=shifted)
        h ^= shifted
        h *= _MIX_1
        np.right_shift(h, np.uint64(29), out=shifted)
        h ^= shifted
        h *= _MIX_2
        np.right_shift(h, np.uint64(32), out=shifted)
        h ^= shifted
    return hashes, offsets


def ngram_sets(texts: list[str], n: int) -> list[np.ndarray]:
    """The distinct n-gram hashes of each text, sorted (for exact Jaccard)."""
    hashes, offsets = ngram_hashes(texts, n)
    return [np.unique(hashes[offsets[i]:offsets[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted, distinct hash arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def signatures(texts: list[str], n: int, num_perm: int, seed: int) -> np.ndarray:
    """R-MinHash signatures (rensa), one row of ``num_perm`` uint32 per text."""
    from rensa import RMinHash

    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    hashes, offsets = ngram_hashes(texts, n)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(np.uint64), num_perm=num_perm, seed=seed)
    # rensa exports only lists of ints; array.array takes them ~20% faster than NumPy does.
    flat = array.array("I")
    for row in matrix.to_rows():
        flat.extend(row)
    return np.frombuffer(flat, dtype=np.uint32).reshape(len(texts), num_perm)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 63-bit key per (text, band): rows with equal keys in any band are candidates."""
    count = sigs.shape[0]
    out = np.empty((count, bands), dtype=np.int64)
    s = sigs[:, :bands * rows].astype(np.uint64).reshape(count, bands, rows)
    h = np.full((count, bands), 0xCBF29CE484222325, dtype=np.uint64)
    for r in range(rows):
        h ^= s[:, :, r]
        h *= _FNV_PRIME
        h ^= h >> np.uint64(29)
    h *= _MIX_1
    h ^= h >> np.uint64(32)
    out[:] = (h >> np.uint64(1)).astype(np.int64)
    return out


def ngram_strings(text: str, n: int) -> list[str]:
    """The padded character n-grams of ``text`` as strings: the same n-grams `ngram_hashes`
    hashes, for libraries that take string shingles (the benchmark's datasketch reference)."""
    framed = _PAD * (n - 1) + text + _PAD * (n - 1)
    return [framed[i:i + n] for i in range(len(framed) - n + 1)]
