"""to_numpy / to_torch: tensors at the Client API's edge, without copies where promised."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fl_core.client.torch_params import to_numpy, to_torch

DTYPES = ["float32", "float64", "int64", "bool", "uint8"]


@pytest.fixture
def torch() -> ModuleType:
    return pytest.importorskip("torch")


def sample(dtype: str) -> np.ndarray:
    values = np.arange(-5, 7).reshape(3, 4)
    if dtype == "bool":
        return values % 3 == 0
    if dtype == "uint8":
        return (values + 5).astype(np.uint8)
    return (values * 1.5 if dtype.startswith("float") else values).astype(dtype)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_keeps_dtype_shape_and_values(torch: Any, dtype: str) -> None:
    original = sample(dtype)

    tensors = to_torch({"w": original.copy()})
    assert tensors["w"].shape == original.shape
    assert str(tensors["w"].dtype) == f"torch.{dtype}"
    back, found = to_numpy(tensors)

    assert found is True
    assert back["w"].dtype == original.dtype
    assert back["w"].shape == original.shape
    assert np.array_equal(back["w"], original)


def test_to_torch_shares_memory_with_a_writable_array(torch: Any) -> None:
    array = np.zeros(4, dtype=np.float32)
    tensor = to_torch({"w": array})["w"]
    tensor.add_(2)
    assert array.tolist() == [2.0] * 4


def test_to_numpy_shares_memory_with_a_contiguous_cpu_tensor(torch: Any) -> None:
    tensor = torch.zeros(2, 3)
    array = to_numpy({"w": tensor})[0]["w"]
    tensor.add_(1)
    assert array.tolist() == [[1.0] * 3] * 2


def test_read_only_array_is_copied_and_the_original_never_changes(torch: Any) -> None:
    server = np.arange(6, dtype=np.float64)
    view = server.view()
    view.setflags(write=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a non-writable array
        tensor = to_torch({"w": view})["w"]
    tensor.mul_(10)

    assert server.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert tensor.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_to_torch_copies_arrays_torch_cannot_view(torch: Any) -> None:
    big_endian = np.arange(3, dtype=">f4")
    reversed_view = np.arange(4.0)[::-1]
    tensors = to_torch({"be": big_endian, "rev": reversed_view})
    assert tensors["be"].tolist() == [0.0, 1.0, 2.0]
    assert tensors["rev"].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_to_torch_names_an_array_torch_cannot_hold(torch: Any) -> None:
    with pytest.raises(TypeError, match=r"params\['labels'\].*<U1"):
        to_torch({"labels": np.array(["a", "b"])})


def test_bfloat16_names_the_param_the_dtype_and_the_fix(torch: Any) -> None:
    params = {"fc.weight": torch.ones(2, dtype=torch.bfloat16)}
    with pytest.raises(TypeError) as info:
        to_numpy(params)
    message = str(info.value)
    assert "'fc.weight'" in message
    assert "torch.bfloat16" in message
    assert ".float()" in message


def test_complex32_quantized_and_sparse_say_what_to_do(torch: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 and quantized creation are experimental
        half_complex = torch.zeros(2, dtype=torch.complex32)
        quantized = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    cases = [
        (half_complex, "torch.complex32", "torch.complex64"),
        (quantized, "torch.qint8", ".dequantize()"),
        (torch.eye(2).to_sparse(), "sparse", ".to_dense()"),
    ]
    for tensor, dtype_text, fix in cases:
        with pytest.raises(TypeError) as info:
            to_numpy({"p": tensor})
        assert "'p'" in str(info.value)
        assert dtype_text in str(info.value)
        assert fix in str(info.value)


def test_tensor_that_requires_grad_is_detached(torch: Any) -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    loss = (weight * 3).sum()
    loss.backward()

    arrays, found = to_numpy({"w": weight})

    assert found is True
    assert arrays["w"].tolist() == [1.0, 2.0]
    assert weight.requires_grad  # the script's parameter is left as it was


def test_non_contiguous_tensor_keeps_its_values(torch: Any) -> None:
    tensor = torch.arange(12.0).reshape(3, 4).t()
    assert not tensor.is_contiguous()
    array = to_numpy({"w": tensor})[0]["w"]
    assert array.shape == (4, 3)
    assert np.array_equal(array, tensor.numpy())


def test_lazy_conjugate_and_negative_bits_are_resolved(torch: Any) -> None:
    conj = torch.tensor([1 + 2j, 3 - 1j]).conj()
    neg = torch._neg_view(torch.tensor([1.0, -2.0]))
    assert conj.is_conj()
    assert neg.is_neg()
    arrays, _ = to_numpy({"conj": conj, "neg": neg})
    assert arrays["conj"].tolist() == [1 - 2j, 3 + 1j]
    assert arrays["neg"].tolist() == [-1.0, 2.0]


def test_numpy_arrays_and_other_values_pass_through(torch: Any) -> None:
    array = np.ones(3)
    arrays, found = to_numpy({"a": array, "b": [1, 2], "c": 0.5})
    assert found is False
    assert arrays["a"] is array
    assert arrays["b"] == [1, 2]
    assert arrays["c"] == 0.5


def test_mixed_tensors_and_arrays(torch: Any) -> None:
    array = np.ones(2)
    arrays, found = to_numpy({"t": torch.zeros(2), "a": array})
    assert found is True
    assert isinstance(arrays["t"], np.ndarray)
    assert arrays["a"] is array


def test_importing_the_module_does_not_import_torch() -> None:
    proc = run_python(
        "import sys, numpy as np\n"
        "import fl_core.client.torch_params as tp\n"
        "arrays, found = tp.to_numpy({'w': np.zeros(2)})\n"
        "assert not found and arrays['w'].tolist() == [0.0, 0.0]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_to_torch_without_torch_says_how_to_install_it() -> None:
    proc = run_python(
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import numpy as np\n"
        "from fl_core.errors import FlCoreError\n"
        "from fl_core.client.torch_params import to_numpy, to_torch\n"
        "assert to_numpy({'w': np.zeros(1)})[1] is False\n"
        "try:\n"
        "    to_torch({'w': np.zeros(1)})\n"
        "except FlCoreError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fl-core[torch]"' in proc.stdout
    assert "pip install torch==2.13.0" in proc.stdout
