"""`fl-core provision`: kits written, the CA's place and its warning, errors by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_core.cli import main

PROJECT = """\
project: net
server: {name: server.example.org, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}]
admins: [{name: boss@a.org, org: hospital-a, role: project_admin}]
"""


def _project(tmp_path: Path, text: str = PROJECT) -> str:
    (tmp_path / "PROJECT.yml").write_text(text)
    return str(tmp_path / "PROJECT.yml")


def test_one_line_per_kit_then_the_ca_and_its_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["provision", _project(tmp_path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    kits = [line for line in lines if line.startswith("kit ")]
    assert kits == [
        f"kit {out / 'net' / 'server.example.org'}  (server, org nvidia)",
        f"kit {out / 'net' / 'site-1'}  (site, org hospital-a)",
        f"kit {out / 'net' / 'boss@a.org'}  (project_admin, org hospital-a)",
    ]
    assert lines[-1].startswith(f"CA: {out / 'net' / 'ca'}")
    assert "never ship ca/" in lines[-1]


def test_add_and_revoke_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, out = _project(tmp_path), str(tmp_path / "out")
    assert main(["provision", project, "--out", out]) == 0
    _project(tmp_path, PROJECT.replace("sites: [", "sites: [{name: site-2, org: b}, "))
    capsys.readouterr()
    assert main(["provision", project, "--out", out, "--add", "site-2"]) == 0
    kits = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kit ")]
    assert kits == [f"kit {tmp_path / 'out' / 'net' / 'site-2'}  (site, org b)"]
    assert main(["provision", project, "--out", out, "--revoke", "site-2"]) == 0
    text = capsys.readouterr().out
    assert "revoked site-2 (site, serial" in text
    assert "copied it into 4 kit(s); copy it to each kit on its own machine" in text


def test_the_passphrase_comes_from_the_environment_never_argv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, out = _project(tmp_path), str(tmp_path / "out")
    monkeypatch.delenv("FL_TEST_KIT_PASS", raising=False)
    assert main(["provision", project, "--out", out, "--passphrase-env", "FL_TEST_KIT_PASS"]) == 2
    assert "FL_TEST_KIT_PASS is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("FL_TEST_KIT_PASS", "pw")
    assert main(["provision", project, "--out", out, "--passphrase-env", "FL_TEST_KIT_PASS"]) == 0
    assert "key encrypted" in capsys.readouterr().out
    key = tmp_path / "out" / "net" / "site-1" / "credentials" / "key.pem"
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_new_ca_says_every_old_kit_stops_working(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, out = _project(tmp_path), str(tmp_path / "out")
    assert main(["provision", project, "--out", out]) == 0
    capsys.readouterr()
    assert main(["provision", project, "--out", out, "--new-ca"]) == 0
    assert "no longer works" in capsys.readouterr().out


def test_every_problem_of_the_project_file_is_an_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = PROJECT.replace("port: 8002", "port: 0").replace("site-1", "server")
    project = _project(tmp_path, bad)
    assert main(["provision", project, "--out", str(tmp_path / "out")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[2] for line in lines] == ["server.port", "sites.0.name"]
    assert all(line.startswith(f"error: {project}: ") for line in lines)


def test_refusals_exit_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, out = _project(tmp_path), str(tmp_path / "out")
    assert main(["provision", project, "--out", out, "--revoke", "site-1"]) == 1
    assert "no CA in" in capsys.readouterr().err


def test_add_revoke_and_new_ca_go_one_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["provision", _project(tmp_path), "--out", "o", "--add", "a", "--revoke", "b"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
