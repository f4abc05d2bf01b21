"""The layout's boundaries, enforced: what each package may import, and where SQL lives.

trainer/ knows no Slack and no SQL; storage/ no Slack and no torch; the bot's listeners start without torch
(model work imports it inside the functions that need it). Every import statement counts, including those
inside functions.
"""

import ast
import subprocess
import sys

import pytest

from .conftest import REPO

FORBIDDEN = {
    "trainer": ("bot", "storage", "slack_bolt", "slack_sdk", "sqlite3", "sqlite_utils"),
    "storage": ("bot", "trainer", "torch", "transformers", "peft", "slack_bolt", "slack_sdk"),
}
SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "PRAGMA ")


def imported_modules(path, package_parts):
    """(line, absolute module name) of every import in the file at `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package_parts[:len(package_parts) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield node.lineno, name


def package_files(package):
    for path in sorted((REPO / package).rglob("*.py")):
        yield path, list(path.relative_to(REPO).parts[:-1])  # the package a relative import starts from


def violations(package, forbidden):
    found = []
    for path, package_parts in package_files(package):
        for line, name in imported_modules(path, package_parts):
            top = name.split(".")[0]
            if top in forbidden:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundary(package):
    assert violations(package, FORBIDDEN[package]) == []


def test_sql_lives_in_storage_only():
    found = []
    for package in ("bot", "trainer", "slack_standin"):
        for path, _ in package_files(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and node.value.lstrip().startswith(SQL_WORDS):  # the SQL here is upper-case
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.strip()[:40]}")
    assert found == []


def test_the_bots_listeners_start_without_torch():
    code = ("import sys; import bot.app, bot.server, bot.scheduler, bot.worker, bot.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
