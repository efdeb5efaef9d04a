"""Errors the data engine raises; the CLI maps them to exit codes and messages."""

from __future__ import annotations


class DataEngineError(Exception):
    """Base class for every error the data engine raises on purpose."""

    exit_code = 1


class ConfigError(DataEngineError):
    """One or more config values are invalid; all problems are reported together."""

    exit_code = 2

    def __init__(self, problems: list[str], origin: str = "config"):
        self.problems = list(problems)
        self.origin = origin
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {origin} ({len(self.problems)} problem(s)):\n{lines}")


class PathError(DataEngineError):
    """A file or folder the run reads or writes, what went wrong with it, and the config
    field that names it (``field`` defaults to the class's)."""

    field = ""

    def __init__(self, path: str, message: str, field: str | None = None):
        self.path, self.message = path, message
        self.field = field or self.field
        super().__init__(f"{self.field}: {path}: {message}")


class InputError(PathError):
    """An input path cannot be read as any supported dataset layout."""

    exit_code = 2
    field = "inputs"


class ClusterError(DataEngineError):
    """The configured Ray cluster cannot be reached."""

    exit_code = 3

    def __init__(self, address: str, message: str, field: str = "ray.address"):
        self.address = address
        self.field = field
        super().__init__(f"{field}: cannot connect to Ray at {address}: {message}")


class LeakError(DataEngineError):
    """Near duplicates remain across splits after splitting: the evaluation would be inflated."""

    exit_code = 4

    def __init__(self, leaks: int, examples: list[dict], field: str = "split"):
        self.leaks = leaks
        self.examples = examples
        self.field = field
        shown = "\n".join(f"  - {e['a']} ({e['split_a']}) ~ {e['b']} ({e['split_b']}): "
                          f"Jaccard {e['jaccard']:.3f}" for e in examples)
        super().__init__(f"{field}: leak check failed: {leaks} near-duplicate pair(s) straddle "
                         f"splits:\n{shown}\nThis is a bug in tunesmith; please report it with "
                         "the config.")


class OutputError(PathError):
    """An output could not be written (no manifest is written, so a re-run redoes it from the
    stored stages)."""

    field = "out"


class OutputPlaceError(OutputError):
    """``--out`` cannot hold the outputs (a file, unwritable, overlapping the inputs); found
    before anything is read or written."""

    exit_code = 2
