"""tunesmith: messy task data in, a fine-tuned, verified, served LLM out.

This package is the command line that joins the services; the work happens in
`data_engine`, `trainer_service` and `evaluator`.
"""

from importlib import metadata

try:
    __version__ = metadata.version("tunesmith")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
