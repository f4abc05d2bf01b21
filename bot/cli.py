"""The `supportbot` admin CLI. Scripts drive it: command names and `--json` outputs are stable.

Heavy libraries (torch, transformers) are imported inside the commands that
need them, so `supportbot --help` and the storage commands start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from storage import StorageError, open_db
from storage import importing, labels as label_store, messages as message_store

from .settings import SettingsError, load_settings, settings_table


class Context:
    """Settings and the database, loaded once per command."""

    def __init__(self):
        self._settings = None
        self._db = None

    @property
    def settings(self):
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def db(self):
        if self._db is None:
            self._db = open_db(self.settings.db_path)
        return self._db


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str, code: int = 1):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="supportbot")
def cli():
    """supportbot: teach a support-email classifier from Slack, and run it.

    Settings come from environment variables or a `.env` file; `supportbot settings` lists them.
    """


@cli.command()
@pass_ctx
def init(ctx: Context):
    """Create the data folder and the database (or bring its schema up to date)."""
    from storage.db import schema_version

    settings = ctx.settings
    for folder in (settings.data_dir, settings.adapters_dir, settings.runs_dir, settings.model_cache_dir):
        folder.mkdir(parents=True, exist_ok=True)
    applied = schema_version(ctx.db)
    click.echo(f"Database ready at {settings.db_path} (schema: {applied[-1]}, {len(applied)} migrations)")


@cli.command()
@pass_ctx
@click.pass_context
def run(click_ctx, ctx: Context):
    """Run supportbot on its defaults: prepare the data folder, then connect to Slack if configured."""
    click_ctx.invoke(init)
    missing = ctx.settings.missing_for_slack()
    if missing:
        click.echo("Not connecting to Slack: missing " + "; ".join(missing) + ".")
        click.echo("Set them in the environment or a .env file (see `supportbot settings`).")
        click.echo("Without Slack you can already: supportbot import FILE, supportbot labels list, "
                   "supportbot stats, supportbot export.")
        return
    click.echo("Slack settings found, but this version has no Slack listener yet.")


@cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-col", default="text", show_default=True, help="CSV column holding the message text.")
@click.option("--label-col", default="label", show_default=True, help="CSV column holding the label (may be empty).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def import_(ctx: Context, file: Path, text_col: str, label_col: str, as_json: bool):
    """Import messages (and labels) from CSV or JSONL (Alpaca or ChatML).

    All-or-nothing: a malformed row is reported with its line number and nothing is stored.
    Importing the same file again stores nothing twice.
    """
    examples = importing.read_examples(file, text_col=text_col, label_col=label_col)
    result = importing.import_examples(ctx.db, file, examples)
    if as_json:
        click.echo(json.dumps(result.__dict__))
        return
    click.echo(f"Imported {result.stored} of {result.rows} rows from {file}"
               + (f" ({result.already_present} already present)" if result.already_present else ""))
    if result.labels_added:
        click.echo(f"New labels ({len(result.labels_added)}): {', '.join(result.labels_added)}")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["alpaca", "chatml"]), default="chatml", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_ctx
def export(ctx: Context, fmt: str, out: Path | None):
    """Export labeled messages as JSONL, with the same prompt the trainer uses."""
    from trainer.prompts import LabelInfo, to_alpaca, to_chatml

    defs = [LabelInfo(d.name, d.description) for d in label_store.list_label_defs(ctx.db)]
    convert = to_alpaca if fmt == "alpaca" else to_chatml
    rows = [convert(defs, m.text, m.label, m.subject) for m in label_store.labeled_messages(ctx.db)]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out:
        out.write_text(lines, encoding="utf-8")
        click.echo(f"Wrote {len(rows)} examples to {out}", err=True)
    else:
        click.echo(lines, nl=False)


@cli.group()
def labels():
    """Show and extend the label set."""


@labels.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def labels_list(ctx: Context, as_json: bool):
    """List the active labels with their descriptions and counts."""
    counts = label_store.label_counts(ctx.db)
    defs = label_store.list_label_defs(ctx.db)
    if as_json:
        click.echo(json.dumps([{"name": d.name, "description": d.description, "count": counts.get(d.name, 0)}
                               for d in defs]))
        return
    if not defs:
        click.echo("No labels yet. Add one: supportbot labels add complaint --description \"...\"")
    for d in defs:
        click.echo(f"{d.name:32} {counts.get(d.name, 0):6}  {d.description}")


@labels.command("add")
@click.argument("name")
@click.option("--description", default="", help="What the label means; the model reads it.")
@pass_ctx
def labels_add(ctx: Context, name: str, description: str):
    """Add a label (or reactivate one)."""
    d = label_store.add_label_def(ctx.db, name, description)
    click.echo(f"Label {d.name!r} is active" + (f": {d.description}" if d.description else ""))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats(ctx: Context, as_json: bool):
    """Messages, labeled messages and per-label counts."""
    counts = label_store.label_counts(ctx.db)
    result = {"messages": message_store.count_messages(ctx.db), "labeled": sum(counts.values()), "labels": counts}
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"Messages: {result['messages']}   labeled: {result['labeled']}   labels: {len(counts)}")
    for name, n in counts.items():
        click.echo(f"  {name:32} {n}")


@cli.command("settings")
@click.option("--markdown", is_flag=True, help="Print the README's settings table.")
def settings_cmd(markdown: bool):
    """Show the settings in effect (secrets masked), or the table of all settings."""
    if markdown:
        click.echo(settings_table())
        return
    from .settings import SETTINGS

    current = load_settings()
    for s in SETTINGS:
        value = getattr(current, s.attr)
        if s.secret and value:
            value = "(set)"
        click.echo(f"{s.var:30} {value if value not in ('', ()) else '(unset)'}")


def main():
    """Entry point: turns expected errors into one clear line and exit code 1."""
    try:
        cli(standalone_mode=True)
    except (SettingsError, StorageError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
