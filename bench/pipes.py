"""Pipes between a client job and its training process: throughput and memory.

A pipe carries Client API messages between the client job (CJ, the ACTIVE
end) and the training process (the PASSIVE end). Each case runs the two ends
as separate processes on this machine and is compared with baselines
measured in the same run, on the same bytes, taking turns with the pipes:

- raw file: one process writes the model's arrays into a file in the folder
  the file pipe uses (no fsync, as the file pipe does not fsync) and renames
  it; another reads it back with `readinto` a preallocated, touched buffer
  and deletes it (as the file pipe's receiver does). Write + read is one
  throughput. For reference also read into fresh memory (a new mapping, as
  the first model a process receives lands in);
- raw socket: `sendall` -> `recv_into` a touched buffer between two
  processes over loopback (`bench/transport.py`'s baseline).

For each pipe (file, cell over tcp, cell over grpc) a model of `--size-mib`
(16 float32 arrays) goes from the ACTIVE end to the PASSIVE end, which checks
every array arrived and sends back a result of the same size, as a training
process does. That is done twice in one pair of processes: the first model
lands in fresh memory; each end drops what it received before the next
round, so the second can land in the memory the first left (the receive
pool), as every later round of a job does. The directions are timed on the
machine's monotonic clock, shared by both processes. Each end's peak RSS
(its `ru_maxrss`, from `wait4`) is reported as growth over the RSS it had
after its imports and after making its own model, in model sizes: 1.0 means
it held one extra copy, the model it received.

The last case runs the real job executor (`ProcessExecutor`) in a process
acting as the client job, with a trivial training script that answers a
task carrying the model with a model of the same size, and reports the
client job's peak RSS growth in model sizes over its RSS holding the task's
model (its own `RUSAGE_SELF` peak: `wait4` would count the training process
under it too), and the training process's peak.

Fresh memory is what the first round pays for: on a VM that reports free
pages to its host (virtio-balloon free page reporting, as on this machine
kind), memory freed a few seconds ago costs a host fault on first touch
again, about 0.8-0.9 s per GiB here, whether it becomes array or page cache.
So the first-round figures, and the raw file's write, move with what the
machine freed just before; the later round shows the pipe itself.

The file pipe and the raw file live in a temporary folder under `--root`
(default: the system's temporary folder), removed at the end, also when a
case fails.

    .venv/bin/python bench/pipes.py            # 1 GiB, median of 3
    .venv/bin/python bench/pipes.py --quick    # 256 MiB, once
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

MiB = 1024 * 1024
TRANSPORT = Path(__file__).with_name("transport.py")
"""Its `raw-recv` / `raw-send` roles are the socket baseline, as in its own runs."""
ARRAYS = 16
PIPES = ("file", "tcp", "grpc")
FQCN = "site-1.bench"
TOKEN = "bench-token"
WAIT = 600.0
TASK_VALUE, RESULT_VALUE = 1.0, 2.0
FILE_TARGET = 0.5  # the file pipe's target, in raw file (write + read) throughput
ROUNDS = 2  # per pair of processes: the first into fresh memory, then one into reused memory
EXECUTOR_TARGET = 1.1  # the client job's peak growth through the executor, in models


# --- helpers used inside the role processes ----------------------------------------


def _rss_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _wait_line() -> str:
    return sys.stdin.readline().strip()


def _arrays(size: int, value: float) -> dict[str, Any]:
    """`ARRAYS` float32 arrays of `size` bytes in all, written once (no page faults later)."""
    import numpy as np

    count = size // 4 // ARRAYS
    return {f"layer{i:02d}": np.full(count, value, dtype=np.float32) for i in range(ARRAYS)}


def _model(size: int, value: float) -> Any:
    from fl_core.model import FLModel

    return FLModel(params=_arrays(size, value), meta={"num_samples": 1})


def _check_model(body: object, size: int, value: float) -> None:
    """Fail unless `body` is the whole model: every array, shape, dtype, and its values."""
    import numpy as np

    from fl_core.model import FLModel

    if not isinstance(body, FLModel):
        raise SystemExit(f"expected an FLModel, got {type(body).__name__}")
    count = size // 4 // ARRAYS
    if sorted(body.params) != [f"layer{i:02d}" for i in range(ARRAYS)]:
        raise SystemExit(f"arrays missing: got {sorted(body.params)}")
    for name, array in body.params.items():
        if array.shape != (count,) or array.dtype != np.float32:
            raise SystemExit(f"{name}: {array.shape} {array.dtype}, expected ({count},) float32")
        # One value per page and the last one: every page was filled.
        if not (np.all(array[::1024] == value) and array[-1] == value):
            raise SystemExit(f"{name}: wrong values")


def _make_pipe(kind: str, options: dict[str, Any]) -> Any:
    if kind == "file":
        from fl_plugins.pipe_file.pipe import FilePipe

        return FilePipe(**options)
    from fl_core.plugins import make_plugin_manager
    from fl_plugins.pipe_cell.pipe import CellPipe

    pipe = CellPipe(**{"transport": kind, **options})
    registry = make_plugin_manager().registry()
    pipe.use_transports(lambda name, opts: registry.create("transport", name, opts))
    return pipe


# --- roles -------------------------------------------------------------------------


def role_file_write(path: str, size: int) -> None:
    arrays = list(_arrays(size, TASK_VALUE).values())
    temp = path + ".tmp"
    start = time.perf_counter()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for array in arrays:  # one write per array, as the file pipe writes them
            view = memoryview(array).cast("B")
            while view.nbytes:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.rename(temp, path)
    _say(seconds=time.perf_counter() - start)


def role_file_read(path: str, size: int, fresh: bool) -> None:
    import mmap

    import numpy as np

    # "touched": preallocated and written once, the baseline. "fresh": a new
    # anonymous mapping, mapped in page by page as it is written, like the
    # receive memory a first model lands in.
    touched = None if fresh else np.ones(size, dtype=np.uint8)
    chunk = size // ARRAYS
    start = time.perf_counter()
    if touched is None:
        view = memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    else:
        view = touched.data.cast("B")
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < size:
            n = f.readinto(view[got : got + chunk])
            if not n:
                raise SystemExit(f"{path}: {got} of {size} bytes")
            got += n
    os.unlink(path)
    _say(seconds=time.perf_counter() - start)


def role_pipe_end(side_name: str, kind: str, root: str, options: str, size: int) -> None:
    """One end of a pipe, for `ROUNDS` rounds: a task there, its result back.

    Each end drops the model it received before the next round, so the
    next one can land in the memory it leaves (the receive pool).
    """
    from fl_core.spec.pipe import PipeMessage, PipeSide

    side = PipeSide(side_name)
    active = side is PipeSide.ACTIVE
    model = _model(size, TASK_VALUE if active else RESULT_VALUE)
    if active:  # as a client job does: its folder, cell name and a secret
        from fl_core.spec.pipe import PipeContext

        pipe = _make_pipe(kind, {})
        pipe.prepare(PipeContext(folder=Path(root), fqcn=FQCN, token=TOKEN))
    else:  # as a training process does: the options the ACTIVE end gave out
        pipe = _make_pipe(kind, json.loads(options))
    _say(ready_rss=_rss_now())
    pipe.open("bench", side)
    _say(peer_options=pipe.peer_options() if active else {})
    for number in range(ROUNDS):
        headers = {"task_id": str(number)}
        times: dict[str, float] = {}
        if active:
            _wait_line()  # both ends are ready: go
            times["sent"] = time.perf_counter()
            if not pipe.send(PipeMessage("task", headers, model), WAIT):
                raise SystemExit("the task was not taken")
            times["send_returned"] = time.perf_counter()
            message = pipe.receive(WAIT)
            times["received"] = time.perf_counter()
            if message is None:
                raise SystemExit("no result came")
            _check_model(message.body, size, RESULT_VALUE)
        else:
            message = pipe.receive(WAIT)
            times["received"] = time.perf_counter()
            if message is None:
                raise SystemExit("no task came")
            _check_model(message.body, size, TASK_VALUE)
            times["sent"] = time.perf_counter()
            if not pipe.send(PipeMessage("result", headers, model), WAIT):
                raise SystemExit("the result was not taken")
            times["send_returned"] = time.perf_counter()
        del message
        _say(**times)
    _wait_line()  # the orchestrator has both ends' figures: close
    pipe.close()


TRAINER_SCRIPT = """\
import fl_core.client as flare

