"""The encoder registry and the checked assembly of all-mpnet-base-v2 from its split-zip part packages."""

import dataclasses
import hashlib
import io
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from classifier import encoders
from classifier.encoders import EncoderCheckFailed, EncoderMissing, assemble, check_folder, read_checksums

from .conftest import SHARED

FILES = {"config.json": b'{"model_type": "mpnet"}', "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}


def split_zip(folder, entries: dict[str, bytes], pieces: int = 3) -> list:
    """A zip of `entries`, cut into `pieces` files as the part packages hold it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    blob = buffer.getvalue()
    size = -(-len(blob) // pieces)
    paths = []
    for i in range(pieces):
        path = folder / f"model.zip.{i + 1:03d}"
        path.write_bytes(blob[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def sums_of(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_the_pieces_are_joined_and_only_the_listed_files_are_kept(tmp_path):
    entries = {f"m/{n}": d for n, d in FILES.items()} | {"m/desktop.ini": b"[.ShellClassInfo]", "m/README.md": b"card"}
    target = assemble(split_zip(tmp_path, entries), tmp_path / "cache" / "m-1", sums_of(FILES), "m", "test model")
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == sorted(FILES) and (target / "config.json").read_bytes() == FILES["config.json"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m-1"]  # no staging folder left behind


def test_one_changed_byte_refuses_the_model_and_leaves_nothing_to_load(tmp_path):
    entries = {f"m/{n}": d for n, d in FILES.items()}
    entries["m/config.json"] = b'{"model_type": "mpneT"}'
    with pytest.raises(EncoderCheckFailed, match=r"config\.json does not match its published SHA-256"):
        assemble(split_zip(tmp_path, entries), tmp_path / "cache" / "m-1", sums_of(FILES), "m", "test model")
    assert not (tmp_path / "cache" / "m-1").exists() and list((tmp_path / "cache").iterdir()) == []


def test_a_missing_file_and_an_entry_outside_the_folder_are_refused(tmp_path):
    only_one = {"m/config.json": FILES["config.json"]}
    with pytest.raises(EncoderCheckFailed, match=r"1_Pooling/config\.json is missing"):
        assemble(split_zip(tmp_path, only_one), tmp_path / "a", sums_of(FILES), "m", "test model")
    escaping = {f"m/{n}": d for n, d in FILES.items()} | {"m/../../evil.py": b"import os"}
    with pytest.raises(EncoderCheckFailed, match="unsafe entry 'm/../../evil.py'"):
        assemble(split_zip(tmp_path, escaping), tmp_path / "b", sums_of(FILES), "m", "test model")
    assert not (tmp_path / "evil.py").exists() and not (tmp_path.parent / "evil.py").exists()


def test_a_model_folder_changed_on_disk_after_assembly_is_refused(tmp_path):
    entries = {f"m/{n}": d for n, d in FILES.items()}
    target = assemble(split_zip(tmp_path, entries), tmp_path / "m-1", sums_of(FILES), "m", "test model")
    check_folder(target, sums_of(FILES), "test model")
    (target / "config.json").write_bytes(b'{"model_type": "evil"}')
    with pytest.raises(EncoderCheckFailed, match="config.json does not match"):
        check_folder(target, sums_of(FILES), "test model")
    (target / "config.json").unlink()
    (target / "config.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(EncoderCheckFailed, match="config.json is missing"):
        check_folder(target, sums_of(FILES), "test model")


def test_a_missing_part_package_says_how_to_install_it():
    with pytest.raises(EncoderMissing, match=r"not-a-real-part-007 is not installed \(make setup installs them\)"):
        encoders.part_files(("not-a-real-part-007",))


def test_a_run_on_an_encoder_that_is_not_installed_fails_saying_what_installs_it(tmp_path, monkeypatch):
    from trainer.run import run

    from .conftest import make_run_dir, toy_config, toy_examples

    missing = dataclasses.replace(
        encoders.ENCODERS["mpnet"], locate=lambda cache: encoders.part_files(("no-part-007",))
    )
    monkeypatch.setitem(encoders.ENCODERS, "mpnet", missing)  # as if the part packages were never installed
    result = run(make_run_dir(tmp_path / "run", toy_config("mpnet", method="head"), toy_examples()))
    assert result["status"] == "failed" and "training" not in result  # recorded, not a crash
    assert result["error"].startswith("base model mpnet: all-mpnet-base-v2 needs its five part packages")


def test_the_registry_finds_encoders_by_alias_or_name_and_refuses_others():
    assert encoders.encoder("mpnet") is encoders.encoder("all-mpnet-base-v2") is encoders.MPNET
    assert encoders.encoder("minilm").dimensions == 384 and encoders.MPNET.dimensions == 768
    with pytest.raises(ValueError, match="unknown encoder 'bge'; the encoders are minilm, mpnet"):
        encoders.encoder("bge")


def test_the_shipped_checksums_are_the_upstream_list():
    shipped = read_checksums(encoders.CHECKSUMS / "all-mpnet-base-v2.sha256")
    assert "model.safetensors" in shipped and len(shipped) == 10
    upstream = SHARED / "models" / "all-mpnet-base-v2.sha256"
    if not upstream.exists():
        pytest.skip("the shared copy of the upstream checksum list is not on this machine")
    assert shipped == read_checksums(upstream)


def _mpnet_installed() -> bool:
    try:
        return all(metadata.distribution(p) for p in encoders.MPNET_PARTS)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(
    not _mpnet_installed(), reason="all-mpnet-base-v2's part packages are not installed here (make setup installs them)"
)
def test_the_real_part_packages_assemble_into_the_checked_upstream_files(tmp_path, monkeypatch):
    monkeypatch.setattr(encoders, "_checked", set())
    folder = Path(encoders.MPNET.folder(tmp_path))
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(read_checksums(encoders.CHECKSUMS / "all-mpnet-base-v2.sha256"))
    # a process that finds the folder already there checks it again before trusting it
    monkeypatch.setattr(encoders, "_checked", set())
    with open(f"{folder}/vocab.txt", "ab") as f:
        f.write(b"extra\n")
    with pytest.raises(EncoderCheckFailed, match="vocab.txt does not match"):
        encoders.MPNET.folder(tmp_path)
