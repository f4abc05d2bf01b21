"""SQLite storage for supportbot. Knows nothing of Slack or torch.

Functions take the database first and return small dataclasses; errors are
named exceptions from `storage.errors`. Open one connection per thread with
`open_db`.
"""

from .db import open_db, write
from .errors import ImportFormatError, InvalidLabelName, LeaseLost, NotFound, RunConflict, StorageError, UnknownLabel

__all__ = [
    "open_db",
    "write",
    "ImportFormatError",
    "InvalidLabelName",
    "LeaseLost",
    "NotFound",
    "RunConflict",
    "StorageError",
    "UnknownLabel",
]
