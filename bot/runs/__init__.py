"""Where a training run executes: the backend interface and its two implementations.

`backend.py` is the contract, `local.py` the trainer as a child process of the
worker (the default), `ray.py` the trainer on a Ray cluster (a GPU host).
"""
