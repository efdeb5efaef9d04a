"""Exact and near-duplicate detection: normalised text, MinHash-LSH candidates, confirmation."""
