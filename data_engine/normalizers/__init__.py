"""Text normalisers that run before the filters."""
