"""The `fl-core` command line: listing plugins, checking jobs, errors users see."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fl_core import __version__
from fl_core.testing import write_job

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"


def fl_core(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fl_core.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_plugins_lists_builtins_and_the_third_party_plugin() -> None:
    proc = fl_core("plugins")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert lines["transport_inprocess"][1:3] == ["fl-core", __version__]
    assert "transport:inprocess" in lines["transport_inprocess"]
    assert "workflow:sag" in lines["workflow_sag"]
    assert "security:none" in lines["security_none"]
    # Installed by the test set-up from tests/thirdparty_plugin, found through its entry point.
    assert lines["evaluate"][1:4] == ["flcore-evaluate", "0.3.1", "workflow:evaluate"]


def test_job_check_accepts_hello_numpy() -> None:
    proc = fl_core("job", "check", str(HELLO))
    assert proc.returncode == 0, proc.stderr
    assert "ok (job 'hello-numpy', 5 rounds, min_clients 2, workflow sag" in proc.stdout


def _job(tmp_path: Path, **changes: object) -> Path:
    job = write_job(tmp_path / "job", script="pass\n", initial_params={"w": np.zeros(1)})
    config = yaml.safe_load((job / "job.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (job / "job.yaml").write_text(yaml.safe_dump(config))
    return job


def test_missing_key_names_the_key(tmp_path: Path) -> None:
    proc = fl_core("job", "check", str(_job(tmp_path, rounds=None)))
    assert proc.returncode == 1
    assert "job.yaml: rounds: required key is missing" in proc.stderr


def test_wrong_type_names_the_key_and_the_type(tmp_path: Path) -> None:
    proc = fl_core("job", "check", str(_job(tmp_path, min_clients="two")))
    assert proc.returncode == 1
    assert "job.yaml: min_clients: expected an integer >= 1, got 'two' (str)" in proc.stderr


def test_unknown_workflow_lists_the_installed_ones(tmp_path: Path) -> None:
    proc = fl_core("run", str(_job(tmp_path, workflow="fedsomething")))
    assert proc.returncode == 1
    assert "unknown workflow 'fedsomething'" in proc.stderr
    assert "sag (plugin workflow_sag)" in proc.stderr
    assert "evaluate (plugin evaluate)" in proc.stderr


def test_unknown_transport_in_components(tmp_path: Path) -> None:
    proc = fl_core("job", "check", str(_job(tmp_path, components={"transport": "carrier-pigeon"})))
    assert proc.returncode == 1
    assert "unknown transport 'carrier-pigeon'; installed transports: grpc" in proc.stderr
    assert "tcp (plugin transport_tcp)" in proc.stderr


def test_bad_workflow_option_names_the_option(tmp_path: Path) -> None:
    workflow = {"name": "sag", "options": {"task_timeout": -3}}
    proc = fl_core("job", "check", str(_job(tmp_path, workflow=workflow)))
    assert proc.returncode == 1
    assert "workflow.options.task_timeout" in proc.stderr


def test_run_in_production_says_production_runs_from_kits() -> None:
    proc = fl_core("run", "--mode", "production", str(HELLO))
    assert proc.returncode == 2
    assert "production runs from startup kits" in proc.stderr
    assert "fl-core start KIT" in proc.stderr


def test_third_party_workflow_runs_in_the_simulator(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "n = int(flare.get_site_name().split('-')[1])\n"
        "flare.send(flare.FLModel(metrics={'accuracy': n / 10}))\n"
    )
    job = write_job(
        tmp_path / "job", script=script, workflow="evaluate", initial_params={"w": np.ones(2)}
    )
    proc = fl_core("run", str(job), "--clients", "4", "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stderr
    assert "accuracy=0.25" in proc.stdout
    final = np.load(tmp_path / "ws" / "final_model.npz")
    assert final["w"].tolist() == [1.0, 1.0]


def test_job_check_checks_the_pipes_options(tmp_path: Path) -> None:
    bad = _job(tmp_path, components={"pipe": {"name": "file", "options": {"colour": "red"}}})
    proc = fl_core("job", "check", str(bad))
    assert proc.returncode == 1
    assert "components.pipe.options.colour: `file` has no such option" in proc.stderr
    good = _job(tmp_path / "good", components={"pipe": {"name": "cell"}})
    assert fl_core("job", "check", str(good)).returncode == 0


def test_simulator_progress_in_a_log_is_plain_lines(tmp_path: Path) -> None:
    # Output to a pipe or file is not a terminal: no `\r`, so `grep '^round'` finds each round.
    # Bytes, not text: text mode would turn each `\r` into a line break.
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "run", str(HELLO), "--workspace", str(tmp_path)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stdout
    lines = proc.stdout.decode().split("\n")
    rounds = [line.split(":")[0] for line in lines if line.startswith("round ")]
    assert rounds == [f"round {n}/5" for n in range(1, 6)]


def test_version_prints_the_version_and_exits_0() -> None:
    proc = fl_core("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fl-core {__version__}"


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    """(command path, parser) for `parser` and every sub-command under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_command_argument_and_option_has_help() -> None:
    from fl_core.cli import _parser

    missing = []
    for path, parser in _parsers(_parser(), "fl-core"):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{path} {name}" for name in action.choices if name not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_names_only_arguments_that_exist() -> None:
    # `poc prepare --force` once spoke of a DIR argument there is none of.
    proc = fl_core("poc", "prepare", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "DIR" not in proc.stdout


def _earlier_run(ws: Path) -> None:
    (ws / "trainers" / "site-1").mkdir(parents=True)
    (ws / "trainers" / "site-1" / "stderr.log").write_text("earlier\n")
    (ws / "log.txt").write_text("the earlier run\n")
    (ws / "site_metrics.jsonl").write_text('{"earlier": true}\n')


def test_a_reused_workspace_starts_clean_and_the_earlier_run_is_moved_aside(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    _earlier_run(ws)
    (tmp_path / "ws.1").mkdir()  # taken: the next free name is used

    proc = fl_core("run", str(HELLO), "--workspace", str(ws))

    assert proc.returncode == 0, proc.stderr
    assert f"moved the earlier run in {ws} to {tmp_path / 'ws.2'}" in proc.stdout
    assert "the earlier run" not in (ws / "log.txt").read_text()
    assert "earlier" not in (ws / "site_metrics.jsonl").read_text()
    assert not (ws / "trainers" / "site-1" / "stderr.log").exists()
    assert (tmp_path / "ws.2" / "log.txt").read_text() == "the earlier run\n"


def test_a_workspace_holding_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")

    proc = fl_core("run", str(HELLO), "--workspace", str(tmp_path))

    assert proc.returncode == 1
    assert f"--workspace {tmp_path} is not empty and holds no earlier fl-core run" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _job_without_initial_model(tmp_path: Path) -> Path:
    # Updates what it receives, as hello-numpy does: with no initial model, nothing.
    script = (HELLO / "train.py").read_text()
    return write_job(tmp_path / "job", script=script)


def test_a_job_ending_with_an_empty_model_is_warned_about(tmp_path: Path) -> None:
    proc = fl_core(
        "run", str(_job_without_initial_model(tmp_path)), "--workspace", str(tmp_path / "ws")
    )
    assert proc.returncode == 0, proc.stderr
    assert f"warning: the final model {tmp_path / 'ws' / 'final_model.npz'} is empty" in proc.stderr
    assert "without initial_model" in proc.stderr


def test_a_job_with_a_model_gets_no_such_warning(tmp_path: Path) -> None:
    proc = fl_core("run", str(HELLO), "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
