"""
The device a script runs on and what it can do: the device and precision that 'auto' means, the
autocast context of the forward passes, whether torch.compile can build kernels here, and one
device's peak FLOP/s for MFU (a GPU's from its data sheet, a CPU's measured once and cached).
"""

import time
from contextlib import nullcontext

import torch

from nanogpt.errors import ConfigError, UserError
from nanogpt.files import cached_measurement


def resolve_device(requested):
    if requested == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        return 'mps' if torch.backends.mps.is_available() else 'cpu'
    if requested.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device={requested} but no CUDA GPU is available; use --device=cpu")
    if requested == 'mps' and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available; use --device=cpu")
    if requested.split(':')[0] not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {requested!r}")
    return requested


def resolve_dtype(requested, device_type):
    if requested == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise UserError("dtype=bfloat16 but this GPU does not support it; use --dtype=float16")
    if requested != 'auto':
        return requested
    if device_type == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    return 'float32'


def check_compiler(device_type):
    """torch.compile builds C++ kernels for a CPU with the system's compiler. Without one the first
    step would fail deep inside the compiler stack: say so before anything runs."""
    if device_type != 'cpu':
        return
    from torch._inductor import cpp_builder, exc
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise UserError("compile=True on a CPU needs a C++ compiler (g++, or clang++ on macOS; the CXX "
                        "environment variable names another); install one or use --compile=False") from None


def autocast_context(device_type, dtype):
    """The context the forward passes run in: as is for float32, autocast for bfloat16/float16.
    On CUDA, float32 matmuls may use TF32 (Ampere and later): much faster, as accurate as training needs."""
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dtype == 'float32':
        return nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype={'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype])


# Dense (no sparsity) peak FLOP/s of the tensor cores for bfloat16/float16, from the vendors'
# data sheets. MFU is achieved FLOP/s over this number, so it is only as right as this table.
# A GPU's name is matched against the rows by gpu_peak_flops, longest row first, in any order.
PEAK_FLOPS_16BIT = {
    'H200': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12, 'H100': 989e12, 'GH200': 989e12,
    'A100': 312e12, 'A800': 312e12, 'A10G': 70e12, 'A10': 125e12, 'L40S': 362e12, 'L4': 121e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12,
}


def device_peak_flops(device, dtype, override=0.0):
    """(Peak FLOP/s of one device for MFU, or None; where the number comes from). `override` wins;
    a CUDA GPU is looked up in the table above; a CPU's peak is measured (see measured_cpu_peak)."""
    if override:
        return override, "peak_flops from the config"
    if str(device).startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        flops, row = gpu_peak_flops(name, dtype)
        if flops is None:
            return None, f"{name} is not in nanogpt/device.py's PEAK_FLOPS_16BIT; pass --peak_flops=<FLOP/s> for an MFU"
        return flops, f"{name}, data sheet of the {row}"
    if str(device) == 'cpu':
        return measured_cpu_peak(dtype)
    return None, f"no peak FLOP/s is known for {device}; pass --peak_flops=<FLOP/s> for an MFU"


def gpu_peak_flops(name, dtype):
    """(The data sheet's peak, the table's row) for a GPU that torch names `name` ('NVIDIA GH200 480GB'), or
    (None, None). The longest row found in the name wins, so a GH200 is not taken for the H200 inside its
    name, nor an H100 NVL for an H100."""
    rows = [row for row in PEAK_FLOPS_16BIT if row in name]
    if not rows:
        return None, None
    row = max(rows, key=len)
    # float32 matmuls run as TF32 on the tensor cores at half the 16-bit rate
    return PEAK_FLOPS_16BIT[row] / (1 if dtype in ('bfloat16', 'float16') else 2), row


def measured_cpu_peak(dtype):
    """A CPU's matmul peak for dtype on this process's threads: the best of a few large matmuls,
    measured once per CPU model, thread count and dtype, then read from a cache file."""
    def measure():
        n = 2048
        generator = torch.Generator().manual_seed(0)  # its own: the run's random streams stay untouched
        a = torch.randn(n, n, dtype=getattr(torch, dtype), generator=generator)
        b = torch.randn(n, n, dtype=getattr(torch, dtype), generator=generator)
        best = float('inf')
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        return 2 * n ** 3 / best
    peak, cache_path = cached_measurement('cpu_peak_flops.json', f"{torch.get_num_threads()} threads|{dtype}",
                                          measure, valid=lambda flops: flops > 0)
    return peak, (f"{dtype} matmul peak measured on this CPU with {torch.get_num_threads()} threads "
                  f"(cached in {cache_path}; delete it to measure again)")