flare.init()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    # A result of the same size in new memory, as a trained model would be.
    params = {name: array + 1.0 for name, array in model.params.items()}
    del model
    flare.send(flare.FLModel(params=params, meta={"num_samples": 1}))
"""


def role_executor(kind: str, workdir: str, size: int) -> None:
    """A client job: one task carrying the model through `ProcessExecutor`, to its result.

    Built as `fl_core.roles.client_job.executors.build_executor` builds it, from the
    plugin registry. Like `ClientRunner`, this process keeps only the task's
    ids once the executor has the task, so the executor holds the only
    reference to the model it hands over.
    """
    import queue

    from fl_core.config import LaunchMode
    from fl_core.plugins import make_plugin_manager
    from fl_core.roles.client_job.in_process import Assignment, TaskOutcome
    from fl_core.roles.client_job.process_executor import ProcessExecutor
    from fl_core.spec.launcher import Launcher
    from fl_core.spec.pipe import Pipe

    registry = make_plugin_manager().registry()
    name, options = ("file", {}) if kind == "file" else ("cell", {"transport": kind})

    def make_pipe() -> Pipe:
        pipe = registry.create("pipe", name, options, expect=Pipe)
        assert isinstance(pipe, Pipe)
        return pipe

    launcher = registry.create("launcher", "process", {}, expect=Launcher)
    assert isinstance(launcher, Launcher)
    folder = Path(workdir)
    executor = ProcessExecutor(
        folder / "train.py",
        LaunchMode.ONCE,
        job_id="bench",
        workspace=folder / "workspace",
        launcher=launcher,
        make_pipe=make_pipe,
        pipe_name=name,
        logs=lambda site, key, value, step: None,
    )
    outcomes: queue.SimpleQueue[TaskOutcome] = queue.SimpleQueue()
    task = Assignment("task-1", "train", 1, _model(size, TASK_VALUE))
    _say(ready_rss=_rss_now())
    start = time.perf_counter()
    executor.execute("site-1", task, outcomes.put)
    del task
    outcome = outcomes.get(timeout=WAIT)
    seconds = time.perf_counter() - start
    try:
        if outcome.result is None:
            raise SystemExit(f"the task failed: {outcome.reason}\n{outcome.detail}")
        _check_model(outcome.result, size, RESULT_VALUE)
    finally:
        del outcome
        executor.stop("the benchmark is done")
    # Its own peak: `wait4` would also count the training process under it.
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainer = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    _say(seconds=seconds, peak=own, trainer_peak=trainer)


ROLES: dict[str, Callable[[list[str]], None]] = {
    "file-write": lambda a: role_file_write(a[0], int(a[1])),
    "file-read": lambda a: role_file_read(a[0], int(a[1]), a[2] == "fresh"),
    "pipe-end": lambda a: role_pipe_end(a[0], a[1], a[2], a[3], int(a[4])),
    "executor": lambda a: role_executor(a[0], a[1], int(a[2])),
}


# --- the orchestrator --------------------------------------------------------------


class Proc:
    """A role process; its JSON lines are read one at a time, its peak RSS from `wait4`."""

    live: set[Proc] = set()

    def __init__(self, role: str, *args: object, script: Path = Path(__file__)) -> None:
        self.role = role
        self.popen = subprocess.Popen(
            [sys.executable, str(script), "--role", role, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        Proc.live.add(self)

    def read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"role {self.role} ended early (exit {self.popen.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def tell(self, line: str = "go") -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def wait(self) -> int:
        """Peak RSS in bytes once the process ended; RuntimeError if it failed."""
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        _, status, usage = os.wait4(self.popen.pid, 0)
        self.popen.returncode = code = os.waitstatus_to_exitcode(status)
        Proc.live.discard(self)
        if code != 0:
            raise RuntimeError(f"role {self.role} exited with {code}")
        return int(usage.ru_maxrss) * 1024

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        Proc.live.discard(self)


def _settle() -> None:
    """Write back what earlier cases left dirty, so no case pays for another's writeback."""
    os.sync()


