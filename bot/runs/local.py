"""The local backend: the trainer as a child process of the worker (`python -m trainer RUN_DIR`).

The child runs in its own process group, so a crash or an out-of-memory kill
cannot take the worker down, and it dies with the worker (PR_SET_PDEATHSIG).
Its pid is recorded in the run directory so a restarted worker can kill an
orphan that survived anyway; but a pid file is only a claim (a pid is reused,
a run directory is copied by a backup and restored elsewhere), so the file
also records the child's start time, a random token put in the child's
environment, and the database and worker it was started for, and nothing is
killed unless the live process matches all of them (`kill_orphan`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from .backend import Ending

log = logging.getLogger(__name__)

PID_FILE = "trainer.pid"
TOKEN_VAR = "SUPPORTBOT_TRAINER_TOKEN"  # in the child's environment: proves which pid file it belongs to


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the worker dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: recovery still kills orphans by their recorded pid


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def start_recorded(command: list[str], run_dir: Path, owner: dict | None = None) -> subprocess.Popen:
    """`command` as a child in its own process group, logging to trainer.log, recorded in the pid file.

    `owner` (the database path and worker id it runs for) is written into the pid file with the proof.
    """
    token = secrets.token_hex(16)
    with open(run_dir / "trainer.log", "ab") as output:  # the child has its own copy of the descriptor
        child = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", TOKEN_VAR: token},
        )
    record = {"pid": child.pid, "start_time": start_time(child.pid), "token": token, **(owner or {})}
    tmp = run_dir / f"{PID_FILE}.tmp"
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.replace(run_dir / PID_FILE)  # a reader sees the whole record or none
    return child


def start_trainer(run_dir: Path, owner: dict | None = None) -> subprocess.Popen:
    """The trainer as a child process in its own process group, recorded in the run directory's pid file."""
    return start_recorded([sys.executable, "-m", "trainer", str(run_dir)], run_dir, owner)


def owner_of(db_path: str | Path, worker_id: str | None) -> dict:
    """What a pid file records of who started the trainer: the database (resolved) and the worker's id."""
    return {"db": os.path.realpath(db_path), "worker_id": worker_id}


def _read_record(pid_file: Path) -> dict | None:
    """The pid file's record, validated; None when it is not one this version writes."""
    try:
        record = json.loads(pid_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wanted = {"pid": int, "start_time": int, "token": str, "db": str}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t) for k, t in wanted.items()):
        return None
    return record if record["pid"] > 1 and not isinstance(record["pid"], bool) else None


def _environment_token(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's process
        return None
    prefix = f"{TOKEN_VAR}=".encode()
    return next((v[len(prefix) :].decode(errors="replace") for v in environ if v.startswith(prefix)), None)


def why_not_ours(record: dict | None, owner: dict) -> str:
    """Why the process a pid file names is not provably the trainer started for `owner`; "" when it is."""
    if record is None:
        return "the pid file is not one this version writes, so nothing proves what the pid is"
    if record["db"] != owner["db"]:
        return f"it was started for another database ({record['db']}), e.g. this folder is a restored copy"
    if record.get("worker_id") != owner["worker_id"]:
        return f"it was started by worker {record.get('worker_id')}, not by the run's worker {owner['worker_id']}"
    if start_time(record["pid"]) != record["start_time"]:
        return "no process with that pid started when the trainer did (it exited, and the pid may be reused)"
    if _environment_token(record["pid"]) != record["token"]:
        return "the process does not carry the trainer's token in its environment"
    return ""


def kill_orphan(run_dir: str | Path, owner: dict) -> bool:
    """Kill a trainer left running by a worker that died, only once the live process is proven to be it.

    `owner` (`owner_of`) is the database this worker uses and the worker the run was leased to. Anything
    that does not match is left alone, and the log says why.
    """
    pid_file = Path(run_dir) / PID_FILE
    if not pid_file.exists():
        return False
    record = _read_record(pid_file)
    why = why_not_ours(record, owner)
    if why:
        log.warning("left the process named in %s alone: %s", pid_file, why)
        return False
    try:
        os.killpg(record["pid"], signal.SIGKILL)  # the trainer leads its own process group (start_new_session)
    except ProcessLookupError:  # it exited since it was checked
        return False
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

    def __init__(self, owner: dict | None = None):
        self.owner = owner  # `owner_of`: recorded in each trainer's pid file

    def start(self, run_dir: Path) -> LocalRun:
        return LocalRun(start_trainer(run_dir, self.owner))
