"""PROJECT.yml validation: every problem named by file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fl_core.config._checks import ConfigErrors
from fl_core.errors import ConfigError
from fl_core.provision import load_project


def _base() -> dict[str, Any]:
    return {
        "project": "hospital-net",
        "transport": "grpc",
        "server": {"name": "server.example.org", "port": 8002, "org": "nvidia"},
        "sites": [{"name": "site-1", "org": "hospital-a"}, {"name": "site-2", "org": "hospital-b"}],
        "admins": [{"name": "admin@hospital-a.org", "org": "hospital-a", "role": "project_admin"}],
    }


def _load(tmp_path: Path, data: object) -> Any:
    path = tmp_path / "PROJECT.yml"
    path.write_text(yaml.safe_dump(data))
    return load_project(path)


def _errors(tmp_path: Path, data: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    errors = info.value.errors if isinstance(info.value, ConfigErrors) else [info.value]
    for error in errors:
        assert error.source == str(tmp_path / "PROJECT.yml")
    return {error.key: error.problem for error in errors}


def test_a_good_project_loads_with_its_defaults(tmp_path: Path) -> None:
    project = _load(tmp_path, _base())
    assert project.name == "hospital-net"
    assert project.host == "server.example.org"  # host defaults to the server's name
    assert project.port == 8002
    assert project.valid_days == 365
    assert [(p.name, p.role) for p in project.participants] == [
        ("server.example.org", "server"),
        ("site-1", "site"),
        ("site-2", "site"),
        ("admin@hospital-a.org", "project_admin"),
    ]


def test_transport_defaults_to_grpc_and_tcp_is_allowed(tmp_path: Path) -> None:
    data = _base()
    del data["transport"]
    assert _load(tmp_path, data).transport == "grpc"
    assert _load(tmp_path, {**data, "transport": "tcp"}).transport == "tcp"


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"transport": "udp"}, "transport", "grpc, tcp"),
        ({"project": "a/b"}, "project", "folder name"),
        ({"valid_days": 0}, "valid_days", ">= 1"),
        ({"server": {"name": "bad_host!", "port": 8002}}, "server.name", "host name"),
        ({"server": {"name": "10.0.0.1", "port": 8002}}, "server.name", "host name"),
        ({"server": {"name": "s.example.org", "port": 0}}, "server.port", ">= 1"),
        ({"server": {"name": "s.example.org", "port": 65536}}, "server.port", "<= 65535"),
        ({"server": {"name": "s.example.org", "port": "80"}}, "server.port", "integer"),
        ({"server": {"name": "s.example.org"}}, "server.port", "missing"),
        ({"server": {"name": "s", "port": 1, "host": "a b"}}, "server.host", "host name"),
        ({"sites": [{"name": "server", "org": "a"}]}, "sites.0.name", "not 'server'"),
        ({"sites": [{"name": "admin", "org": "a"}]}, "sites.0.name", "not 'server'"),
        ({"sites": [{"name": "site.1", "org": "a"}]}, "sites.0.name", "site name"),
        ({"sites": [{"name": "site-1"}]}, "sites.0.org", "missing"),
        ({"sites": [{"name": "site-1", "org": "a", "x": 1}]}, "sites.0.x", "unknown key"),
        ({"admins": [{"name": "bob", "org": "a", "role": "lead"}]}, "admins.0.name", "email"),
        (
            {"admins": [{"name": "b@a.org", "org": "a", "role": "root"}]},
            "admins.0.role",
            "project_admin, org_admin, lead, member",
        ),
        ({"colour": "red"}, "colour", "unknown key"),
    ],
)
def test_each_problem_names_its_key(
    tmp_path: Path, change: dict[str, Any], key: str, words: str
) -> None:
    errors = _errors(tmp_path, {**_base(), **change})
    assert key in errors, errors
    assert words in errors[key]


def test_duplicate_names_are_refused_wherever_they_are(tmp_path: Path) -> None:
    data = _base()
    data["sites"].append({"name": "site-1", "org": "hospital-c"})
    data["admins"].append({"name": "admin@hospital-a.org", "org": "x", "role": "member"})
    errors = _errors(tmp_path, data)
    assert "already named by sites.0.name" in errors["sites.2.name"]
    assert "already named by admins.0.name" in errors["admins.1.name"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {**_base(), "transport": "udp", "valid_days": -1}
    data["sites"] = [{"name": "server", "org": "a"}]
    assert set(_errors(tmp_path, data)) == {"transport", "valid_days", "sites.0.name"}


def test_missing_file_and_bad_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"project file not found"):
        load_project(tmp_path / "nope.yml")
    (tmp_path / "PROJECT.yml").write_text("project: [")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_project(tmp_path / "PROJECT.yml")
