import os
from pathlib import Path

import pytest

from storage import open_db

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BANKING77 = SHARED / "data" / "banking77"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "supportbot.db"


@pytest.fixture
def db(db_path):
    return open_db(db_path)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean settings environment pointing at a temporary data dir."""
    for key in list(os.environ):
        if key.startswith(("SUPPORTBOT_", "SLACK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SUPPORTBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