def run_raw_file(root: Path, size: int, fresh: bool = False) -> tuple[float, float]:
    """Seconds to write (and rename) the file, and to read it back (and delete it)."""
    _settle()
    path = str(root / "raw.bin")
    writer = Proc("file-write", path, size)
    write = float(writer.read()["seconds"])
    writer.wait()
    reader = Proc("file-read", path, size, "fresh" if fresh else "touched")
    read = float(reader.read()["seconds"])
    reader.wait()
    return write, read


def run_raw_socket(size: int) -> float:
    """Seconds for `sendall` -> `recv_into` a touched buffer (bench/transport.py's roles)."""
    receiver = Proc("raw-recv", size, "", "touched", script=TRANSPORT)
    port = receiver.read()["port"]
    sender = Proc("raw-send", port, size, "", script=TRANSPORT)
    seconds = float(sender.read()["seconds"])
    receiver.read()
    sender.wait()
    receiver.wait()
    return seconds


@dataclass
class PipeRun:
    """One round through a pipe: a task there and its result back."""

    to_trainer: float
    back: float
    send_calls: tuple[float, float]
    """How long each `send` call took (task, result): the writing, for a pipe that publishes."""

    @property
    def round_trip(self) -> float:
        return self.to_trainer + self.back


def run_pipe(kind: str, root: Path, size: int) -> tuple[list[PipeRun], int, int]:
    """`ROUNDS` rounds in one pair of processes; the CJ's and trainer's peak growth."""
    _settle()
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    try:
        active = Proc("pipe-end", "active", kind, folder, "", size)
        active_ready = active.read()["ready_rss"]
        options = json.dumps(active.read()["peer_options"])
        passive = Proc("pipe-end", "passive", kind, folder, options, size)
        passive_ready = passive.read()["ready_rss"]
        passive.read()  # open: connected, for a cell pipe
        runs = []
        for _ in range(ROUNDS):
            active.tell()
            a, p = active.read(), passive.read()
            runs.append(
                PipeRun(
                    to_trainer=p["received"] - a["sent"],
                    back=a["received"] - p["sent"],
                    send_calls=(a["send_returned"] - a["sent"], p["send_returned"] - p["sent"]),
                )
            )
        passive_peak = passive.wait()  # the trainer first, as a job ends
        active_peak = active.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return runs, active_peak - active_ready, passive_peak - passive_ready


