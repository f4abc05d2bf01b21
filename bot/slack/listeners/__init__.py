"""The Bolt listeners, one module per kind, each with `register(app, ctx)` (called by `bot.slack.app`).

- `commands.py`: slash commands (/label, /labels, /retrain, /model, /stats, /classify);
- `actions.py`: buttons, selects, the label modal and the "Label this message" shortcut;
- `intake.py`: events: channel messages and forwarded emails, stored, classified and answered;
- `home.py`: the App Home view;
- `datacheck.py`: /datacheck and its fix buttons.
"""
