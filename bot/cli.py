"""The `supportbot` admin CLI. Scripts drive it: command names and `--json` outputs are stable.

Heavy libraries (torch, transformers) are imported inside the commands that
need them, so `supportbot --help` and the storage commands start fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from classifier.models import ModelError
from storage import StorageError, importing, open_db
from storage import labels as label_store

from .serving import NoLabels
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


EXPECTED_ERRORS = (SettingsError, StorageError, NoLabels, ModelError)


class Commands(click.Group):
    """The command group: an expected error (a bad setting, a storage problem, ...) ends in one line, exit 1.

    Here rather than in `main`, so that a test invoking the group in process sees what a user sees.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            fail(str(exc))


@click.group(cls=Commands)
@click.version_option(package_name="supportbot")
def cli():
    """supportbot: teach a support-email classifier from Slack, and run it.

    Settings come from environment variables or a `.env` file; `supportbot settings` lists them.
    """


@cli.command()
@pass_ctx
def init(ctx: Context):
    """Create the data folder and the database (or bring its schema up to date)."""
    from storage.db import private_folder, schema_version

    settings = ctx.settings
    for folder in (settings.data_dir, settings.adapters_dir, settings.runs_dir, settings.model_cache_dir):
        private_folder(folder)
    settings.data_dir.chmod(0o700)  # the database, runs and adapters hold customer text: owner only
    applied = schema_version(ctx.db)
    click.echo(f"Database ready at {settings.db_path} (schema: {applied[-1]}, {len(applied)} migrations)")


