"""hello-pytorch: a torch MLP (64-32-10) on scikit-learn's digits, trained by FedAvg.

Every site loads the same bundled dataset (no download), holds out the same
test split, and trains on its own share of the rest: site k of N takes every
N-th training sample starting at k - 1. Each round a site loads the global
weights, trains a few local epochs, reports the accuracy of its trained model
on the held-out split, and sends the weights back.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fl_core.client as flare

TEST_SIZE = 360  # of 1797 digits; the same held-out split on every site
BATCH_SIZE = 32


class Net(nn.Module):
    """64 pixels -> 32 hidden units -> 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_split(site_index: int, sites: int) -> tuple[torch.Tensor, ...]:
    """This site's training share and the held-out test split shared by all sites."""
    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    mine = train[site_index - 1 :: sites]
    return x[mine], y[mine], x[test], y[test]


def as_tensor(value: object) -> torch.Tensor:
    """A received parameter as a tensor, whether it came as a tensor or a numpy array."""
    if isinstance(value, torch.Tensor):
        return value
    # Received arrays are read-only views of the server's model: copy, don't alias.
    return torch.from_numpy(np.array(value))


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).float().mean())


def train(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int
) -> float:
    """Local SGD epochs over (x, y); returns the last epoch's mean loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    # Its own generator: sites run as threads of one process in the simulator.
    shuffle = torch.Generator().manual_seed(seed)
    mean_loss = 0.0
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(y), generator=shuffle).split(BATCH_SIZE):
            optimizer.zero_grad()
            loss = loss_fn(net(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        mean_loss = total / len(y)
    return mean_loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=2, help="number of sites sharing the data")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    # The environment wins, so `fl-core run --clients N` needs no edit of job.yaml.
    sites = int(os.environ.get("HELLO_PYTORCH_SITES") or args.sites)
    torch.set_num_threads(1)  # the sites share the machine's cores

    flare.init()
    site = flare.get_site_name()
    site_index = int(site.rsplit("-", 1)[1])
    if not 1 <= site_index <= sites:
        raise SystemExit(
            f"{site}: the data is split for {sites} sites; "
            f"set HELLO_PYTORCH_SITES (or --sites) to the number of sites"
        )
    x_train, y_train, x_test, y_test = load_split(site_index, sites)

    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        round_ = model.current_round or 0
        # A new network each round: the tensors sent below are never written
        # again, because after send() the runtime owns them.
        net = Net()
        net.load_state_dict({name: as_tensor(value) for name, value in model.params.items()})
        global_acc = accuracy(net, x_test, y_test)
        loss = train(net, x_train, y_train, args.epochs, args.lr, seed=1000 * site_index + round_)
        acc = accuracy(net, x_test, y_test)
        flare.log("global_accuracy", global_acc, step=round_)
        flare.log("accuracy", acc, step=round_)
        flare.log("loss", loss, step=round_)
        print(f"{site} round {round_ + 1}: global {global_acc:.3f} -> local {acc:.3f}")

        # Tensors go as they are (no copy); the next round's model then arrives as tensors.
        flare.send(
            flare.FLModel(
                params=dict(net.state_dict()),
                metrics={"accuracy": acc, "global_accuracy": global_acc, "loss": loss},
                meta={"num_samples": len(y_train)},
            )
        )


if __name__ == "__main__":
    main()
