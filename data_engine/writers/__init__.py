"""The output contract: split files, hf/, rejected rows, manifest and report."""
