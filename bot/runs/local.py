"""The local backend: the trainer as a child process of the worker (`python -m trainer RUN_DIR`).

The child runs in its own process group, so a crash or an out-of-memory kill
cannot take the worker down, and it dies with the worker (PR_SET_PDEATHSIG);
its pid is recorded in the run directory so a restarted worker can kill an
orphan that survived anyway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .backend import Ending

PID_FILE = "trainer.pid"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the worker dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: recovery still kills orphans by their recorded pid


def start_trainer(run_dir: Path) -> subprocess.Popen:
    """The trainer as a child process in its own process group, its pid recorded in the run directory."""
    with open(run_dir / "trainer.log", "ab") as log:  # the child has its own copy of the descriptor
        child = subprocess.Popen([sys.executable, "-m", "trainer", str(run_dir)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
                                 env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    (run_dir / PID_FILE).write_text(str(child.pid))
    return child


def kill_orphan(run_dir: str | Path) -> bool:
    """Kill a trainer left running by a worker that died (its process group, if it is still a trainer)."""
    pid_file = Path(run_dir) / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text() or 0)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"trainer" not in cmdline or str(run_dir).encode() not in cmdline:
        return False  # the pid was reused by something else
    os.killpg(pid, signal.SIGKILL)
    return True


class LocalRun:
    """A handle on the child: it reads and writes the run directory itself, so there is nothing to copy."""

    def __init__(self, child: subprocess.Popen):
        self.child = child

    @property
    def pid(self) -> int:
        return self.child.pid

    def poll(self) -> Ending | None:
        code = self.child.poll()
        return None if code is None else Ending(code)

    def cancel(self) -> None:
        pass  # the trainer reads the run directory's `cancel` file itself

    def stop(self) -> None:
        if self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)


class LocalBackend:
    name = "local"

    def start(self, run_dir: Path) -> LocalRun:
        return LocalRun(start_trainer(run_dir))
