"""The data engine: raw chat data in, clean train/validation/test splits out, on Ray Data.

Stages (`readers`, `normalizers`, `filters`, `pipeline`, `writers`) are pure functions over
Arrow batches; `executor` decides where they run and `run` strings them together.
"""
