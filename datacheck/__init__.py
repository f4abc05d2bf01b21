"""datacheck."""
