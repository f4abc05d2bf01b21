"""The JSONL rules for the trainer: the `jsonl` package (one writer, one reader, shared with storage/)."""

from jsonl import JsonlError, dumps_line, iter_lines, loads_line, read_rows, write_jsonl

__all__ = ["JsonlError", "dumps_line", "iter_lines", "loads_line", "read_rows", "write_jsonl"]
