"""The run pipeline: the worker process (`supportbot worker`) and where a training run executes.

`worker.py` claims queued runs one at a time and says what happened through the outbox, in the
words of the `reports` it is handed at start-up (bot.slack.reports): nothing here imports bot.slack.
`execute.py` prepares a run's directory, executes it on a backend, follows its metrics into storage
and registers its result. `backend.py` is the backend contract, `local.py` the trainer as a child
process of the worker (the default), `ray.py` the trainer on a Ray cluster (a GPU host).
`retention.py` deletes the training data copied into finished runs' directories.
"""
