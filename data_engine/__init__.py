"""The data engine: raw chat data in, clean train/validation/test splits out, on Ray.

Stages (`readers`, `normalizers`, `filters`, `pipeline`, `writers`) are pure functions over
Arrow batches; `executor` decides where they run (Ray tasks) and `run` strings them together.
"""
