"""Durable training jobs: the SQLite store, spec validation, the job process and executors."""
