import pytest

from bot.settings import SettingsError, load_settings, settings_table
from classifier.models import DEFAULT_BASE_MODEL


def test_defaults(tmp_path):
    s = load_settings({}, env_file=None)
    assert s.base_model == DEFAULT_BASE_MODEL
    assert str(s.data_dir) == "data" and s.db_path.name == "supportbot.db"
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.missing_for_slack()[0] == "SLACK_BOT_TOKEN"


def test_values_parsed():
    s = load_settings(
        {
            "SUPPORTBOT_ADMINS": "U01ABC, W02XYZ",
            "SUPPORTBOT_INTAKE_CHANNELS": "C1AA,C2BB",
            "SUPPORTBOT_REPORT_CHANNEL": "C3CC",
            "SLACK_API_URL": "http://127.0.0.1:8123/api",
            "SUPPORTBOT_REVIEW_THRESHOLD": "0.7",
            "SLACK_BOT_TOKEN": "xoxb-1",
            "SLACK_SIGNING_SECRET": "s",
        },
        env_file=None,
    )
    assert s.admins == ("U01ABC", "W02XYZ") and s.intake_channels == ("C1AA", "C2BB")
    assert s.report_channel == "C3CC" and s.review_threshold == 0.7
    assert s.slack_api_url == "http://127.0.0.1:8123/api/"
    assert s.missing_for_slack() == []


def test_ray_settings_default_to_the_local_backend_and_one_gpu():
    assert (load_settings({}, env_file=None).ray_address, load_settings({}, env_file=None).ray_num_gpus) == ("", 1)
    s = load_settings({"SUPPORTBOT_RAY_ADDRESS": " gpu-host:6379 ", "SUPPORTBOT_RAY_NUM_GPUS": "0"}, env_file=None)
    assert (s.ray_address, s.ray_num_gpus) == ("gpu-host:6379", 0)


@pytest.mark.parametrize(
    "var, value, expected",
    [
        ("SUPPORTBOT_ADMINS", "bob", "SUPPORTBOT_ADMINS: expected comma-separated Slack user ids"),
        (
            "SUPPORTBOT_INTAKE_CHANNELS",
            "#support",
            "SUPPORTBOT_INTAKE_CHANNELS: expected comma-separated Slack channel",
        ),
        ("SUPPORTBOT_REPORT_CHANNEL", "C1AA,C2BB", "SUPPORTBOT_REPORT_CHANNEL: expected one Slack channel id"),
        ("SLACK_BOT_TOKEN", "xapp-123", "SLACK_BOT_TOKEN: expected a token starting with 'xoxb-'"),
        ("SLACK_APP_TOKEN", "xoxb-123", "SLACK_APP_TOKEN: expected a token starting with 'xapp-'"),
        ("SLACK_API_URL", "slack.com/api", "SLACK_API_URL: expected an http(s) URL"),
        ("SUPPORTBOT_REVIEW_THRESHOLD", "high", "SUPPORTBOT_REVIEW_THRESHOLD: expected a number between 0 and 1"),
        ("SUPPORTBOT_REVIEW_THRESHOLD", "1.5", "SUPPORTBOT_REVIEW_THRESHOLD: expected a number between 0 and 1"),
        ("SUPPORTBOT_WORKERS", "0", "SUPPORTBOT_WORKERS: expected a whole number"),
        ("SUPPORTBOT_RAY_NUM_GPUS", "-1", "SUPPORTBOT_RAY_NUM_GPUS: expected a whole number (0 or more)"),
        ("SUPPORTBOT_RAY_NUM_GPUS", "one", "SUPPORTBOT_RAY_NUM_GPUS: expected a whole number (0 or more)"),
        ("SUPPORTBOT_DATA_DIR", " ", "SUPPORTBOT_DATA_DIR: expected a folder path"),
    ],
)
def test_wrong_value_is_one_line_naming_the_variable(var, value, expected):
    with pytest.raises(SettingsError) as err:
        load_settings({var: value}, env_file=None)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_env_file_read_and_environment_wins(tmp_path):
    f = tmp_path / ".env"
    f.write_text("SUPPORTBOT_REPORT_CHANNEL=C9ZZ\nSUPPORTBOT_WORKERS=2\n")
    s = load_settings({"SUPPORTBOT_WORKERS": "6"}, env_file=f)
    assert s.report_channel == "C9ZZ" and s.workers == 6


def test_settings_table_lists_every_variable():
    table = settings_table()
    for var in (
        "SUPPORTBOT_DATA_DIR",
        "SUPPORTBOT_BASE_MODEL",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_API_URL",
        "SUPPORTBOT_ADMINS",
        "SUPPORTBOT_INTAKE_CHANNELS",
        "SUPPORTBOT_REPORT_CHANNEL",
    ):
        assert f"`{var}`" in table


def test_readme_settings_table_is_current():
    from .conftest import REPO

    assert settings_table() in (REPO / "README.md").read_text(), "regenerate with `supportbot settings --markdown`"


def test_every_setting_is_one_field_with_its_variable_parser_and_help():
    from dataclasses import fields

    from bot.settings import SETTINGS, Settings

    names = [f.name for f in fields(Settings)]
    assert [s.attr for s in SETTINGS] == names  # the table is read off the dataclass, in its order
    for f in fields(Settings):
        meta = f.metadata
        assert meta["var"].isupper() and len(meta["help"]) > 10 and callable(meta["parse"])
        assert meta["parse"](meta["var"], meta["default"]) == f.default  # the default is written once
    assert len({s.var for s in SETTINGS}) == len(SETTINGS)


def test_settings_said_as_variables_read_back_the_same(tmp_path):
    from dataclasses import fields, replace

    from bot.local import environment_for
    from bot.settings import Settings, as_environment, load_settings

    assert load_settings(as_environment(Settings()), env_file=None) == Settings()
    changed = replace(
        Settings(),
        data_dir=tmp_path,
        admins=("U01ABC", "W02XYZ"),
        intake_channels=("C1AA",),
        redact=True,
        review_threshold=0.25,
        workers=2,
        ray_address="gpu-host:6379",
    )
    assert load_settings(as_environment(changed), env_file=None) == changed
    # The worker the local workspace starts reads every setting the bot has, none listed by hand.
    worker = environment_for(changed)
    assert load_settings(worker, env_file=None) == changed
    assert {f.metadata["var"] for f in fields(Settings)} <= set(worker)
