"""Whole-process wall time and peak RSS of `fl-core run --mode simulator`.

Each case writes a hello-numpy style job (every site adds its index to each
array) and runs `fl-core run` as a child process, timed from spawn to exit;
peak RSS is the child's own `ru_maxrss` from `wait4`. Baselines measured in
the same run: a Python process that only imports numpy (the floor of any
fl-core command), and, for memory, the model's size.

    python bench/simulator.py            # all cases
    python bench/simulator.py --quick    # skip N=1000 and 100 MB
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import fl_core.client as flare

    flare.init()
    delta = float(flare.get_site_name().rsplit("-", 1)[1])
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        flare.send(flare.FLModel(
            params={k: v + delta for k, v in model.params.items()},
            meta={"num_samples": 1},
        ))
    """
)


@dataclass
class Case:
    label: str
    clients: int
    rounds: int
    model_bytes: int
    arrays: int
    target_s: float | None = None
    target_rss_mb: float | None = None
    target_rss_x_model: float | None = None


CASES = [
    Case("N=8 R=5, 10 kB model", 8, 5, 10_000, 4, target_s=1.5),
    Case("N=32 R=3, 10 kB model", 32, 3, 10_000, 4),
    Case("N=1000 R=3, 10 kB model", 1000, 3, 10_000, 4, target_s=15.0, target_rss_mb=600),
    Case("N=2 R=2, 100 MB model", 2, 2, 100_000_000, 10, target_rss_x_model=4.0),
]


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB, exit code of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and proc.stderr is not None:
        sys.stderr.write(proc.stderr.read().decode())
    return wall, usage.ru_maxrss / 1024, proc.returncode


def write_job(folder: Path, case: Case) -> None:
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(SCRIPT)
    per_array = case.model_bytes // 4 // case.arrays
    np.savez(
        folder / "initial_model.npz",
        **{f"layer{i}": np.zeros(per_array, dtype=np.float32) for i in range(case.arrays)},
    )
    (folder / "job.yaml").write_text(
        f"name: bench\nmin_clients: {case.clients}\nrounds: {case.rounds}\n"
        "initial_model: initial_model.npz\n"
        "workflow: {name: sag, options: {task_timeout: 600}}\n"
        "executor: {script: train.py}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is shown")
    args = parser.parse_args()

    base_wall, base_rss, _ = measure([sys.executable, "-c", "import numpy"])
    print(f"baseline `python -c 'import numpy'`: {base_wall:.3f} s, {base_rss:.0f} MB peak RSS")
    print(f"{'case':28} {'wall s':>8} {'x base':>7} {'RSS MB':>8} {'RSS/model':>9}  target")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for index, case in enumerate(CASES):
            if args.quick and (case.clients > 100 or case.model_bytes > 10**7):
                continue
            job = Path(tmp) / f"job{index}"
            write_job(job, case)
            runs = []
            for attempt in range(args.repeat):
                argv = [
                    sys.executable,
                    "-m",
                    "fl_core.cli",
                    "run",
                    str(job),
                    "--quiet",
                    "--clients",
                    str(case.clients),
                    "--workspace",
                    str(Path(tmp) / f"ws{index}-{attempt}"),
                ]
                wall, rss, code = measure(argv)
                if code != 0:
                    print(f"{case.label}: fl-core exited {code}")
                    failed = True
                    break
                runs.append((wall, rss))
            if not runs:
                continue
            runs.sort()
            wall, _ = runs[len(runs) // 2]
            rss = max(r for _, r in runs)
            ratio_model = rss * 1024 * 1024 / case.model_bytes
            # Against a 10 kB model the ratio only restates the interpreter's size.
            shown_ratio = f"{ratio_model:.2f}" if case.model_bytes >= 10**6 else "-"
            verdicts = []
            if case.target_s is not None:
                verdicts.append(
                    f"< {case.target_s:g} s: {'met' if wall < case.target_s else 'MISSED'}"
                )
            if case.target_rss_mb is not None:
                ok = rss < case.target_rss_mb
                verdicts.append(f"< {case.target_rss_mb:g} MB: {'met' if ok else 'MISSED'}")
            if case.target_rss_x_model is not None:
                ok = ratio_model < case.target_rss_x_model
                verdicts.append(
                    f"< {case.target_rss_x_model:g}x model: {'met' if ok else 'MISSED'}"
                )
            print(
                f"{case.label:28} {wall:8.3f} {wall / base_wall:7.1f} {rss:8.0f} "
                f"{shown_ratio:>9}  {'; '.join(verdicts)}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
