"""POC mode: the whole `fl-core run --mode poc` command, a 1 GiB round, and memory per role.

Cases, each the real command in a fresh process tree (server parent, client
parents, server job, client jobs, all separate processes on loopback):

- hello-numpy at N=2 R=5: wall time of the whole command (start, run,
  download, stop), median of `--repeat` runs, against a process that only
  imports numpy (measured in the same run);
- a 1 GiB model (16 float32 arrays) at N=2, three rounds: round 1 has the
  sites send their first model up (the job has no initial model); rounds
  2 and 3 are whole rounds: the server job sends 1 GiB to each site and
  gets 1 GiB back from each. Round 2 is the first into fresh memory at the
  sites, round 3 reuses what round 2 left. Each is compared with plain
  socket `sendall` -> `recv_into` of the same bytes (2 x N GiB) between two
  processes, measured in the same run (`bench/transport.py`'s baseline);
- peak RSS (VmHWM) of every process of the command, by role, sampled from
  /proc every 20 ms while it runs.

    .venv/bin/python bench/poc.py                    # both cases, tcp, median of 3
    .venv/bin/python bench/poc.py --transport grpc --skip-small
    .venv/bin/python bench/poc.py --size-mib 256 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
ARRAYS = 16

BIG_TRAIN = """\
import numpy as np

import fl_core.client as flare

ELEMENTS, ARRAYS = @ELEMENTS@, @ARRAYS@

flare.init()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    if model.params:  # add one to every entry: a new array per param, as training makes
        params = {name: np.add(value, 1.0) for name, value in model.params.items()}
    else:
        params = {f"w{i}": np.ones(ELEMENTS, np.float32) for i in range(ARRAYS)}
    del model
    flare.send(flare.FLModel(params=params))
    del params  # not kept into the next round's receive
"""

BIG_JOB = """\
name: big-model
min_clients: 2
rounds: 3
workflow:
  name: sag
  options:
    task_timeout: 900
executor:
  script: train.py
  launch: once
"""

ROLE_WORDS = {
    "server-parent": "server parent (SP)",
    "client-parent": "client parent (CP)",
    "server-job": "server job (SJ)",
    "client-job": "client job (CJ)",
    "supervise": "launcher supervisor",
}


def _fl_core() -> list[str]:
    exe = Path(sys.executable).with_name("fl-core")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fl_core.cli"]


def _descendants(root: int) -> dict[int, str]:
    """pid -> cmdline of every live descendant of `root`."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cmdlines[int(entry)] = cmd
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = cmdlines[child]
                frontier.append(child)
    return found


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _role(cmdline: str) -> str | None:
    for word, role in ROLE_WORDS.items():
        if word in cmdline:
            return role
    return None


class PeakSampler:
    """Peak RSS per role of a process tree, sampled every 20 ms."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid, cmd in _descendants(self.root).items():
                role = _role(cmd)
                if role is not None:
                    self.peaks[role] = max(self.peaks.get(role, 0), _hwm(pid))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def run_command(
    job: Path, clients: int, transport: str, out: Path
) -> tuple[float, dict[str, int], str]:
    """One whole `fl-core run --mode poc`; (seconds, peak RSS by role, its output)."""
    argv = [
        *_fl_core(),
        "run",
        "--mode",
        "poc",
        str(job),
        "--clients",
        str(clients),
        "--workspace",
        str(out),
        "--transport",
        transport,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = PeakSampler(proc.pid)
    output, _ = proc.communicate(timeout=1800)
    seconds = time.perf_counter() - start
    peaks = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"fl-core run failed ({proc.returncode}):\n{output}")
    return seconds, peaks, output


def _numpy_baseline() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy"], check=True)
    return time.perf_counter() - start


def _round_seconds(log: Path, round_number: int) -> float:
    """Time from a round's start to its end, from the server job's log."""
    stamps: dict[str, datetime] = {}
    pattern = re.compile(rf"^(\S+ \S+) .*round {round_number}: (round_started|round_finished)")
    for line in log.read_text().splitlines():
        match = pattern.match(line)
        if match:
            stamps[match.group(2)] = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    if len(stamps) != 2:
        raise RuntimeError(f"round {round_number} not found in {log}")
    return (stamps["round_finished"] - stamps["round_started"]).total_seconds()


def _raw_seconds(size: int) -> float:
    sys.path.insert(0, str(HERE))
    import transport as transport_bench  # bench/transport.py

    return float(transport_bench.run_raw(size, ""))


def _peaks_line(peaks: dict[str, int], model: int | None = None) -> str:
    parts = []
    for role in ROLE_WORDS.values():
        if role in peaks:
            text = f"{role} {peaks[role] / MiB:.0f} MiB"
            if model:
                text += f" ({peaks[role] / model:.2f}x model)"
            parts.append(text)
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transport", default="tcp")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--keep", help="copy the big case's downloaded workspace here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_small:
            baseline = statistics.median(_numpy_baseline() for _ in range(args.repeat))
            runs = [
                run_command(
                    ROOT / "examples" / "hello-numpy", 2, args.transport, work / f"small-{i}"
                )
                for i in range(args.repeat)
            ]
            seconds = statistics.median(r[0] for r in runs)
            print(
                f"hello-numpy N=2 R=5 over {args.transport}: whole command {seconds:.2f} s "
                f"(runs: {' '.join(f'{r[0]:.2f}' for r in runs)}) = {seconds / baseline:.1f}x "
                f"`python -c 'import numpy'` ({baseline:.2f} s)"
            )
            print(f"  peak RSS: {_peaks_line(runs[-1][1])}", flush=True)
        if not args.skip_big:
            size = args.size_mib * MiB
            job = work / "big-model"
            job.mkdir()
            (job / "job.yaml").write_text(BIG_JOB)
            elements = size // 4 // ARRAYS
            (job / "train.py").write_text(
                BIG_TRAIN.replace("@ELEMENTS@", str(elements)).replace("@ARRAYS@", str(ARRAYS))
            )
            raw = _raw_seconds(size)
            moved = 2 * 2 * size  # N=2 sites, one model down and one up each
            out = work / "big-out"
            seconds, peaks, _ = run_command(job, 2, args.transport, out)
            same_bytes = raw * moved / size
            for number, what in ((2, "first whole round"), (3, "a later round")):
                took = _round_seconds(out / "log.txt", number)
                print(
                    f"{args.size_mib} MiB model N=2 over {args.transport}: round {number} "
                    f"({what}: down to and up from both sites, {moved // MiB} MiB) {took:.2f} s "
                    f"= {took / same_bytes:.2f}x raw socket of the same bytes "
                    f"({raw:.2f} s per {args.size_mib} MiB)"
                )
            print(f"  whole command {seconds:.2f} s")
            print(f"  peak RSS: {_peaks_line(peaks, size)}", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
            else:
                shutil.copytree(out, args.keep, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
