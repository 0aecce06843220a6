"""Tests of `fl_core.config`: reading and validating a job folder's `job.yaml`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from fl_core.config import (
    ComponentChoice,
    ExecutorConfig,
    JobConfig,
    LaunchMode,
    load_job,
    parse_job,
)
from fl_core.errors import ConfigError

EXAMPLE = """\
name: hello-numpy
min_clients: 2
rounds: 5
initial_model: initial_model.npz
workflow:            # either a string "sag" or a mapping {name: sag, options: {...}}
  name: sag
  options: {task_timeout: 30}
executor:
  script: train.py
  args: ["--delta", "1"]
  launch: per_task
  task_timeout: 120
components:
  transport: inprocess
  security: {name: none, options: {}}
"""

MINIMAL: dict[str, Any] = {
    "name": "hello",
    "min_clients": 1,
    "rounds": 1,
    "executor": {"script": "train.py"},
}

TOP_KEYS = (
    "components, executor, initial_model, min_clients, name, rounds, schedule_timeout, workflow"
)
JOB_NAME_TEXT = (
    "a job name of 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
)
PLUGIN_NAME_TEXT = (
    "a component name (lowercase letters, digits, '_' or '-', starting with a letter)"
)
QUOTE_HINT = "; YAML read it as a non-string, put it in quotes"
TIMEOUT_TEXT = "expected a number of seconds > 0, or null for no limit"

_DELETE = object()


def make_job(
    tmp_path: Path,
    text: str | None = None,
    files: tuple[str, ...] = ("train.py", "initial_model.npz"),
) -> Path:
    """A job folder with `job.yaml` (unless `text` is None) and empty `files`."""
    job = tmp_path / "job"
    job.mkdir()
    for name in files:
        (job / name).write_text("")
    if text is not None:
        (job / "job.yaml").write_text(text)
    return job


def job_with(tmp_path: Path, changes: dict[str, Any]) -> Path:
    """A job folder whose config is MINIMAL with dotted keys set (`_DELETE` removes one)."""
    data = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return make_job(tmp_path, yaml.safe_dump(data, sort_keys=False))


def load_error(job: Path | str) -> ConfigError:
    """The `ConfigError` that loading `job` must raise."""
    with pytest.raises(ConfigError) as info:
        load_job(job)
    return info.value


# --- valid configs ---------------------------------------------------------------


def test_example_parses_into_exact_values(tmp_path: Path) -> None:
    job = make_job(tmp_path, EXAMPLE).resolve()

    config = load_job(job)

    assert config == JobConfig(
        source=job / "job.yaml",
        job_dir=job,
        name="hello-numpy",
        min_clients=2,
        rounds=5,
        workflow=ComponentChoice("sag", {"task_timeout": 30}),
        executor=ExecutorConfig(
            script=job / "train.py",
            args=("--delta", "1"),
            launch=LaunchMode.PER_TASK,
            task_timeout=120.0,
        ),
        initial_model=job / "initial_model.npz",
        components={
            "transport": ComponentChoice("inprocess", {}),
            "security": ComponentChoice("none", {}),
        },
    )
    assert isinstance(config.executor.task_timeout, float)
    assert config.executor.launch is LaunchMode.PER_TASK


def test_minimal_config_gets_the_defaults(tmp_path: Path) -> None:
    job = job_with(tmp_path, {})

    config = load_job(str(job))  # a str path works as well as a Path

    assert config.workflow == ComponentChoice("sag", {})
    assert config.executor == ExecutorConfig(script=job.resolve() / "train.py")
    assert config.executor.args == ()
    assert config.executor.launch is LaunchMode.PER_TASK
    assert config.executor.task_timeout is None
    assert config.initial_model is None
    assert config.components == {}


def test_short_forms_and_nulls_for_optional_keys(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        "name: a.b_c-1\nmin_clients: 3\nrounds: 7\nworkflow: cyclic\n"
        "executor:\n  script: train.py\n  launch: once\n  task_timeout: 0.5\n  args:\n"
        "components:\n  pipe: {name: file, options:}\n  launcher: process\n"
        "initial_model:\n",
    )

    config = load_job(job)

    assert config.name == "a.b_c-1"
    assert config.workflow == ComponentChoice("cyclic", {})
    assert config.executor.launch is LaunchMode.ONCE
    assert config.executor.task_timeout == 0.5
    assert config.executor.args == ()
    assert config.initial_model is None
    assert config.components == {
        "pipe": ComponentChoice("file", {}),
        "launcher": ComponentChoice("process", {}),
    }


def test_paths_that_wander_but_end_inside_are_resolved(tmp_path: Path) -> None:
    job = make_job(tmp_path, None)
    (job / "src").mkdir()
    (job / "src" / "train.py").write_text("")
    (job / "job.yaml").write_text(
        yaml.safe_dump({**MINIMAL, "executor": {"script": "./src/../src/train.py", "args": [""]}})
    )

    config = load_job(job)

    assert config.executor.script == job.resolve() / "src" / "train.py"
    assert config.executor.args == ("",)


def test_parse_job_validates_a_mapping_from_code(tmp_path: Path) -> None:
    job = make_job(tmp_path, None)
    source = job / "from-code"

    config = parse_job({**MINIMAL, "rounds": 4}, job, source)
    assert config.rounds == 4
    assert config.source == source
    assert config.executor.script == job.resolve() / "train.py"

    with pytest.raises(ConfigError) as info:
        parse_job({**MINIMAL, "rounds": 0}, job, source)
    assert info.value.source == str(source)
    assert info.value.key == "rounds"


# --- the folder and the file ---------------------------------------------------------


def test_missing_job_folder(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope")
    assert (err.source, err.key, err.problem) == (
        str((tmp_path / "nope").resolve()),
        "",
        "job folder not found",
    )


def test_job_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "job").write_text("")
    err = load_error(tmp_path / "job")
    assert err.key == ""
    assert err.problem == "expected a job folder, but this is not a folder"


def test_missing_job_yaml_names_the_folder(tmp_path: Path) -> None:
    job = make_job(tmp_path, None)
    err = load_error(job)
    assert err.source == str(job.resolve())
    assert err.key == ""
    assert err.problem == "no job.yaml in the job folder"
    assert str(err) == f"{job.resolve()}: no job.yaml in the job folder"


def test_job_yml_gets_a_rename_hint(tmp_path: Path) -> None:
    job = make_job(tmp_path, None)
    (job / "job.yml").write_text(yaml.safe_dump(MINIMAL))
    err = load_error(job)
    assert err.problem == "no job.yaml in the job folder; found job.yml, rename it to job.yaml"


def test_job_yaml_that_is_a_folder(tmp_path: Path) -> None:
    job = make_job(tmp_path, None)
    (job / "job.yaml").mkdir()
    assert load_error(job).problem == "job.yaml is not a file"


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    job = make_job(tmp_path, "name: a\n  rounds: 3\n")
    err = load_error(job)
    assert err.source == str(job.resolve() / "job.yaml")
    assert err.key == ""
    assert err.problem == "invalid YAML at line 2, column 9: mapping values are not allowed here"


def test_yaml_syntax_error_mentions_the_context(tmp_path: Path) -> None:
    err = load_error(make_job(tmp_path, "name: a\nrounds: [3\n"))
    assert err.problem == (
        "invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 2)"
    )


def test_python_tags_are_refused_because_loading_is_safe(tmp_path: Path) -> None:
    err = load_error(make_job(tmp_path, "name: !!python/object/apply:os.getcwd []\n"))
    assert err.key == ""
    assert err.problem.startswith("invalid YAML at line 1, column 7: ")
    assert "python/object/apply:os.getcwd" in err.problem


def test_bytes_that_are_not_text(tmp_path: Path) -> None:
    job = make_job(tmp_path, None)
    (job / "job.yaml").write_bytes(b"name: \xff\xfe\n")
    err = load_error(job)
    assert err.key == ""
    assert err.problem.startswith("cannot read the file as text: ")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    err = load_error(make_job(tmp_path, text))
    assert err.key == ""
    assert err.problem == (
        "the file is empty; expected a mapping with the keys name, min_clients, rounds, executor"
    )


@pytest.mark.parametrize(
    ("text", "got"),
    [("- name: a\n", "[{'name': 'a'}] (list)"), ("hello\n", "'hello' (str)")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    err = load_error(make_job(tmp_path, text))
    assert err.key == ""
    assert err.problem == f"expected a mapping of job settings at the top level, got {got}"


# --- required keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("name", JOB_NAME_TEXT),
        ("min_clients", "an integer >= 1"),
        ("rounds", "an integer >= 1"),
        ("executor", "a mapping with at least 'script'"),
        ("executor.script", "the path of a .py file, relative to the job folder"),
    ],
)
def test_missing_required_key_is_named(tmp_path: Path, key: str, expected: str) -> None:
    err = load_error(job_with(tmp_path, {key: _DELETE}))
    assert err.key == key
    assert err.problem == f"required key is missing (expected {expected})"
    assert "required key is missing" in str(err)


def test_several_missing_keys_are_all_listed(tmp_path: Path) -> None:
    err = load_error(make_job(tmp_path, "name: x\n"))
    assert err.key == "min_clients"
    assert err.problem == "required key is missing (expected an integer >= 1)"
    lines = str(err).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["min_clients", "rounds", "executor"]
    assert all(line.startswith(str(tmp_path / "job" / "job.yaml")) for line in lines)


# --- wrong values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({"rounds": "three"}, "rounds", "expected an integer >= 1, got 'three' (str)"),
        ({"rounds": 0}, "rounds", "expected an integer >= 1, got 0 (int)"),
        ({"rounds": True}, "rounds", "expected an integer >= 1, got True (bool)"),
        ({"rounds": 2.0}, "rounds", "expected an integer >= 1, got 2.0 (float)"),
        ({"min_clients": None}, "min_clients", "expected an integer >= 1, got null"),
        ({"min_clients": "2"}, "min_clients", "expected an integer >= 1, got '2' (str)"),
        ({"name": 123}, "name", f"expected {JOB_NAME_TEXT}, got 123 (int){QUOTE_HINT}"),
        ({"name": ""}, "name", f"expected {JOB_NAME_TEXT}, got '' (str)"),
        ({"name": "my job"}, "name", f"expected {JOB_NAME_TEXT}, got 'my job' (str)"),
        ({"name": "-lead"}, "name", f"expected {JOB_NAME_TEXT}, got '-lead' (str)"),
        (
            {"name": "a" * 65},
            "name",
            f"expected {JOB_NAME_TEXT}, got '{'a' * 56}... (str); it has 65 characters",
        ),
        (
            {"workflow": 5},
            "workflow",
            "expected a component name or a mapping with 'name' and 'options', got 5 (int)",
        ),
        (
            {"workflow": "SAG"},
            "workflow",
            f"expected {PLUGIN_NAME_TEXT}, got 'SAG' (str); did you mean 'sag'?",
        ),
        ({"workflow": "s a g"}, "workflow", f"expected {PLUGIN_NAME_TEXT}, got 's a g' (str)"),
        (
            {"workflow": {"name": 3}},
            "workflow.name",
            f"expected {PLUGIN_NAME_TEXT}, got 3 (int){QUOTE_HINT}",
        ),
        (
            {"workflow": {"name": "sag", "options": [1]}},
            "workflow.options",
            "expected a mapping of options, got [1] (list)",
        ),
        (
            {"workflow": {"name": "sag", "options": {1: "x"}}},
            "workflow.options",
            "option names must be strings, got 1 (int)",
        ),
        (
            {"executor": "train.py"},
            "executor",
            "expected a mapping with at least 'script', got 'train.py' (str)",
        ),
        (
            {"executor.script": 5},
            "executor.script",
            f"expected a relative path to a .py file, got 5 (int){QUOTE_HINT}",
        ),
        (
            {"executor.args": "--delta 1"},
            "executor.args",
            'expected a list of strings, e.g. ["--delta", "1"], got \'--delta 1\' (str)',
        ),
        (
            {"executor.args": ["--delta", 1]},
            "executor.args[1]",
            f"expected a string, got 1 (int){QUOTE_HINT}",
        ),
        (
            {"executor.launch": "perTask"},
            "executor.launch",
            "expected one of: once, per_task, got 'perTask' (str); did you mean 'per_task'?",
        ),
        (
            {"executor.launch": True},
            "executor.launch",
            "expected one of: once, per_task, got True (bool)",
        ),
        ({"executor.task_timeout": 0}, "executor.task_timeout", f"{TIMEOUT_TEXT}, got 0 (int)"),
        (
            {"executor.task_timeout": -1.5},
            "executor.task_timeout",
            f"{TIMEOUT_TEXT}, got -1.5 (float)",
        ),
        (
            {"executor.task_timeout": "30"},
            "executor.task_timeout",
            f"{TIMEOUT_TEXT}, got '30' (str)",
        ),
        (
            {"executor.task_timeout": True},
            "executor.task_timeout",
            f"{TIMEOUT_TEXT}, got True (bool)",
        ),
        (
            {"executor.task_timeout": float("inf")},
            "executor.task_timeout",
            "expected a number of seconds > 0 and <= 1e+09, or null for no limit, got inf (float)",
        ),
        (
            {"initial_model": 5},
            "initial_model",
            f"expected a relative path to a .npz file, got 5 (int){QUOTE_HINT}",
        ),
        (
            {"components": ["transport"]},
            "components",
            "expected a mapping of component kind (launcher, pipe, security, transport) "
            "to component, got ['transport'] (list)",
        ),
        (
            {"components.transport": 5},
            "components.transport",
            "expected a component name or a mapping with 'name' and 'options', got 5 (int)",
        ),
        (
            {"components.transport": "in process"},
            "components.transport",
            f"expected {PLUGIN_NAME_TEXT}, got 'in process' (str)",
        ),
        (
            {"components.transport": {"name": "TCP"}},
            "components.transport.name",
            f"expected {PLUGIN_NAME_TEXT}, got 'TCP' (str); did you mean 'tcp'?",
        ),
        (
            {"components.security": {"name": "none", "options": "x"}},
            "components.security.options",
            "expected a mapping of options, got 'x' (str)",
        ),
        (
            {"components.pipe": {"options": {}}},
            "components.pipe.name",
            "required key is missing (expected a component name)",
        ),
    ],
)
def test_wrong_value(tmp_path: Path, changes: dict[str, Any], key: str, problem: str) -> None:
    err = load_error(job_with(tmp_path, changes))
    assert err.key == key
    assert err.problem == problem
    assert str(err) == f"{err.source}: {key}: {problem}"


# --- unknown keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({"round": 3}, "round", f"unknown key; allowed keys: {TOP_KEYS}; did you mean 'rounds'?"),
        ({"ROUNDS": 3}, "ROUNDS", f"unknown key; allowed keys: {TOP_KEYS}; did you mean 'rounds'?"),
        ({"zzz": 3}, "zzz", f"unknown key; allowed keys: {TOP_KEYS}"),
        (
            {"workflow": {"name": "sag", "option": {}}},
            "workflow.option",
            "unknown key; allowed keys: name, options; did you mean 'options'?",
        ),
        (
            # Reported instead of the missing `script` the typo causes.
            {"executor.script": _DELETE, "executor.scirpt": "train.py"},
            "executor.scirpt",
            "unknown key; allowed keys: args, fail_on_script_error, launch, script, "
            "task_timeout; did you mean 'script'?",
        ),
        (
            {"components.transport": {"name": "grpc", "opts": {}}},
            "components.transport.opts",
            "unknown key; allowed keys: name, options; did you mean 'options'?",
        ),
        (
            {"components.transprot": "grpc"},
            "components.transprot",
            "unknown component kind; allowed kinds: launcher, pipe, security, transport; "
            "did you mean 'transport'?",
        ),
        (
            {"components.storage": "s3"},
            "components.storage",
            "unknown component kind; allowed kinds: launcher, pipe, security, transport",
        ),
        (
            {"components.workflow": "sag"},
            "components.workflow",
            "the workflow is chosen by the top-level 'workflow' key",
        ),
    ],
)
def test_unknown_key(tmp_path: Path, changes: dict[str, Any], key: str, problem: str) -> None:
    err = load_error(job_with(tmp_path, changes))
    assert err.key == key
    assert err.problem == problem


def test_unknown_key_wins_over_missing_key(tmp_path: Path) -> None:
    err = load_error(job_with(tmp_path, {"rounds": _DELETE, "round": 3}))
    assert err.key == "round"
    assert err.problem.endswith("did you mean 'rounds'?")


def test_non_string_top_level_key(tmp_path: Path) -> None:
    err = load_error(make_job(tmp_path, yaml.safe_dump(MINIMAL) + "1: x\n"))
    assert err.key == "1"
    assert err.problem == f"unknown key; allowed keys: {TOP_KEYS}"


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["executor.script", "initial_model"])
def test_parent_path_escape_is_rejected_even_if_the_file_exists(tmp_path: Path, key: str) -> None:
    (tmp_path / "x.py").write_text("")
    (tmp_path / "x.npz").write_text("")
    suffix = ".py" if key == "executor.script" else ".npz"
    job = job_with(tmp_path, {key: f"../x{suffix}"})
    err = load_error(job)
    assert err.key == key
    assert err.problem == (
        f"must stay inside the job folder {job.resolve()}, "
        f"got '../x{suffix}' ({tmp_path.resolve() / ('x' + suffix)})"
    )


@pytest.mark.parametrize("inside", [True, False])
def test_absolute_script_path_is_rejected(tmp_path: Path, inside: bool) -> None:
    # Even a path into the job folder: the folder is copied elsewhere to run.
    (tmp_path / "x.py").write_text("")
    target = tmp_path / "job" / "train.py" if inside else tmp_path / "x.py"
    job = job_with(tmp_path, {"executor.script": str(target)})
    err = load_error(job)
    assert err.key == "executor.script"
    assert err.problem == (
        f"must stay inside the job folder; write it relative to {job.resolve()}, "
        f"got absolute path {str(target)!r}"
    )


def test_symlink_out_of_the_job_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "outside.py").write_text("")
    job = job_with(tmp_path, {"executor.script": "link.py"})
    (job / "link.py").symlink_to(tmp_path / "outside.py")
    err = load_error(job)
    assert err.key == "executor.script"
    assert err.problem.startswith("must stay inside the job folder ")


def test_missing_script_says_where_it_looked(tmp_path: Path) -> None:
    job = job_with(tmp_path, {"executor.script": "nope.py"})
    err = load_error(job)
    assert err.key == "executor.script"
    assert err.problem == f"file not found: nope.py (looked in {job.resolve()})"


def test_script_must_be_a_python_file(tmp_path: Path) -> None:
    job = job_with(tmp_path, {"executor.script": "train.sh"})
    (job / "train.sh").write_text("")
    err = load_error(job)
    assert err.key == "executor.script"
    assert err.problem == "expected a .py file, got 'train.sh'"


def test_script_that_is_a_folder(tmp_path: Path) -> None:
    job = job_with(tmp_path, {"executor.script": "pkg.py"})
    (job / "pkg.py").mkdir()
    err = load_error(job)
    assert err.key == "executor.script"
    assert err.problem == "expected a file, but pkg.py is not a regular file"


def test_initial_model_must_be_npz(tmp_path: Path) -> None:
    job = job_with(tmp_path, {"initial_model": "weights.npy"})
    (job / "weights.npy").write_text("")
    err = load_error(job)
    assert err.key == "initial_model"
    assert err.problem == "expected a .npz file, got 'weights.npy'"


def test_missing_initial_model(tmp_path: Path) -> None:
    job = job_with(tmp_path, {"initial_model": "w.npz"})
    err = load_error(job)
    assert err.key == "initial_model"
    assert err.problem == f"file not found: w.npz (looked in {job.resolve()})"