@cli.command()
@click.option("--http", is_flag=True, help="Serve /slack/events over HTTP instead of Socket Mode.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=3000, show_default=True, type=click.IntRange(0, 65535))
@pass_ctx
def serve(ctx: Context, http: bool, host: str, port: int):
    """Run the Slack bot: Socket Mode when SLACK_APP_TOKEN is set, else (or with --http) HTTP mode."""
    import logging

    from .slack.server import serve as run_server

    settings = ctx.settings
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    http = http or not settings.slack_app_token
    missing = settings.missing_for_slack(http=http)
    if missing:
        fail("cannot connect to Slack: missing " + "; ".join(missing) + ". See `supportbot settings`.")
    check_encoder(settings)
    ctx.db  # migrate before serving
    run_server(settings, http=http, host=host, port=port)


@cli.command()
@pass_ctx
def worker(ctx: Context):
    """Run the training worker: executes queued runs (from /retrain or the schedule) one at a time."""
    import logging

    from .runs.worker import main as run_worker
    from .slack import reports

    logging.basicConfig(level=ctx.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.db  # migrate before working
    run_worker(ctx.settings, reports)  # the run pipeline records; the Slack face's reports format it


@cli.command()
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port of the local workspace page."
)
@pass_ctx
def local(ctx: Context, port: int):
    """Try it without Slack: a local workspace page, the bot and the worker, with a demo data set."""
    import logging

    from .local import run_local

    logging.basicConfig(level=ctx.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_encoder(ctx.settings)
    ctx.db  # migrate first
    run_local(ctx.settings, port)


def check_encoder(settings) -> None:
    """Refuse to start without the encoder every message is embedded with (missing, or its files changed)."""
    from classifier.encoders import EncoderCheckFailed, EncoderMissing, encoder

    try:
        encoder(settings.embedding_model).folder()
    except (EncoderMissing, EncoderCheckFailed) as exc:
        fail(
            f"cannot embed messages: {exc}. (SUPPORTBOT_EMBEDDING_MODEL=minilm uses the encoder installed with the bot.)"
        )


@cli.command()
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@pass_ctx
@click.pass_context
def run(click_ctx, ctx: Context, port: int):
    """Run supportbot on its defaults: in Slack when its tokens are set, else in the local workspace."""
    click_ctx.invoke(init)
    missing = ctx.settings.missing_for_slack()
    if missing:
        click.echo(
            "No Slack app configured (missing " + "; ".join(missing) + "): starting the local workspace. "
            "See README, 'Connect it to Slack'."
        )
        click_ctx.invoke(local, port=port)
        return
    click_ctx.invoke(serve)


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
    from textprep.cleaning import text_cleaner

    result = importing.import_examples(ctx.db, file, examples, clean=text_cleaner(ctx.settings.redact))
    if as_json:
        click.echo(json.dumps(result.__dict__))
        return
    click.echo(
        f"Imported {result.stored} of {result.rows} rows from {file}"
        + (f" ({result.already_present} already present)" if result.already_present else "")
    )
    if result.labels_added:
        click.echo(f"New labels ({len(result.labels_added)}): {', '.join(result.labels_added)}")


def check_new_file(out: Path, force: bool) -> None:
    """Fails with a one-line error unless `open_new_file(out, force)` can write there: asked before slow work."""
    if not out.parent.is_dir():
        fail(f"cannot write {out}: folder {out.parent} does not exist")
    if out.is_symlink():
        fail(f"{out} is a symbolic link; not following it (give the real path)")
    if out.exists() and not force:
        fail(f"{out} exists; use --force to replace it")
    if out.exists() and not out.is_file():
        fail(f"{out} is not a regular file")


def open_new_file(out: Path, force: bool, *, binary: bool = False):
    """`out` opened for writing, owner-only (0600), never through a symlink; an existing file only with `force`
    (it is removed and a new one made: a file someone else created is never written into).
    Fails with a one-line error otherwise."""
    import os

    if not out.parent.is_dir():
        fail(f"cannot write {out}: folder {out.parent} does not exist")
    if out.is_symlink():
        fail(f"{out} is a symbolic link; not following it (give the real path)")
    if out.exists():
        if not force:
            fail(f"{out} exists; use --force to replace it")
        if not out.is_file():
            fail(f"{out} is not a regular file")
        try:
            out.unlink()
        except OSError as exc:
            fail(f"cannot replace {out}: {exc.strerror}")
    try:
        fd = os.open(str(out), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    if binary:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["alpaca", "chatml"]), default="chatml", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Training config override that shapes the prompt (e.g. --set label_list_in_prompt=always).",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@pass_ctx
def export(ctx: Context, fmt: str, out: Path | None, overrides: tuple[str, ...], force: bool):
    """Export labeled messages as JSONL, with the prompt and answer a training run on them uses."""
    from jsonl import dumps_line
    from storage.labels import training_examples
    from trainer.config import TrainConfig
    from trainer.data import alpaca_row, chatml_row
    from trainer.run import prompt_spec

    from .runs.execute import label_set

    examples = training_examples(ctx.db)
    spec = prompt_spec(TrainConfig(**{**parse_overrides(overrides), "labels": label_set(ctx.db, examples)}))
    convert = alpaca_row if fmt == "alpaca" else chatml_row
    rows = [convert(spec, e) for e in examples]
    lines = "".join(dumps_line(r) for r in rows)
    if out:
        with open_new_file(out, force) as f:
            f.write(lines)
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
        click.echo(
            json.dumps([{"name": d.name, "description": d.description, "count": counts.get(d.name, 0)} for d in defs])
        )
        return
    if not defs:
        click.echo('No labels yet. Add one: supportbot labels add complaint --description "..."')
    for d in defs:
        click.echo(f"{d.name:32} {counts.get(d.name, 0):6}  {d.description}")


@labels.command("add")
@click.argument("name")
@click.option("--description", default="", help="What the label means; the model reads it.")
@pass_ctx
def labels_add(ctx: Context, name: str, description: str):
    """Add a label (or reactivate one). NAME: 1-64 of a-z A-Z 0-9 _ - . (starting with a letter or digit)."""
    d = label_store.add_label_def(ctx.db, name, description)
    click.echo(f"Label {d.name!r} is active" + (f": {d.description}" if d.description else ""))


@labels.command("describe")
@click.argument("name")
@click.argument("description")
@pass_ctx
def labels_describe(ctx: Context, name: str, description: str):
    """Replace a label's description (at most 300 characters; the model reads it)."""
    d = label_store.describe_label(ctx.db, name, description)
    click.echo(f"Label {d.name!r}: {d.description}")


@labels.command("retire")
@click.argument("name")
@pass_ctx
def labels_retire(ctx: Context, name: str):
    """Retire a label: no longer offered or trained on; its history stays (`labels add` brings it back)."""
    d = label_store.retire_label(ctx.db, name)
    click.echo(f"Label {d.name!r} is retired")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats(ctx: Context, as_json: bool):
    """Messages, labeled messages and per-label counts."""
    result = label_store.stats(ctx.db)
    counts = result["labels"]
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"Messages: {result['messages']}   labeled: {result['labeled']}   labels: {len(counts)}")
    for name, n in counts.items():
        click.echo(f"  {name:32} {n}")


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE config overrides; values are read as JSON when they parse (numbers, true, lists), else text."""
    from trainer.config import TrainConfig

    known = set(TrainConfig.__dataclass_fields__)
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise click.BadParameter(
                f"{pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}", param_hint="--set"
            )
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@cli.command()
@click.option("--epochs", type=click.IntRange(min=1), help="Override the automatic number of epochs.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Training config override, repeatable (e.g. --set learning_rate=1e-3 --set recipe=small-model).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_ctx
def train(ctx: Context, epochs: int | None, overrides: tuple[str, ...], as_json: bool):
    """Train an adapter on the labeled messages now (no Slack needed), evaluate it, register it.

    Runs the trainer as a child process, shows its progress, and serves what the serving gate chooses (README:
    which model answers; SUPPORTBOT_PROMOTION_SIGNIFICANCE).
    """
    from datacheck.examples import DataError, check_examples
    from storage import runs
    from storage.labels import training_examples

    from .runs.execute import execute_run, new_worker_id, run_dir_for

    params = parse_overrides(overrides)
    if epochs:
        params["epochs"] = epochs
    examples = training_examples(ctx.db)
    try:
        check_examples(examples, sorted({e["label"] for e in examples}) or ["(none)"])
    except DataError as exc:
        fail(str(exc))
    queued = runs.queue_run(ctx.db, requested_by="cli", params=params)
    run = runs.claim_run(
        ctx.db,
        queued.id,
        run_dir_for(ctx.settings, queued.id),
        worker_id=new_worker_id("cli"),
        lease_s=ctx.settings.run_lease_s,
    )
    if run is None:  # a running `supportbot worker` took it: it trains there and reports in Slack
        fail(
            f"run {queued.id} was taken by the worker; follow it with `/retrain status` "
            f"or in {run_dir_for(ctx.settings, queued.id)}"
        )
    if not as_json:
        click.echo(f"Run {run.id}: {len(examples)} labeled examples; loading the base model...", err=True)
    with contextlib.ExitStack() as bars:  # the bar opens when the trainer knows its step count, and always closes
        bar = None

        def progress(record):
            nonlocal bar
            if as_json or not record.get("max_steps"):
                return
            if bar is not None and record.get("phase") == "refit" and bar.label.startswith("Training"):
                bar.render_finish()  # the refit on every labelled example gets a bar of its own
                bar = None
            if bar is None:
                label = f"{'Refitting' if record.get('phase') == 'refit' else 'Training'} run {run.id}"
                bar = bars.enter_context(
                    click.progressbar(length=record["max_steps"], label=label, file=sys.stderr, show_eta=True)
                )
            bar.update(record["step"] - bar.pos)

        outcome = execute_run(ctx.settings, ctx.db, run, on_progress=progress)
    result = outcome.result
    metrics = {k: result["metrics"][k] for k in ("accuracy", "macro_f1", "n")} if result.get("metrics") else {}
    if result.get("baseline"):
        metrics["baseline_accuracy"] = result["baseline"]["accuracy"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run": outcome.run.id,
                    "status": outcome.run.status,
                    "adapter_version": outcome.adapter.version if outcome.adapter else None,
                    "promoted": outcome.promoted,
                    "metrics": metrics,
                    "error": outcome.run.error,
                }
            )
        )
    elif outcome.run.status == "succeeded":
        from trainer.report import summary_markdown

        click.echo(summary_markdown(result))
        click.echo(
            f"Adapter version {outcome.adapter.version} "
            + ("is now serving." if outcome.promoted else "was registered but not promoted.")
        )
    else:
        click.echo(f"Run {outcome.run.id} {outcome.run.status}: {outcome.run.error}", err=True)
    if outcome.run.status != "succeeded":
        sys.exit(1)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text: one starting like a formula (= + - @, tab, CR) gets a leading
    apostrophe, so `=HYPERLINK(...)` in an email is not run when the file is opened."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _prediction_dict(p) -> dict:
    return {
        "label": p.label,
        "confidence": round(p.confidence, 6),
        "needs_review": p.needs_review,
        "adapter_version": p.adapter_version,
        "zero_shot": p.zero_shot,
        "model": p.model,
        "scores": {k: round(v, 6) for k, v in p.scores.items()},
    }


@cli.command()
@click.argument("text", required=False)
@click.option(
    "--file",
    "in_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of messages to classify.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the labeled CSV.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--text-col", default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def classify(
    ctx: Context, text: str | None, in_file: Path | None, out: Path | None, force: bool, text_col: str, as_json: bool
):
    """Classify TEXT, or every row of --file into --out, with the model that serves (README: which model answers)."""
    import csv

    from textprep.text import EmptyText

    from .serving import answered_by, load_classifier

    if (text is None) == (in_file is None):
        fail("give either TEXT or --file FILE (with --out FILE)")
    if in_file and not out:
        fail("--file needs --out FILE for the labeled copy")
    if out:  # refused before the model loads, like export's --out
        check_new_file(out, force)
    if text is not None and not text.strip():
        fail("nothing to classify: the text is empty or only whitespace")
    classifier = load_classifier(ctx.settings, ctx.db)
    if text is not None:
        try:
            p = classifier.classify(text)
        except EmptyText as exc:
            fail(str(exc))
        if as_json:
            click.echo(json.dumps(_prediction_dict(p)))
        else:
            source = answered_by(p)
            flag = "  (needs review)" if p.needs_review else ""
            click.echo(f"{p.label}  {p.confidence:.1%}  [{source}]{flag}")
            for name, prob in p.alternatives:
                click.echo(f"  next: {name} {prob:.1%}")
        return
    examples = importing.read_examples(in_file, text_col=text_col, label_col="\0none")
    predictions = classifier.classify_many([e.text for e in examples])
    with in_file.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0].keys()) + ["predicted_label", "confidence", "needs_review", "adapter_version", "model"]
    with open_new_file(out, force) as f:  # the input rows are read already: --out may replace --file
        writer = csv.DictWriter(f, fieldnames=[spreadsheet_safe(name) for name in fields])
        writer.writeheader()
        for row, p in zip(rows, predictions):
            cells = {
                **row,
                "predicted_label": p.label,
                "confidence": f"{p.confidence:.4f}",
                "needs_review": p.needs_review,
                "adapter_version": p.adapter_version or "",
                "model": p.model,
            }
            writer.writerow({spreadsheet_safe(k): spreadsheet_safe(v) for k, v in cells.items()})
    click.echo(f"Classified {len(predictions)} rows into {out}", err=True)


@cli.command("eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-col", default="text", show_default=True)
@click.option("--label-col", default="label", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def eval_(ctx: Context, file: Path, text_col: str, label_col: str, as_json: bool):
    """Accuracy, macro-F1 and per-class scores of the model that serves (adapter, a mix, embeddings or zero-shot) on a labeled CSV."""
    from classifier.evaluate import classification_metrics

    from .serving import load_classifier

    examples = importing.read_examples(file, text_col=text_col, label_col=label_col)
    unlabeled = [e.line for e in examples if not e.label]
    if unlabeled:
        fail(f"{file}, line {unlabeled[0]}: no label in column {label_col!r} ({len(unlabeled)} such rows)")
    classifier = load_classifier(ctx.settings, ctx.db)
    predicted = [p.label for p in classifier.classify_many([e.text for e in examples])]
    metrics = classification_metrics([e.label for e in examples], predicted, classifier.labels)
    if as_json:
        click.echo(json.dumps({k: metrics[k] for k in ("accuracy", "macro_f1", "n", "per_class")}))
        return
    source = classifier.state.name
    click.echo(
        f"{source}: accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f} on {metrics['n']} messages"
    )
    click.echo(f"{'label':32} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}")
    for name, m in metrics["per_class"].items():
        if m["support"]:
            click.echo(f"{name:32} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:7}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Every finding with its kind, message ids and labels.")
@pass_ctx
def datacheck(ctx: Context, as_json: bool):
    """Find duplicates, conflicting labels, thin labels, leakage and suspected mislabels in the labeled data."""
    from datacheck.runner import run_check, summary_line

    report = run_check(ctx.db)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(summary_line(report))
    for finding in report["findings"]:
        click.echo(f"  [{finding['kind']}] {finding['message']} (messages {', '.join(map(str, finding['ids']))})")


@cli.command("backup")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@pass_ctx
def backup_cmd(ctx: Context, out: Path, force: bool):
    """Write the database (a consistent snapshot, safe while running) and the adapters to OUT (.tar.gz)."""
    from storage.backup import backup

    ctx.db  # make sure it exists and is migrated
    with open_new_file(out, force, binary=True) as f:
        try:
            backup(ctx.settings.db_path, ctx.settings.adapters_dir, f)
        except BaseException:
            out.unlink(missing_ok=True)  # the file this command just made: a half backup is no backup
            raise
    click.echo(f"Backed up {ctx.settings.db_path} and {ctx.settings.adapters_dir} to {out}")


@cli.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing database (stop the bot and worker first).")
@pass_ctx
def restore_cmd(ctx: Context, archive: Path, force: bool):
    """Restore a backup made with `supportbot backup` into SUPPORTBOT_DATA_DIR."""
    from storage.backup import restore

    count = restore(archive, ctx.settings.db_path, ctx.settings.adapters_dir, ctx.settings.runs_dir, force=force)
    click.echo(f"Restored {count} messages and the adapters into {ctx.settings.data_dir}")


@cli.command("export-model")
@click.option("--version", "version", type=int, help="Adapter version (default: the serving one).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--merged", is_flag=True, help="Also write the base model with the adapter merged in (full precision).")
@pass_ctx
def export_model(ctx: Context, version: int | None, out: Path, merged: bool):
    """Export an adapter: for Ollama or vLLM (label scoring), or with how to load it (a head); optionally merged."""
    from storage import adapters
    from trainer.export import export_adapter

    from .serving import base_model_path

    adapter = adapters.get_adapter(ctx.db, version) if version else adapters.current_adapter(ctx.db)
    if adapter is None:
        fail("no adapter is serving yet; train one first (supportbot train)")
    written = export_adapter(
        adapter.path,
        base_model_path(ctx.settings, adapter.base_model),
        out,
        name=f"supportbot-v{adapter.version}",
        merged=merged,
    )
    for path in written:
        click.echo(f"wrote {path}")


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


def undecodable_argument(argv: list[str]) -> int | None:
    """Position of the first argument that was not valid UTF-8 (Python keeps such bytes as lone surrogates)."""
    for i, arg in enumerate(argv[1:], start=1):
        if any("\udc80" <= ch <= "\udcff" for ch in arg):
            return i
    return None


def main():
    """Entry point: turns expected errors into one clear line and exit code 1."""
    import os

    os.umask(0o077)  # everything this process creates (database, runs, backups, exports) is its owner's only
    bad = undecodable_argument(sys.argv)
    if bad is not None:
        fail(f"argument {bad} is not valid UTF-8 text")
    cli(standalone_mode=True)


if __name__ == "__main__":
    main()
