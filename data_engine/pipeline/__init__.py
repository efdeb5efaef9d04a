"""The batch stages Ray Data runs: clean and split."""
