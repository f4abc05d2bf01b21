"""supportbot's Slack app, CLI and the glue between storage and trainer."""
