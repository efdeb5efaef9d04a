"""The bundled sample dataset: `make_sample.py` writes `data/`, `demo.yaml` cleans it."""
