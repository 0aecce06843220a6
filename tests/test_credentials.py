"""POC credentials: one secret per admin and site, private files, checked when read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fl_core.cli.poc_federation import prepare
from fl_core.credentials import CredentialError, new_secret, read_secret, write_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prepare_gives_the_admin_and_each_site_a_secret_of_its_own(tmp_path: Path) -> None:
    config = prepare(tmp_path / "poc", 2)
    own = {
        "admin": config.admin_key_file,
        "site-1": config.site_key_file("site-1"),
        "site-2": config.site_key_file("site-2"),
    }
    secrets = {party: read_secret(path) for party, path in own.items()}
    assert len(set(secrets.values())) == 3  # nobody's secret proves anybody else
    for party, path in own.items():
        # The server parent holds its own copy of each, to check proofs against.
        assert read_secret(config.server_key_file(party)) == secrets[party]
        for key_file in (path, config.server_key_file(party)):
            assert _mode(key_file) == 0o600
            assert _mode(key_file.parent) == 0o700
    # A site's folder holds its own secret only.
    site_1 = config.site_dir("site-1")
    assert [p.name for p in site_1.rglob("*.key")] == ["site.key"]


def test_prepare_makes_private_files_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        config = prepare(tmp_path / "poc", 1)
    finally:
        os.umask(old)
    assert _mode(config.admin_key_file) == 0o600
    assert _mode(config.admin_key_file.parent) == 0o700


@pytest.mark.parametrize(
    ("file_mode", "folder_mode", "problem"),
    [
        (0o644, 0o700, r"the file is open to others \(mode 0644\); run `chmod 600"),
        (0o640, 0o700, "mode 0640"),
        (0o600, 0o755, r"the folder is open to others \(mode 0755\); run `chmod 700"),
    ],
)
def test_a_secret_others_could_read_is_refused(
    tmp_path: Path, file_mode: int, folder_mode: int, problem: str
) -> None:
    path = tmp_path / "creds" / "admin.key"
    write_secret(path, new_secret())
    os.chmod(path, file_mode)
    os.chmod(path.parent, folder_mode)
    with pytest.raises(CredentialError, match=problem):
        read_secret(path)


def test_a_secret_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "creds" / "admin.key"
    write_secret(path, new_secret())
    os.chown(path, 65534, 65534)  # nobody's: the tests run as root
    with pytest.raises(CredentialError, match="belongs to uid 65534"):
        read_secret(path)


@pytest.mark.parametrize("content", [b"", b"abc\n", b"zz" * 32 + b"\n", b"00" * 600])
def test_a_malformed_secret_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "creds" / "admin.key"
    write_secret(path, new_secret())
    path.write_bytes(content)
    with pytest.raises(CredentialError, match="expected 64 hex digits"):
        read_secret(path)


def test_a_link_in_place_of_a_secret_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "creds" / "real.key"
    write_secret(real, new_secret())
    link = tmp_path / "creds" / "admin.key"
    link.symlink_to(real)
    with pytest.raises(CredentialError, match="cannot be read"):
        read_secret(link)


def test_a_secret_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "creds" / "admin.key"
    write_secret(path, new_secret())
    with pytest.raises(FileExistsError):
        write_secret(path, new_secret())
