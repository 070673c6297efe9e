"""
The machine a run trains on: the device, the autocast dtype, data-parallel processes.

    from system import autocast_context, resolve_system
    device, dtype = resolve_system("auto", "auto")   # e.g. ("cpu", "float32") on an AVX2-only CPU
    with autocast_context(device, dtype):            # nullcontext() for float32
        logits, loss = model(x, y)

dtype "auto": bf16 where its matmuls are fast (CUDA with bf16; a CPU whose oneDNN has bf16
kernels, i.e. AVX512-BF16 or AMX), fp16 on older GPUs, else fp32. On an AVX2-only CPU bf16
matmuls are emulated, ~70x slower than fp32 (measured: README, "A note on bf16").

Data parallel: under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1) setup_distributed
starts the process group: NCCL with one GPU per process, or gloo on CPU cores.
"""

import os
from contextlib import nullcontext

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_system(device, dtype):
    """'auto' device and dtype -> concrete ones (the names, e.g. ("cuda", "bfloat16"))."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
    return device, dtype


def cpu_has_fast_bf16():
    """True where oneDNN has bf16 matmul kernels for this CPU (AVX512-BF16 or AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def autocast_context(device, dtype):
    """Mixed precision: matmuls in dtype (a name or a torch.dtype), reductions (softmax,
    LayerNorm, the loss) in fp32; float32 is no autocast at all."""
    dtype = DTYPES.get(dtype, dtype)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()


# ----------------------------------------------------------------------------------------
# data parallel


def world_size():
    """The number of processes torchrun started (1 for a plain `python train.py`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device):
    """Data parallel (DDP) when torchrun started this process with WORLD_SIZE > 1: one process
    per GPU (NCCL, device cuda:LOCAL_RANK) or per share of the CPU cores (gloo; torchrun
    gives each process OMP_NUM_THREADS=1). Returns (rank, world_size, device); (0, 1, device)
    for a plain `python train.py`."""
    world = world_size()
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def all_mean(t, world):
    """The mean of a tensor over the data-parallel processes (itself when there is one)."""
    if world > 1:
        import torch.distributed as dist

        # a copy (NCCL reduces GPU tensors only: a flag made on the CPU goes to this process's GPU)
        t = t.cuda() if dist.get_backend() == "nccl" and not t.is_cuda else t.clone()
        dist.all_reduce(t)  # a sum: gloo has no AVG
        t /= world
    return t


def barrier(world):
    """Wait for every data-parallel process (nothing when there is one)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
