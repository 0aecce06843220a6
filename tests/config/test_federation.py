"""The federation file: what a POC workspace says about its server and sites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fl_core.config.federation import federation_yaml, load_federation
from fl_core.errors import ConfigError

SLOW_BEAT = {"heartbeat_interval": 5, "heartbeat_timeout": 2}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_what_poc_prepare_writes_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text(
        federation_yaml("poc", ["site-1", "site-2"], transport="grpc", server={"max_jobs": 3})
    )
    config = load_federation(tmp_path)  # a folder means its federation.yaml
    assert config.sites == ("site-1", "site-2")
    assert config.transport.name == "grpc"
    assert config.server.listen == "grpc://127.0.0.1:0"  # the transport's own scheme
    assert config.server.max_jobs == 3
    assert config.url_file == tmp_path / "server" / "url"
    assert config.site_dir("site-2") == tmp_path / "site-2"


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"name": "p"}, "sites", "required key is missing"),
        ({"name": "p", "sites": []}, "sites", "expected a list of site names"),
        ({"name": "p", "sites": ["server"]}, "sites.0", "not 'server'"),
        ({"name": "p", "sites": ["admin"]}, "sites.0", "not 'server' or 'admin'"),
        ({"name": "p", "sites": ["a b"]}, "sites.0", "letters, digits"),
        ({"name": "p", "sites": ["s", "s"]}, "sites.1", "named twice"),
        ({"name": "p", "sites": ["admin-1"]}, "sites.0", "reserved"),
        ({"name": "p", "sites": ["s"], "server": {"max_job": 2}}, "server.max_job", "max_jobs"),
        (
            {
                "name": "p",
                "sites": ["s"],
                "server": {"heartbeat_interval": 5, "heartbeat_timeout": 2},
            },
            "server.heartbeat_timeout",
            "longer than heartbeat_interval",
        ),
        ({"name": "p", "sites": ["s"], "server": {"max_jobs": 0}}, "server.max_jobs", ">= 1"),
        ({"name": "p", "sites": ["s"], "transport": "Bad Name"}, "transport", ""),
    ],
)
def test_a_bad_federation_file_names_the_key_and_the_problem(
    tmp_path: Path, data: object, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_federation(_write(tmp_path, data))
    text = str(info.value)
    assert f": {key}:" in text and problem in text
    assert str(tmp_path / "federation.yaml") in text


def test_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fl-core poc prepare"):
        load_federation(tmp_path)


def test_broken_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_federation(_write(tmp_path, "name: [unclosed\n"))
