"""Atomic writes: outputs get the user's umask modes; only stale temporaries of ours are removed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from e2e_helpers import killed_while_writing
from safetensors.torch import save_file

from sae_lens_e2e.atomic import atomic_directory, atomic_file, remove_stale_temporaries


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=oct)
def test_written_files_and_folders_get_the_umask_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        with atomic_directory(tmp_path / "folder") as tmp:  # replacing an existing one
            (tmp / "sub").mkdir()
            (tmp / "sub" / "inside.txt").write_text("y")
            save_file({"x": torch.zeros(1)}, tmp / "w.safetensors")  # safetensors makes 0600
        with atomic_file(tmp_path / "file.png") as tmp:
            tmp.write_bytes(b"x")  # as savefig does: opens the temp path it was given
        with atomic_file(tmp_path / "file.safetensors") as tmp:
            save_file({"x": torch.zeros(1)}, tmp)
    finally:
        os.umask(old)
    for folder in ("folder", "folder/sub"):
        assert _mode(tmp_path / folder) == 0o777 & ~umask
    for file in ("folder/sub/inside.txt", "folder/w.safetensors", "file.png", "file.safetensors"):
        assert _mode(tmp_path / file) == 0o666 & ~umask


def test_only_stale_temporaries_of_the_target_are_removed(tmp_path):
    stale = killed_while_writing(tmp_path / "report")
    other = killed_while_writing(tmp_path / "other")
    mine = [tmp_path / ".report.mine.tmp", tmp_path / ".report.old"]  # a user's hidden names
    for path in mine:
        path.mkdir()
    assert remove_stale_temporaries(tmp_path, "report") == [stale]
    assert not stale.exists() and other.exists() and all(p.exists() for p in mine)


def test_a_live_writers_temporary_is_kept(tmp_path):
    with atomic_directory(tmp_path / "report") as tmp:
        assert remove_stale_temporaries(tmp_path, "report") == []
        assert tmp.is_dir()
    assert (tmp_path / "report").is_dir()
