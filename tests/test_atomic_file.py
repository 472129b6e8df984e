"""Atomic file writes and the early writability check used by ``fid-metric stats -o``."""

from __future__ import annotations

import os

import pytest

from fid_metric._files.atomic_file import atomic_write, check_writable


def test_check_writable_names_the_problem_and_leaves_nothing(tmp_path) -> None:
    (tmp_path / "a_file").write_text("")
    (tmp_path / "folder.npz").mkdir()
    cases = {
        tmp_path / "missing" / "out.npz": r"cannot write .*out\.npz: folder .*missing does not exist",
        tmp_path / "a_file" / "out.npz": r"cannot write .*out\.npz: .*a_file is not a folder",
        tmp_path / "folder.npz": r"cannot write .*folder\.npz: it is a directory",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_writable(path)
    check_writable(tmp_path / "out.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder.npz"]


def test_check_writable_reports_missing_permission(tmp_path, monkeypatch) -> None:
    """The OS refuses (as it does for a non-root user in a read-only folder; root is not refused, hence the patch)."""
    real_open = os.open

    def refuse_in_tmp(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_in_tmp)
    with pytest.raises(ValueError, match=r"cannot write .*out\.npz: no permission to create files in"):
        check_writable(tmp_path / "out.npz")


def test_check_writable_refuses_a_read_only_file(tmp_path, monkeypatch) -> None:
    """An existing file without write permission is not replaced (root has it anyway, hence the patch)."""
    (tmp_path / "ref.npz").write_bytes(b"old")
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: not str(path).endswith("ref.npz"))
    with pytest.raises(ValueError, match=r"cannot write .*ref\.npz: the file is read-only"):
        check_writable(tmp_path / "ref.npz")
    with pytest.raises(ValueError, match="read-only"):
        atomic_write(tmp_path / "ref.npz", lambda file: file.write(b"new"))
    assert (tmp_path / "ref.npz").read_bytes() == b"old"


def test_atomic_write_gives_the_permissions_open_gives(tmp_path) -> None:
    """Not mkstemp's 0600: a reference statistics file in a shared folder stays readable by the group."""
    with open(tmp_path / "plain", "wb"):
        pass
    atomic_write(tmp_path / "atomic", lambda file: file.write(b"data"))
    assert (tmp_path / "atomic").read_bytes() == b"data"
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_atomic_write_through_a_symlink_replaces_its_target(tmp_path) -> None:
    """As ``open(path, "wb")`` did: the link stays a link and the file it names gets the new content."""
    (tmp_path / "real.npz").write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(tmp_path / "real.npz")
    atomic_write(tmp_path / "link.npz", lambda file: file.write(b"new"))
    assert (tmp_path / "link.npz").is_symlink() and (tmp_path / "real.npz").read_bytes() == b"new"
