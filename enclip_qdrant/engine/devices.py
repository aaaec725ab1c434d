"""Device names (`--device`), checked without importing torch: the ONNX engine and the CLI read them too."""

from __future__ import annotations

from enclip_qdrant.errors import EnclipError

DEVICES = ("auto", "cpu", "cuda", "mps")
CUDA_PROVIDER = "CUDAExecutionProvider"


def check_device(name: str) -> str:
    if name not in DEVICES:
        raise EnclipError(f"--device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, not {name!r}")
    return name


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime providers for `device`: CUDA first (then CPU for the rest) on `cuda`, or on `auto` when
    onnxruntime-gpu is installed and sees a GPU; the CPU otherwise. `cuda` without it is one clear line."""
    import onnxruntime as ort

    check_device(device)
    has_cuda = CUDA_PROVIDER in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise EnclipError("--device cuda: this ONNX Runtime has no CUDA provider (install the onnxruntime-gpu "
                          "extra: pip install 'enclip-qdrant[gpu]'), or use --device cpu")
    if device == "cuda" or (device == "auto" and has_cuda and _cuda_visible()):
        return [CUDA_PROVIDER, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _cuda_visible() -> bool:
    """A GPU the CUDA provider could use: onnxruntime-gpu lists its provider even on a machine without one."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
