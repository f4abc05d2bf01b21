"""Named exceptions raised by storage. Messages are meant for people."""


class StorageError(Exception):
    """Base class for storage errors."""


class NotFound(StorageError):
    """A message, run or adapter that does not exist."""


class UnknownLabel(StorageError):
    """A label that is not in the team's active label set."""

    def __init__(self, label: str, valid: list[str]):
        self.label = label
        self.valid = valid
        listed = ", ".join(valid) if valid else "(none yet: add one with `supportbot labels add`)"
        super().__init__(f"unknown label {label!r}; valid labels: {listed}")


class InvalidLabelName(StorageError):
    """A label name with characters a label cannot have."""


class ImportFormatError(StorageError):
    """A malformed import file. Nothing was stored."""

    def __init__(self, path: str, line: int, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}, line {line}: {reason} (nothing was imported)")


class RunConflict(StorageError):
    """A training run cannot change state as asked (for example, one is already running)."""


class BackupError(StorageError):
    """A backup that cannot be written, or an archive that cannot be restored. Nothing live was changed."""


class LeaseLost(RunConflict):
    """A worker tried to renew or finish a run it no longer holds (another worker recovered it as dead)."""
