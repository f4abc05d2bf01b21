"""Slack's face: the bot process (`supportbot serve`).

`app.py` builds the one Bolt App and registers the listeners (`listeners/`, one module per kind);
`server.py` runs it (Socket Mode or HTTP); `context.py` is what the listeners share (settings,
database connections, the classifier, the work pool); `scheduler.py` runs the relay and the timed work.
Formatting: `blocks.py` (Block Kit), `mrkdwn.py` (the one escaping helper for user text), `reports.py`
(training progress and reports). `permissions.py` says who may change what; `relay.py` delivers the
outbox; `metadata.py` tags what the bot posted; `spool.py` keeps events the database could not take.
Model work imports torch inside the functions that need it: importing this package loads no torch.
"""