def run_executor(kind: str, root: Path, size: int) -> tuple[float, int, int]:
    """Seconds from task to result, the CJ's peak growth, the training process's peak RSS."""
    _settle()
    folder = Path(tempfile.mkdtemp(prefix=f"exec-{kind}-", dir=root))
    try:
        (folder / "train.py").write_text(TRAINER_SCRIPT)
        cj = Proc("executor", kind, folder, size)
        ready = cj.read()["ready_rss"]
        done = cj.read()
        cj.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return float(done["seconds"]), done["peak"] - ready, done["trainer_peak"]


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup below


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 MiB, once: a sanity run")
    parser.add_argument("--pipes", default=",".join(PIPES), help="of " + ",".join(PIPES))
    parser.add_argument(
        "--root", help="where the file pipe and the raw file live (default: the temp folder)"
    )
    parser.add_argument("--no-executor", action="store_true", help="skip the executor case")
    args, rest = parser.parse_known_args()
    if args.role:
        ROLES[args.role](rest)
        return
    if args.quick:
        args.size_mib, args.repeat = 256, 1
    size = args.size_mib * MiB
    if size % (4 * ARRAYS * 4096):
        parser.error(f"--size-mib must split into {ARRAYS} float32 arrays of whole pages")
    pipes = [name for name in args.pipes.split(",") if name]
    signal.signal(signal.SIGTERM, _stop)
    root = Path(tempfile.mkdtemp(prefix="fl-bench-pipes-", dir=args.root))
    try:
        report(args, size, pipes, root)
    finally:
        for proc in list(Proc.live):
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _ratios(base: float, run: PipeRun) -> str:
    """Pipe throughput over the baseline's (`base` seconds one way): to / back / round trip."""
    return f"{base / run.to_trainer:.2f}/{base / run.back:.2f}/{2 * base / run.round_trip:.2f}"


