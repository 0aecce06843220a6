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


@pytest.mark.parametrize(
    "value",
    [
        np.float64(3.5) * np.ones(()),  # 0-d
        np.zeros((0, 3), np.int16),  # empty
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),  # not C-ordered
        np.arange(20, dtype=np.uint8)[::3],  # strided view
        np.array([True, False]),
        np.arange(4, dtype=">i4"),  # big-endian
    ],
    ids=["0-d", "empty", "fortran", "strided", "bool", "big-endian"],
)
def test_any_array_layout_round_trips_and_numpy_reads_the_file(
    tmp_path: Path, value: np.ndarray
) -> None:
    path = tmp_path / "m.npz"
    save_params(path, {"x": value})
    with np.load(path, allow_pickle=False) as data:  # the file is a plain .npz
        loaded = data["x"]
    assert loaded.dtype == value.dtype and loaded.shape == value.shape
    assert np.array_equal(loaded, value)


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, obj=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_params(path)
