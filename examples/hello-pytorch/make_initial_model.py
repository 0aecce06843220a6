"""Write initial_model.npz, the weights every site starts from (torch's default init, seed 0).

    python examples/hello-pytorch/make_initial_model.py

The file is committed, so a run never depends on this script; rerun it after
changing `Net` in train.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train import Net  # noqa: E402  (train.py sits beside this script)

torch.manual_seed(0)
state = Net().state_dict()
np.savez(HERE / "initial_model.npz", **{name: t.numpy() for name, t in state.items()})
print(
    f"wrote {HERE / 'initial_model.npz'}: "
    + ", ".join(f"{n} {tuple(t.shape)}" for n, t in state.items())
)
