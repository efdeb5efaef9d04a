"""Wire protocols, one versioned package each (`tunesmith.training.v1`), with generated code."""
