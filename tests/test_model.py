"""FLModel weights and the .npz files models are stored in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_core.model import FLModel, load_params, save_params


@pytest.mark.parametrize(
    ("meta", "weight"),
    [({}, 1.0), ({"num_steps": 5}, 5.0), ({"num_samples": 30, "num_steps": 5}, 30.0)],
)
def test_weight_prefers_samples_then_steps(meta: dict[str, int], weight: float) -> None:
    assert FLModel(meta=meta).weight() == weight


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    path = tmp_path / "m.npz"
    save_params(path, params)
    loaded = load_params(path)
    assert set(loaded) == {"a", "b"}
    for key, value in params.items():
        assert loaded[key].dtype == value.dtype
        assert np.array_equal(loaded[key], value)
    assert not (tmp_path / "m.npz.tmp").exists()


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, obj=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_params(path)