def report(args: argparse.Namespace, size: int, pipes: list[str], root: Path) -> None:
    gib = size / 1024**3
    repeat = args.repeat
    print(
        f"model {args.size_mib} MiB ({ARRAYS} float32 arrays of {args.size_mib // ARRAYS} MiB); "
        f"median of {repeat}; ratios are to the same run's baselines; folder {root}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    files: list[tuple[float, float]] = []
    fresh: list[tuple[float, float]] = []
    sockets: list[float] = []
    pairs: dict[str, list[tuple[list[PipeRun], int, int]]] = {kind: [] for kind in pipes}
    # Baselines and pipes take turns, so a machine that drifts during the run
    # moves both alike.
    for number in range(repeat):
        print(f"  repeat {number + 1} of {repeat}", flush=True)
        files.append(run_raw_file(root, size))
        fresh.append(run_raw_file(root, size, fresh=True))
        sockets.append(run_raw_socket(size))
        for kind in pipes:
            pairs[kind].append(run_pipe(kind, root, size))
    raw_file = statistics.median(w + r for w, r in files)
    raw_fresh = statistics.median(w + r for w, r in fresh)
    raw_socket = statistics.median(sockets)

    def split(runs: list[tuple[float, float]]) -> str:
        write = statistics.median(w for w, _ in runs)
        return f"write {write:.2f} + read {statistics.median(r for _, r in runs):.2f} s"

    print(
        f"\nload average {os.getloadavg()[0]:.2f}\nbaselines, one way:\n"
        f"  raw file: write + rename, readinto a touched buffer, delete (no fsync, as the file "
        f"pipe): {gib / raw_file:.2f} GiB/s ({split(files)})\n"
        f"  same, read into fresh memory (a new mapping, as a first model lands in): "
        f"{gib / raw_fresh:.2f} GiB/s ({split(fresh)}; for reference)\n"
        f"  raw socket: sendall -> recv_into a touched buffer: "
        f"{gib / raw_socket:.2f} GiB/s ({raw_socket:.2f} s)",
        flush=True,
    )
    print(
        f"\n{'pipe':<5} {'round':<6} {'to trainer':>10} {'back':>6} {'round trip':>12} "
        f"{'x raw file':>15} {'x raw socket':>15}  {'growth CJ/trainer':<17}\n"
        f"{'':<12} {'GiB/s':>10} {'GiB/s':>6} {'s (GiB/s)':>12} "
        f"{'to/back/rt':>15} {'to/back/rt':>15}  {'models':<17}"
    )
    for kind in pipes:
        cj = statistics.median(c for _, c, _ in pairs[kind]) / size
        trainer = statistics.median(t for _, _, t in pairs[kind]) / size
        for number in range(ROUNDS):
            runs = [r[number] for r, _, _ in pairs[kind]]
            median = PipeRun(
                to_trainer=statistics.median(r.to_trainer for r in runs),
                back=statistics.median(r.back for r in runs),
                send_calls=(
                    statistics.median(r.send_calls[0] for r in runs),
                    statistics.median(r.send_calls[1] for r in runs),
                ),
            )
            growth = f"{cj:.2f}x / {trainer:.2f}x" if number == 0 else ""
            rt = median.round_trip
            line = (
                f"{kind:<5} {'first' if number == 0 else 'later':<6} "
                f"{gib / median.to_trainer:>10.2f} {gib / median.back:>6.2f} "
                f"{f'{rt:.2f} ({2 * gib / rt:.2f})':>12} {_ratios(raw_file, median):>15} "
                f"{_ratios(raw_socket, median):>15}  {growth:<17}"
            )
            if kind == "file":
                worst = raw_file / max(median.to_trainer, median.back)
                verdict = "met" if worst >= FILE_TARGET else "MISSED"
                line += f" target >= {FILE_TARGET}x raw file each way: {verdict};"
            line += " s: " + " ".join(f"{r.to_trainer:.2f}+{r.back:.2f}" for r in runs)
            if kind == "file":  # the file is written in send, read in receive
                line += ", in send " + " ".join(
                    f"{r.send_calls[0]:.2f}+{r.send_calls[1]:.2f}" for r in runs
                )
            print(line, flush=True)
    print(
        f"  first: the first model each end receives, into fresh memory; later: round {ROUNDS},"
        " into the memory the dropped model of the round before left\n"
        "  growth: peak RSS (both rounds) over the RSS after imports and the end's own model,"
        " in models; 1.00x = the one model it received"
    )
    if args.no_executor:
        return
    print(
        f"\nclient job through ProcessExecutor (launch: once, the process launcher), one task "
        f"of {args.size_mib} MiB and its result of the same size; growth over the RSS with "
        "the task's model, which the CJ drops once the executor has it:"
    )
    for kind in pipes:
        results = [run_executor(kind, root, size) for _ in range(repeat)]
        seconds = statistics.median(s for s, _, _ in results)
        growth_x = statistics.median(g for _, g, _ in results) / size
        trainer_x = statistics.median(t for _, _, t in results) / size
        verdict = "met" if growth_x <= EXECUTOR_TARGET else "MISSED"
        print(
            f"  {kind:<5} task to result {seconds:.2f} s (with the script's start); CJ peak "
            f"growth {growth_x:.2f}x model (at most {1 + growth_x:.2f} models at once), "
            f"target <= {EXECUTOR_TARGET}x: {verdict}; "
            f"the training process's whole peak RSS {trainer_x:.2f}x model"
            "  [CJ growth: " + " ".join(f"{g / size:.2f}" for _, g, _ in results) + "]",
            flush=True,
        )
    print(
        "  CJ growth is its own peak (RUSAGE_SELF), without the training process under it;"
        " the training script holds the task and its result at once, about 2x plus imports"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
