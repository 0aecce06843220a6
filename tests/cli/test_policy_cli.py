"""`fl-core policy check KIT --as NAME:ORG:ROLE ACTION`: main() on kit-shaped folders.

The `pki` provider lives elsewhere; here a small security plugin that reads
a kit's `authorization.yaml` or `site_policy.yaml` the way `pki` does is
installed for real: a distribution on `sys.path` whose entry point names it,
found by the same discovery that finds every plugin.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_core.cli import main
from fl_core.config.federation import federation_yaml
from fl_plugins.security_pki.authorization import authorization_yaml_text

PLUGIN = textwrap.dedent(
    '''
    """A security plugin that answers `authorize` from a kit's policy files."""

    from pathlib import Path

    from fl_core.spec import hookimpl
    from fl_core.spec.security import SecurityProvider
    from fl_plugins.security_pki.authorization import RightsFile
    from fl_plugins.security_pki.site_policy import SitePolicyFile


    class KitPolicy(SecurityProvider):
        def __init__(self, kit):
            kit = Path(kit)
            if (kit / "authorization.yaml").exists():
                self.policy = RightsFile(kit / "authorization.yaml")
                self.ask = self.policy.refusal
            else:
                self.policy = SitePolicyFile(kit / "site_policy.yaml")
                self.ask = self.policy.authorize

        def credentials(self, identity):
            return None

        def authorize(self, actor, action, owner=None):
            return self.ask(actor, action, owner)


    @hookimpl
    def fl_core_register_security_providers(register):
        register("kit_policy", KitPolicy)
    '''
)


@pytest.fixture(autouse=True)
def kit_policy_plugin(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path_factory.mktemp("site-packages")
    (root / "fl_core_kit_policy.py").write_text(PLUGIN)
    dist = root / "fl_core_kit_policy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fl-core-kit-policy\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[fl_core]\nkit_policy = fl_core_kit_policy\n")
    monkeypatch.syspath_prepend(str(root))
    for var in ("FL_CORE_DISABLE_PLUGIN_AUTOLOAD", "FL_CORE_BLOCK_PLUGINS", "FL_CORE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def no_console_left() -> Iterator[None]:
    # main() adds its console handler to the root logger; one left behind would
    # write into this test's closed capture during later tests.
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)


def _kit(folder: Path, security: str = "kit_policy", **files: str) -> Path:
    folder.mkdir()
    (folder / "federation.yaml").write_text(
        federation_yaml("hospital-net", ["site-1"], transport="tcp", security=security)
    )
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.fixture
def server_kit(tmp_path: Path) -> Path:
    return _kit(tmp_path / "server.example.org", authorization=authorization_yaml_text())


@pytest.fixture
def site_kit(tmp_path: Path) -> Path:
    policy = "run_job: [{org: hospital-a}, {role: project_admin}]\nlaunchers: [process]\n"
    return _kit(tmp_path / "site-1", site_policy=policy)


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_member_may_not_submit(server_kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _check(capsys, str(server_kit), "--as", "bob@b.org:b:member", "submit_job")
    assert (code, out) == (
        1,
        "refused: role 'member' (bob@b.org, org b) has no right 'submit_job'\n",
    )


def test_a_lead_may_submit_and_list(server_kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for right in ("submit_job", "list_sites", "view_job"):
        code, out, _ = _check(capsys, str(server_kit), "--as", "bob@b.org:b:lead", right)
        assert (code, out) == (0, "allowed\n"), right


def test_owner_decides_own_scope(server_kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    as_bob = ["--as", "bob@b.org:b:lead", "abort_job"]
    code, out, _ = _check(capsys, str(server_kit), *as_bob, "--owner", "bob@b.org:b")
    assert (code, out) == (0, "allowed\n")
    code, out, _ = _check(capsys, str(server_kit), *as_bob, "--owner", "alice@a.org:a")
    assert code == 1
    assert out == (
        "refused: role 'lead' (bob@b.org, org b) may abort_job only its own jobs; "
        "job submitted by alice@a.org\n"
    )


def test_the_server_kits_file_as_edited_decides(
    server_kit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (server_kit / "authorization.yaml").write_text("roles:\n  member: {submit_job: any}\n")
    code, out, _ = _check(capsys, str(server_kit), "--as", "bob@b.org:b:member", "submit_job")
    assert (code, out) == (0, "allowed\n")


def test_a_broken_file_warns_and_the_defaults_decide(
    server_kit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (server_kit / "authorization.yaml").write_text("roles:\n  member: {submit_job: maybe}\n")
    code, out, err = _check(capsys, str(server_kit), "--as", "bob@b.org:b:member", "submit_job")
    assert code == 1 and out.startswith("refused: ")
    assert "WARNING" in err and "roles.member.submit_job" in err
    assert str(server_kit / "authorization.yaml") in err


def test_an_unknown_right_is_refused(server_kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _check(capsys, str(server_kit), "--as", "r@a.org:a:project_admin", "reboot")
    assert code == 1 and out.startswith("refused: unknown right 'reboot'")


def test_a_site_kit_answers_from_its_policy(
    site_kit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _check(capsys, str(site_kit), "--as", "alice@a.org:hospital-a:member", "run_job")
    assert (code, out) == (0, "allowed\n")
    code, out, _ = _check(capsys, str(site_kit), "--as", "bob@b.org:b:lead", "run_job")
    assert code == 1
    assert out == (
        f"refused: {site_kit.resolve() / 'site_policy.yaml'}: run_job: role 'lead' "
        "(bob@b.org, org b) matches no rule (rules: [{org: hospital-a}, {role: project_admin}])\n"
    )
    code, out, _ = _check(capsys, str(site_kit), "--as", "bob@b.org:b:lead", "launcher:docker")
    assert code == 1 and "launcher 'docker' is not allowed on this site" in out
    # Keys the file leaves out keep their defaults: a lead aborts only its own jobs.
    as_lead = ["--as", "bob@b.org:b:lead", "abort_job"]
    code, out, _ = _check(capsys, str(site_kit), *as_lead, "--owner", "alice@a.org:a")
    assert code == 1 and "only its own jobs; job submitted by alice@a.org" in out


@pytest.mark.parametrize(
    "actor", ["bob@b.org", "bob@b.org:b", "bob@b.org:b:lead:x", "::lead", "a::"]
)
def test_a_bad_as_is_a_usage_error(
    server_kit: Path, capsys: pytest.CaptureFixture[str], actor: str
) -> None:
    code, out, err = _check(capsys, str(server_kit), "--as", actor, "submit_job")
    assert (code, out) == (2, "")
    assert "expected NAME:ORG:ROLE" in err


@pytest.mark.parametrize("owner", ["alice@a.org", "alice@a.org:a:lead", ":a"])
def test_a_bad_owner_is_a_usage_error(
    server_kit: Path, capsys: pytest.CaptureFixture[str], owner: str
) -> None:
    args = ["--as", "bob@b.org:b:lead", "abort_job", "--owner", owner]
    code, out, err = _check(capsys, str(server_kit), *args)
    assert (code, out) == (2, "")
    assert "expected NAME:ORG" in err


def test_as_is_required(server_kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "check", str(server_kit), "submit_job"])
    assert info.value.code == 2
    assert "--as" in capsys.readouterr().err


def test_a_folder_without_a_kit_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _check(capsys, str(tmp_path), "--as", "bob@b.org:b:lead", "submit_job")
    assert (code, out) == (1, "")
    assert f"{tmp_path}: not a startup kit: no federation.yaml" in err


def test_a_missing_kit_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(capsys, str(tmp_path / "nowhere"), "--as", "b@b:b:lead", "submit_job")
    assert (code, out) == (1, "")
    assert "not found" in err


def test_security_none_has_no_policy_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = _kit(tmp_path / "poc", security="none")
    code, out, err = _check(capsys, str(kit), "--as", "bob@b.org:b:lead", "submit_job")
    assert (code, out) == (1, "")
    assert "security: `none` enforces no policy" in err and "fl-core provision" in err


def test_an_unknown_security_provider_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = _kit(tmp_path / "kit", security="vault")
    code, out, err = _check(capsys, str(kit), "--as", "bob@b.org:b:lead", "submit_job")
    assert (code, out) == (1, "")
    assert "unknown security 'vault'" in err and "kit_policy (plugin kit_policy)" in err


# --- with real kits from fl-core provision ------------------------------------------------

REAL_PROJECT = """\
project: real
server: {name: server.example.org, port: 8002, org: ops}
sites: [{name: site-1, org: hospital-a}]
admins: [{name: boss@a.org, org: hospital-a, role: project_admin}]
"""


@pytest.fixture(scope="module")
def real_kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fl_core.provision import provision

    folder = tmp_path_factory.mktemp("real-kits")
    (folder / "project.yml").write_text(REAL_PROJECT)
    provision(folder / "project.yml", folder / "out")
    return folder / "out" / "real"


@pytest.mark.parametrize(
    ("kit", "who", "action", "code", "said"),
    [
        ("server.example.org", "m@b.org:hospital-b:member", "submit_job", 1, "has no right"),
        ("server.example.org", "l@b.org:hospital-b:lead", "submit_job", 0, "allowed"),
        ("server.example.org", "o@b.org:hospital-b:org_admin", "shutdown", 1, "'shutdown'"),
        ("site-1", "l@b.org:hospital-b:lead", "run_job", 0, "allowed"),
        ("site-1", "m@b.org:hospital-b:member", "run_job", 1, "site_policy.yaml: run_job"),
        ("site-1", "boss@a.org:hospital-a:project_admin", "launcher:docker", 1, "docker"),
    ],
)
def test_a_provisioned_kit_decides_as_its_participant_would(
    real_kits: Path,
    capsys: pytest.CaptureFixture[str],
    kit: str,
    who: str,
    action: str,
    code: int,
    said: str,
) -> None:
    assert main(["policy", "check", str(real_kits / kit), "--as", who, action]) == code
    out = capsys.readouterr().out
    assert said in out, out


def test_an_edit_of_the_site_policy_shows_at_once(
    real_kits: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = real_kits / "site-1" / "site_policy.yaml"
    saved = policy.read_text()
    try:
        policy.write_text("run_job: [{org: hospital-b}]\n")
        assert (
            main(
                [
                    "policy",
                    "check",
                    str(real_kits / "site-1"),
                    "--as",
                    "l@b.org:hospital-b:lead",
                    "run_job",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "policy",
                    "check",
                    str(real_kits / "site-1"),
                    "--as",
                    "boss@a.org:hospital-a:project_admin",
                    "run_job",
                ]
            )
            == 1
        )
    finally:
        policy.write_text(saved)
    assert "refused" in capsys.readouterr().out
