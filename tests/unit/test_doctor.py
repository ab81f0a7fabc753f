from __future__ import annotations

from pathlib import Path

from fleetimg.doctor import check_qemu_binfmt


def entry(tmp_path: Path, text: str) -> Path:
    (tmp_path / "qemu-aarch64").write_text(text)
    return tmp_path


def test_binfmt_enabled_with_f(tmp_path: Path) -> None:
    d = entry(tmp_path, "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n"
              "flags: PF\noffset 0\n")
    assert check_qemu_binfmt(d).ok


def test_binfmt_without_f_flag_fails_with_fix(tmp_path: Path) -> None:
    d = entry(tmp_path, "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\noffset 0\n")
    check = check_qemu_binfmt(d)
    assert not check.ok and "F flag" in check.detail
    assert check.fix is not None and "update-binfmts" in check.fix


def test_binfmt_disabled_or_missing(tmp_path: Path) -> None:
    assert not check_qemu_binfmt(tmp_path).ok
    check = check_qemu_binfmt(entry(tmp_path, "disabled\nflags: PF\n"))
    assert not check.ok and check.fix is not None and "mount -t binfmt_misc" in check.fix
