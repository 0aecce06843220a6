"""Numbers in config files: every bad one is a `ConfigError` naming the file and the key.

YAML turns text into ints and floats before any check runs, so a value such
as 5,000 nines, `.inf`, `.nan` or `yes` must not escape as a Python error
(`ValueError: Exceeds the limit (4300 digits)`, `OverflowError`) that names
neither the file nor the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_core.config import load_job
from fl_core.config.federation import load_federation
from fl_core.config.options import check_options
from fl_core.errors import ConfigError

JOB = """\
name: numbers
min_clients: 1
rounds: 1
executor:
  script: train.py
"""

FEDERATION = """\
name: poc
sites: [site-1]
server:
  heartbeat_interval: 1.0
  heartbeat_timeout: 5.0
"""

# YAML text that parses to something no count or duration may be.
NASTY = [
    "9" * 5000,  # more digits than Python converts
    "-" + "9" * 5000,
    "9" * 400,  # converts, but no float holds it
    "1e999",  # YAML reads it as inf
    ".inf",
    "-.inf",
    ".nan",
    "yes",
    "true",
    "0",
    "-1",
    "0x7fffffffffffffffff",
    "2.5",
    "'3'",
    "[1]",
    "{a: 1}",
]

JOB_KEYS = {
    "rounds": "rounds",
    "min_clients": "min_clients",
    "schedule_timeout": "schedule_timeout",
    "executor.task_timeout": "executor.task_timeout",
}


def _job(tmp_path: Path, key: str, text: str) -> Path:
    folder = tmp_path / "job"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text("")
    lines = [line for line in JOB.splitlines() if not line.startswith(key + ":")]
    if key.startswith("executor."):
        lines.append(f"  {key.split('.', 1)[1]}: {text}")
    else:
        lines.insert(1, f"{key}: {text}")
    (folder / "job.yaml").write_text("\n".join(lines) + "\n")
    return folder


def _error(load: object, path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize("text", NASTY, ids=[t[:12] for t in NASTY])
@pytest.mark.parametrize("key", sorted(JOB_KEYS))
def test_a_nasty_number_in_job_yaml_names_the_file_and_the_key(
    tmp_path: Path, key: str, text: str
) -> None:
    if text in ("2.5",) and "timeout" in key:
        pytest.skip("2.5 seconds is a fine timeout")
    err = _error(load_job, _job(tmp_path, key, text))
    assert err.source == str(tmp_path / "job" / "job.yaml")
    assert err.key == JOB_KEYS[key]
    # The message stays readable: a huge number is described, not printed.
    assert len(str(err)) < 400


def test_five_thousand_nines_say_how_many_digits(tmp_path: Path) -> None:
    err = _error(load_job, _job(tmp_path, "rounds", "9" * 5000))
    assert str(err).endswith(
        "rounds: expected an integer >= 1 and <= 2147483647, got a number of 5000 digits"
    )


@pytest.mark.parametrize(
    "text", [t for t in NASTY if t != "2.5"], ids=[t[:12] for t in NASTY if t != "2.5"]
)
@pytest.mark.parametrize(
    "key", ["heartbeat_interval", "heartbeat_timeout", "job_start_timeout", "max_jobs"]
)
def test_a_nasty_number_in_federation_yaml_names_the_file_and_the_key(
    tmp_path: Path, key: str, text: str
) -> None:
    lines = [line for line in FEDERATION.splitlines() if not line.strip().startswith(key + ":")]
    lines.append(f"  {key}: {text}")
    path = tmp_path / "federation.yaml"
    path.write_text("\n".join(lines) + "\n")
    err = _error(load_federation, path)
    assert err.source == str(path)
    assert err.key == f"server.{key}"


@pytest.mark.parametrize(
    "value",
    [float("inf"), float("-inf"), float("nan"), 10**5000, True, -(10**400)],
    ids=["inf", "-inf", "nan", "5001 digits", "bool", "-401 digits"],
)
def test_a_nasty_component_option_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_options("pipe", "file", {"timeout": value}, {"timeout": float})
    assert info.value.key == "components.pipe.options.timeout"
    assert len(str(info.value)) < 300


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.from_regex(r"[0-9][0-9._eE+x-]{0,29}", fullmatch=True),
    )
)
def test_any_rounds_value_loads_or_names_the_key(tmp_path: Path, value: object) -> None:
    text = repr(value) if isinstance(value, float) else str(value)
    text = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(text, text)
    job = _job(tmp_path, "rounds", text)
    try:
        config = load_job(job)
    except ConfigError as exc:
        assert exc.key == "rounds"
        assert exc.source == str(job / "job.yaml")
    else:
        assert isinstance(config.rounds, int) and 1 <= config.rounds <= 2**31 - 1


def test_every_problem_of_a_job_file_is_listed(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.yaml").write_text(
        "name: ok\nmin_clients: .nan\nrounds: " + "9" * 5000 + "\nround: 3\n"
        "executor:\n  script: missing.py\n  task_timeout: -1\n"
    )
    err = _error(load_job, folder)
    keys = [line.split(": ")[1] for line in str(err).splitlines()]
    assert keys == ["round", "min_clients", "rounds", "executor.script", "executor.task_timeout"]


def test_every_problem_of_a_federation_file_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text(
        "name: poc\nsites: [site-1, server]\nserver:\n  max_jobs: .inf\n  heartbeat_interval: no\n"
    )
    err = _error(load_federation, path)
    keys = [line.split(": ")[1] for line in str(err).splitlines()]
    assert keys == ["server.heartbeat_interval", "server.max_jobs", "sites.1"], str(err)
