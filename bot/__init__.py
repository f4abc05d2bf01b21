"""supportbot's two processes and what they share.

- `slack/`: the bot process (`supportbot serve`), Slack's face: the Bolt app, its listeners, Block Kit,
  the outbox relay, the schedule.
- `runs/`: the worker process (`supportbot worker`), the run pipeline: queued runs are prepared,
  executed on a backend (local or Ray) and registered; it knows no Slack.
- On top, shared by both and the CLI: `settings.py` (the one settings object), `serving.py` (the model
  that answers), `cli.py` (the `supportbot` command) and `local.py` (`supportbot local`: both processes
  and a stand-in Slack workspace on one machine).

`slack/` may use `runs/` (to queue a run, read its examples); `runs/` never imports `slack/`.
"""
