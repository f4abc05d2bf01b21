"""The layout's boundaries, enforced: what each package may import, and where SQL lives.

trainer/ knows no Slack and no SQL; storage/ no Slack and no torch; the run pipeline (bot/runs/) knows no
Slack (what the channel sees is formatted by bot/slack/, handed to the worker at start-up); the bot's
listeners start without torch (model work imports it inside the functions that need it). Every import
statement counts, including those inside functions.
"""

import ast
import subprocess
import sys

import pytest

from .conftest import REPO

SLACK = ("slack_bolt", "slack_sdk")
SQL = ("sqlite3", "sqlite_utils")
FORBIDDEN = {
    # Text preparation: every door uses it, so it depends on nothing of ours and no model library.
    "textprep": ("bot", "storage", "classifier", "datacheck", "trainer", "torch", "transformers", *SLACK, *SQL),
    # What answers a message, in any process: no database, no Slack, nothing of the training run.
    "classifier": ("bot", "storage", "trainer", "datacheck", *SLACK, *SQL),
    "datacheck": ("bot", "trainer", *SLACK),
    "trainer": ("bot", "storage", *SLACK, *SQL),
    "storage": ("bot", "trainer", "classifier", "datacheck", "torch", "transformers", "peft", *SLACK),
    "bot.runs": ("bot.slack", "slack_bolt", "slack_sdk"),
    # The Slack face and serving use what answers a message (classifier/) and format what a run recorded:
    # nothing of the training run itself.
    "bot.slack": ("trainer",),
    "bot.serving": ("trainer",),
}
SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "PRAGMA ")


def imported_modules(path, package_parts):
    """(line, absolute module name) of every import in the file at `path`.

    `from X import a` counts as importing `X.a` (a may be a module: `from .. import slack`).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package_parts[: len(package_parts) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            for alias in node.names:
                yield node.lineno, f"{name}.{alias.name}"


def package_files(package):
    """The files of a package, or the one file of a module (bot.serving is bot/serving.py)."""
    folder = REPO.joinpath(*package.split("."))
    paths = sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
    assert all(path.exists() for path in paths) and paths, f"{package}: no such package or module"
    for path in paths:
        yield path, list(path.relative_to(REPO).parts[:-1])  # the package a relative import starts from


def violations(package, forbidden):
    found = []
    for path, package_parts in package_files(package):
        for line, name in imported_modules(path, package_parts):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundary(package):
    assert violations(package, FORBIDDEN[package]) == []


def test_a_forbidden_import_is_found(tmp_path, monkeypatch):
    """The checker itself: a relative import of the Slack face from the run pipeline is caught."""
    (tmp_path / "bot" / "runs").mkdir(parents=True)
    (tmp_path / "bot" / "runs" / "w.py").write_text("def f():\n    from .. import slack\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert violations("bot.runs", FORBIDDEN["bot.runs"]) == ["bot/runs/w.py:2 imports bot.slack"]


def test_sql_lives_in_storage_only():
    found = []
    for package in ("bot", "textprep", "classifier", "datacheck", "trainer", "slack_standin"):
        for path, _ in package_files(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value.lstrip().startswith(SQL_WORDS)
                ):  # the SQL here is upper-case
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.strip()[:40]}")
    assert found == []


def test_the_bots_listeners_start_without_torch():
    """Every module of the Slack face, the worker and the CLI import without torch and its kin."""
    code = (
        "import importlib, pkgutil, sys; import bot.slack, bot.runs.worker, bot.cli; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(bot.slack.__path__, 'bot.slack.')]; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
