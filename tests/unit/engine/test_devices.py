"""--device: names checked without torch, auto is the CPU on a machine without a GPU, a missing GPU is one line."""

from __future__ import annotations

import pytest
import torch

from enclip_qdrant.engine.devices import CUDA_PROVIDER, check_device, onnx_providers
from enclip_qdrant.engine.torch.device import amp_dtype, autocast, grad_scaler, resolve_device
from enclip_qdrant.errors import EnclipError
from enclip_qdrant.training.config import TrainConfig

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


def test_unknown_device_names_are_refused_in_one_line():
    with pytest.raises(EnclipError, match="--device must be auto, cpu, cuda or mps, not 'gpu'") as e:
        check_device("gpu")
    assert "\n" not in str(e.value)
    with pytest.raises(EnclipError, match="--device"):
        TrainConfig(device="gpu")


@no_cuda
def test_auto_is_the_cpu_here_and_cuda_is_refused_in_one_line():
    if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
        assert resolve_device("auto").type == "cpu"
    assert TrainConfig(device="cpu").resolved().device == "cpu"
    with pytest.raises(EnclipError, match="--device cuda: torch sees no CUDA GPU") as e:
        resolve_device("cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(EnclipError, match="--device cuda"):
        TrainConfig(device="cuda").resolved()


def test_onnx_runs_on_the_cpu_provider_unless_a_gpu_is_asked_for():
    import onnxruntime as ort

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    if CUDA_PROVIDER not in ort.get_available_providers():
        assert onnx_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(EnclipError, match="onnxruntime-gpu") as e:
            onnx_providers("cuda")
        assert "\n" not in str(e.value)


def test_mixed_precision_follows_the_device():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, cpu_bf16=False) is None and amp_dtype(cpu, cpu_bf16=True) == torch.bfloat16
    assert grad_scaler(cpu, torch.bfloat16) is None  # bf16 has fp32's range: nothing to scale
    with autocast(cpu, torch.bfloat16):
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    with autocast(cpu, None):
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.float32
