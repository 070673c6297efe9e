"""
The one training loop: pretraining from scratch, full or parameter-efficient fine-tuning
from a checkpoint, and resuming.

    python train.py configs/quickstart.py                      # a config file: plain assignments
    python train.py configs/shakespeare_char_cpu.py --max_iters=500 --dtype=float32
    python train.py configs/shakespeare_char_cpu.py --init_from=resume --max_iters=3000
    python train.py configs/peft_finetune.py --peft=lora --lora_r=8   # LoRA on a base run (peft.py)
    torchrun --standalone --nproc_per_node=2 train.py configs/shakespeare_char_cpu.py --gradient_accumulation_steps=2

A config file is Python whose top-level assignments set config keys (names starting with
"_" are private helpers); `--key=value` on the command line overrides it. Every key, its
type and its default is a field of TrainConfig below or of model.GPTConfig: that is the
whole list, and an unknown or mistyped key is an error, not a silently new variable.

What one optimizer step does (DESIGN.md, "How data flows"):

    for each of gradient_accumulation_steps micro-batches:
        x, y = random windows of block_size + 1 tokens        (seeded generator: exact resume)
        with autocast(dtype): logits, loss = model(x, y)      (fp32 loss)
        backward(scale(loss / gradient_accumulation_steps))   (mean over the whole batch)
    stop if the loss is not finite                            (before the step, checkpoint intact)
    unscale -> clip grad norm -> AdamW step -> lr = get_lr(iter)

out_dir receives config.json (the resolved config), metrics.jsonl (a JSON object per line:
training rows `iter, loss, lr, tokens_per_sec, time`, eval rows `iter, train_loss,
val_loss, time`) and ckpt.pt, written atomically at every eval and at the end.

Data parallel: `torchrun --standalone --nproc_per_node=N train.py ...` runs N processes
(setup_distributed); each runs gradient_accumulation_steps / N of the micro-batches, DDP
averages the gradients, and process 0 alone prints and writes the files.

PEFT (peft != 'none', with init_from a base run folder): the base is loaded, peft.py's
surgery freezes it and adds the PEFT parameters, and only those reach the optimizer. The
run's ckpt.pt then holds the PEFT tensors, their optimizer state and the path and sha256
of the base's ckpt.pt (restore_model puts the two back together, refusing a changed base).
"""

import difflib
import hashlib
import inspect
import json
import math
import os
import random
import sys
import time
import typing
from ast import literal_eval
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np
import torch

import distill
from model import GPT, GPTConfig, moe_statistics
from peft import PEFTConfig, apply_peft, load_peft_state_dict, peft_state_dict, trainable_summary
from tokenizer import same_tokenizer

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"  # where config.json, metrics.jsonl and ckpt.pt go
    init_from: str = "scratch"  # 'scratch', 'resume' (out_dir's ckpt.pt), or a run folder to fine-tune from
    eval_interval: int = 250  # evaluate and checkpoint every this many optimizer steps (and at the end)
    eval_iters: int = 200  # batches per split in each evaluation
    log_interval: int = 10  # a metrics.jsonl training row every this many steps
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # False: save at an eval only when val loss improves
    progress: bool = True  # tqdm progress bar (off: a printed line per eval)
    # data
    dataset: str = "shakespeare_char"  # a folder under data/, or a path, with train.bin, val.bin, meta.json
    batch_size: int = 12  # sequences per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (under torchrun: over all processes)
    # AdamW
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 5000  # optimizer steps in total
    weight_decay: float = 0.1  # on matrices only (see make_optimizer)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = off
    # learning-rate schedule (see get_lr)
    lr_schedule: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    warmup_iters: int = 100  # linear warmup from ~0 to learning_rate
    lr_decay_iters: int = 0  # the schedule ends (at min_lr) here; 0 = max_iters
    min_lr: float = 6e-5  # learning rate at the end of the decay
    decay_frac: float = 0.2  # wsd: the decay takes this last fraction of the schedule
    # system
    device: str = "auto"  # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast dtype; auto: see resolve_system
    compile: bool = False  # torch.compile the model (for CUDA; on CPU compiling takes minutes)
    seed: int = 1337  # seeds weights, dropout and the batch sampler
    # knowledge distillation (distill.py): loss = kd_alpha * KD + (1 - kd_alpha) * cross-entropy
    teacher: str = ""  # run folder of a teacher that runs on every batch (online KD)
    soft_labels: str = ""  # or a soft-label cache folder (python distill.py cache ...)
    kd_alpha: float = 0.0  # weight of the KD term; 0 = plain training
    kd_temperature: float = 1.0  # T: both distributions are softmax(logits / T); the loss is scaled by T^2
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    kd_jsd_beta: float = 0.5  # jsd: the mixture weight of the teacher
    kd_top_k: int = 0  # soft_labels: use the cache's top kd_top_k logits per position (0 = all it holds)
    kd_tail: Literal["bucket", "renorm"] = "bucket"  # soft_labels: the mass past the top k as one "other" outcome, or dropped


class UserError(Exception):
    """A problem with what the user asked for; main() prints it as one line and exits 2."""


class NonFiniteLossError(UserError):
    pass


# ----------------------------------------------------------------------------------------
# configuration: defaults (the dataclasses) <- [the checkpoint's config on resume] <- file <- CLI

# the flat key space: every field of TrainConfig, of peft.PEFTConfig, and of GPTConfig but
# vocab_size, which comes from the dataset
MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]
PEFT_KEYS = [f.name for f in fields(PEFTConfig)]
FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
FIELD_TYPES.update({f.name: f.type for f in fields(PEFTConfig)})
FIELD_TYPES.update({f.name: f.type for f in fields(GPTConfig) if f.name != "vocab_size"})
# keys that must equal the checkpoint's when resuming or fine-tuning (the weights' shapes)
ARCH_KEYS = ["n_layer", "n_head", "n_embd", "bias"]
# PEFT keys that shape a PEFT run's tensors: fixed once the run has started
PEFT_SHAPE_KEYS = ["peft", "lora_r", "lora_targets", "adapter_size", "adapter_targets", "bitfit_layernorm"]
# the keys that only matter to one PEFT method
PEFT_METHOD_KEYS = {"lora": "lora_", "adapter": "adapter_", "bitfit": "bitfit_"}
# keys that describe this machine, never carried over from a checkpoint's config
SYSTEM_KEYS = ["device", "dtype", "compile"]


def _type_name(tp):
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return tp.__name__


def check_value(key, value, from_cli=False):
    """Return value converted to key's declared type, or raise UserError naming the key,
    the expected type and the value given. From the CLI, value is the raw string."""
    if key not in FIELD_TYPES:
        close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{key}'{hint}")
    tp = FIELD_TYPES[key]
    if from_cli:
        if tp is str or typing.get_origin(tp) is Literal:
            given = value  # strings are taken as typed: --out_dir=123 is the folder "123"
        else:
            try:
                given = literal_eval(value)
            except (ValueError, SyntaxError):
                given = value
            if tp is bool and isinstance(given, str) and given.lower() in ("true", "false"):
                given = given.lower() == "true"
    else:
        given = value
    ok = False
    if typing.get_origin(tp) is Literal:
        ok = given in typing.get_args(tp)
    elif tp is bool:
        ok = isinstance(given, bool)
    elif tp is int:
        ok = isinstance(given, int) and not isinstance(given, bool)
    elif tp is float:
        ok = isinstance(given, (int, float)) and not isinstance(given, bool)
        given = float(given) if ok else given
    elif tp is str:
        ok = isinstance(given, str)
    if not ok:
        raise UserError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    return given


def read_config_file(path):
    """The key = value assignments of a config file, checked; names starting with '_'
    and imported modules are ignored."""
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found (arguments are CONFIG.py and --key=value)")
    namespace = {}
    with open(path) as f:
        code = compile(f.read(), path, "exec")
    exec(code, namespace)
    out = {}
    for key, value in namespace.items():
        if key.startswith("_") or inspect.ismodule(value):
            continue
        try:
            out[key] = check_value(key, value)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return out


def parse_args(argv):
    """argv (without the program name) -> {key: value} of explicit settings, in order."""
    overrides = {}
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise UserError(f"'{arg}': write options as --key=value")
            key, value = arg[2:].split("=", 1)
            overrides[key] = check_value(key, value, from_cli=True)
        else:
            overrides.update(read_config_file(arg))
    return overrides


def load_config(argv):
    """Build (TrainConfig, GPTConfig, PEFTConfig) from defaults, a resumed checkpoint's
    config, config files and --key=value arguments, and check the combination."""
    overrides = parse_args(argv)
    values = {}
    init_from = overrides.get("init_from", TrainConfig.init_from)
    out_dir = overrides.get("out_dir", TrainConfig.out_dir)
    if init_from != "scratch":
        # resume: the run's own config is the base, so `--init_from=resume` alone continues it;
        # fine-tune: the architecture comes from the base model
        src = out_dir if init_from == "resume" else init_from
        saved = read_checkpoint(os.path.join(src, "ckpt.pt"), why=f"--init_from={init_from}", mmap=True)["config"]
        keep = FIELD_TYPES if init_from == "resume" else ARCH_KEYS + ["block_size"]
        values.update({k: v for k, v in saved.items() if k in keep and k not in SYSTEM_KEYS})
        fixed = ARCH_KEYS + (PEFT_SHAPE_KEYS if init_from == "resume" else [])
        for k in fixed:
            if k in overrides and overrides[k] != saved.get(k, getattr(PEFTConfig, k, None)):
                raise UserError(
                    f"{k}={overrides[k]} differs from the checkpoint's {k}={saved[k]} in {src}; "
                    f"the {'PEFT tensors' if k in PEFT_KEYS else 'weights'} have that shape (drop --{k})"
                )
        if overrides.get("block_size", 0) > saved["block_size"]:
            raise UserError(
                f"block_size={overrides['block_size']} is larger than the checkpoint's "
                f"{saved['block_size']} learned positions; use block_size <= {saved['block_size']}"
            )
    values.update(overrides)
    values["init_from"], values["out_dir"] = init_from, out_dir
    tc = TrainConfig(**{k: v for k, v in values.items() if k not in MODEL_KEYS and k not in PEFT_KEYS})
    try:
        mc = GPTConfig(**{k: v for k, v in values.items() if k in MODEL_KEYS})
        pc = PEFTConfig(**{k: v for k, v in values.items() if k in PEFT_KEYS})
    except ValueError as e:
        raise UserError(str(e)) from None
    validate(tc)
    validate_peft(pc, tc, overrides)
    return tc, mc, pc


def validate(tc):
    """Impossible values and combinations, found before any work is done."""
    positive = ["batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"]
    for key in positive:
        if getattr(tc, key) < 1:
            raise UserError(f"{key}={getattr(tc, key)} must be >= 1")
    for key in ["max_iters", "warmup_iters", "lr_decay_iters", "grad_clip", "weight_decay", "min_lr"]:
        if getattr(tc, key) < 0:
            raise UserError(f"{key}={getattr(tc, key)} must be >= 0")
    if tc.learning_rate <= 0:
        raise UserError(f"learning_rate={tc.learning_rate} must be > 0")
    if tc.min_lr > tc.learning_rate:
        raise UserError(f"min_lr={tc.min_lr} is above learning_rate={tc.learning_rate}")
    if not 0.0 < tc.decay_frac <= 1.0:
        raise UserError(f"decay_frac={tc.decay_frac} must be in (0, 1]")
    if not (tc.device in ("auto", "cpu", "cuda") or tc.device.startswith("cuda:")):
        raise UserError(f"device='{tc.device}': use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if tc.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device='{tc.device}' but this PyTorch sees no CUDA GPU; use --device=cpu")
    if not 0.0 <= tc.kd_alpha <= 1.0:
        raise UserError(f"kd_alpha={tc.kd_alpha} must be in [0, 1]")
    if tc.teacher and tc.soft_labels:
        raise UserError("teacher and soft_labels are two sources of the same soft labels: give one")
    if tc.kd_alpha > 0 and not (tc.teacher or tc.soft_labels):
        raise UserError(f"kd_alpha={tc.kd_alpha} needs soft labels: set teacher=<run folder> or soft_labels=<cache>")
    if tc.kd_temperature <= 0:
        raise UserError(f"kd_temperature={tc.kd_temperature} must be > 0")
    if not 0.0 < tc.kd_jsd_beta < 1.0:
        raise UserError(f"kd_jsd_beta={tc.kd_jsd_beta} must be in (0, 1)")
    if tc.kd_top_k < 0:
        raise UserError(f"kd_top_k={tc.kd_top_k} must be >= 0")
    if tc.dtype == "float16" and not tc.device.startswith("cuda") and not (
        tc.device == "auto" and torch.cuda.is_available()
    ):
        raise UserError("dtype='float16' needs a CUDA GPU (fp16 with a GradScaler); on CPU use bfloat16 or float32")


def validate_peft(pc, tc, overrides):
    if pc.peft != "none" and tc.init_from == "scratch":
        raise UserError(f"peft='{pc.peft}' adapts a trained model: set init_from to its run folder "
                        f"(e.g. --init_from=out-peft-base), not 'scratch'")
    for key in overrides:
        for method, prefix in PEFT_METHOD_KEYS.items():
            if key.startswith(prefix) and pc.peft != method:
                raise UserError(f"{key} is a setting of peft='{method}' but peft='{pc.peft}'; "
                                f"add --peft={method} or drop --{key}")


def resolve_system(tc):
    """'auto' device and dtype -> concrete ones. dtype auto: bf16 where it is fast (CUDA
    with bf16, or a CPU whose oneDNN has bf16 kernels: AVX512-BF16/AMX), fp16 on older
    GPUs, else fp32. On an AVX2-only CPU bf16 matmuls are emulated and ~70x slower."""
    device = tc.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = tc.dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
    return device, dtype


def autocast_context(device, ptdtype):
    """Mixed precision: matmuls in ptdtype, reductions (softmax, LayerNorm, the loss) in fp32."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()


def cpu_has_fast_bf16():
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def setup_distributed(device):
    """Data parallel (DDP) when torchrun started this process with WORLD_SIZE > 1: one process
    per GPU (NCCL, device cuda:LOCAL_RANK) or per share of the CPU cores (gloo; torchrun
    gives each process OMP_NUM_THREADS=1). Returns (rank, world_size, device); (0, 1, device)
    for a plain `python train.py`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
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

        t = t.clone()
        dist.all_reduce(t)  # a sum: gloo has no AVG
        t /= world
    return t


# ----------------------------------------------------------------------------------------
# learning-rate schedule


def get_lr(it, cfg):
    """Learning rate at optimizer step `it` (0-based). Every schedule starts with a linear
    warmup over warmup_iters (as nanoGPT: lr * (it+1) / (warmup_iters+1)), then:
      cosine:   half a cosine from learning_rate down to min_lr at lr_decay_iters
      linear:   a straight line down to min_lr at lr_decay_iters
      wsd:      warmup-stable-decay: flat at learning_rate, then a straight line down to
                min_lr over the last decay_frac of the schedule (Hu et al. 2024, MiniCPM;
                the schedule SmolLM2 trains with)
      constant: flat at learning_rate
    After lr_decay_iters (0 means max_iters) the rate stays at min_lr."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    decay_end = cfg.lr_decay_iters or cfg.max_iters
    if it >= decay_end:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = max(decay_end - cfg.decay_frac * decay_end, cfg.warmup_iters)
        if it < decay_start:
            return cfg.learning_rate
        ratio = (it - decay_start) / (decay_end - decay_start)
    else:
        ratio = (it - cfg.warmup_iters) / max(decay_end - cfg.warmup_iters, 1)
    if cfg.lr_schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    else:  # linear, wsd
        coeff = 1.0 - ratio
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------------------
# data


def dataset_dir(name):
    """'shakespeare_char' -> data/shakespeare_char; an existing path is used as it is."""
    if os.path.isdir(name):
        return name
    return os.path.join(REPO_DIR, "data", name)


def load_dataset(name):
    """(train tokens, val tokens, meta) of a prepared dataset, or a UserError saying how to
    prepare it."""
    folder = dataset_dir(name)
    paths = [os.path.join(folder, f) for f in ("train.bin", "val.bin", "meta.json")]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        prepare = os.path.join(folder, "prepare.py")
        how = f"run: python {os.path.relpath(prepare)}" if os.path.exists(prepare) else "see README.md, Datasets"
        raise UserError(f"dataset '{name}' is not prepared: {os.path.relpath(missing[0])} is missing; {how}")
    train = np.memmap(paths[0], dtype=np.uint16, mode="r")
    val = np.memmap(paths[1], dtype=np.uint16, mode="r")
    with open(paths[2]) as f:
        meta = json.load(f)
    return train, val, meta


class RandomWindows:
    """Batches of random (block_size + 1)-token windows from a token array, drawn with a
    generator of its own: its state is the data position that a checkpoint saves."""

    rank, world = 0, 1  # data parallel: set by train() to this process's rank and the number of processes

    def __init__(self, data, batch_size, block_size, device, seed):
        if len(data) <= block_size + 1:
            raise UserError(f"a split has {len(data)} tokens; block_size={block_size} needs more")
        self.data, self.batch_size, self.block_size, self.device = data, batch_size, block_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self):
        # data parallel without a distributed sampler: every process draws the batches of all
        # `world` processes in rank order and keeps its own. All generators then stay in one
        # state (the one data position a checkpoint saves), and N processes see exactly the
        # micro-batches one process would draw in a row.
        starts = [torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.generator)
                  for _ in range(self.world)][self.rank]
        rows = self.data[starts.numpy()[:, None] + self.offsets]  # one gather: (B, T + 1) uint16
        buf = torch.from_numpy(rows.astype(np.int64))
        if self.device != "cpu":
            buf = buf.pin_memory().to(self.device, non_blocking=True)
        return buf[:, :-1], buf[:, 1:]  # inputs and next-token targets, (B, T) each


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device, ctx, seed):
    """Mean loss over eval_iters batches per split. The batches come from a generator
    seeded afresh each call, so two evaluations of the same weights agree exactly."""
    was_training = model.training
    model.eval()
    out = {}
    for i, (name, data) in enumerate(splits.items()):
        windows = RandomWindows(data, batch_size, block_size, device, seed + 1000 + i)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = windows.next()
            with ctx:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[name] = losses.mean().item()
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------
# optimizer


def make_optimizer(model, tc):
    """AdamW over the parameters that require grad (frozen ones, as PEFT leaves them, are
    not handed to the optimizer at all). Matrices (weights, embeddings) decay; biases and
    LayerNorm gains, the 1-D tensors, do not (as GPT-2 and nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() visits the tied one once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    assert len(decay) + len(no_decay) == len(params) == len({id(p) for p in decay + no_decay})
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused AdamW: one kernel for all tensors; at the Shakespeare CPU model it takes 0.8 ms
    # per step here, vs 2.8 ms for the default (foreach) implementation nanoGPT uses on CPU
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=True)


# ----------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(obj, path):
    """torch.save to a temporary file beside path, fsync, then rename over path: a crash
    or an exception at any point leaves the previous checkpoint whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def read_checkpoint(path, why="loading", map_location="cpu", mmap=False):
    """torch.load with weights_only=True: tensors and plain containers only, so a
    checkpoint crafted to run code when unpickled is refused instead of executed.
    mmap=True maps the tensors lazily: cheap when only the config is wanted."""
    if not os.path.exists(path):
        raise UserError(f"{why}: no checkpoint at {path} (train one first, with --init_from=scratch)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # UnpicklingError for unsafe content, RuntimeError for a broken file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to load {path}: not a plain weights checkpoint ({first})") from None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_base_checkpoint(base, why):
    """The base checkpoint a PEFT run was trained on ({"path", "sha256"} from its
    checkpoint), after checking that it is still byte for byte the same file: the PEFT
    tensors only mean something on top of exactly those weights."""
    path = base["path"]
    if not os.path.exists(path):
        raise UserError(f"{why}: the PEFT run was trained on the base checkpoint {path}, which is gone; "
                        f"put that checkpoint back at that path")
    if file_sha256(path) != base["sha256"]:
        raise UserError(f"{why}: the base checkpoint {path} has changed since the PEFT run was trained on it "
                        f"(its sha256 differs); the PEFT tensors fit the original weights only")
    return read_checkpoint(path, why)


def restore_model(ckpt, why, peft_config=None, **overrides):
    """The GPT a checkpoint describes, with overrides (dropout, a shorter block_size) applied
    to its saved GPTConfig. A PEFT run's checkpoint holds only the PEFT tensors: the base's
    weights are loaded (hash-checked), the run's surgery is redone from its saved config,
    and the PEFT tensors are loaded on top (peft_config: today's settings, on resume)."""
    cfg = {**ckpt["model_config"], **overrides}
    weights = read_base_checkpoint(ckpt["peft_base"], why) if "peft_base" in ckpt else ckpt
    model = GPT(GPTConfig(**{**cfg, "block_size": weights["model_config"]["block_size"]}))
    model.load_state_dict(weights["model"])
    if cfg["block_size"] < model.config.block_size:
        model.crop_block_size(cfg["block_size"])
    if "peft_base" in ckpt:
        apply_peft(model, peft_config or PEFTConfig(**{k: ckpt["config"][k] for k in PEFT_KEYS}))
        load_peft_state_dict(model, ckpt["model"])
    return model


def rng_state(windows, world=1):
    """Every random state the run draws from. The data generator is the same in every
    data-parallel process; the torch generator (dropout) is each process's own, so under
    DDP all of them are gathered (a collective: every process calls this)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                  "has_gauss": np_state[3], "cached_gaussian": np_state[4]},
        "torch": torch.get_rng_state(),
        "data": windows.generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if world > 1:
        import torch.distributed as dist

        ranks = [None] * world  # (CPU generator, this process's GPU generator or None) of each process
        dist.all_gather_object(ranks, (torch.get_rng_state(),
                                       torch.cuda.get_rng_state() if torch.cuda.is_available() else None))
        state["torch_ranks"] = [cpu for cpu, _ in ranks]
        if torch.cuda.is_available():
            state["cuda_ranks"] = [gpu for _, gpu in ranks]
    return state


def set_rng_state(state, windows, rank=0, world=1):
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if world > 1 and len(state.get("torch_ranks", [])) == world:
        torch.set_rng_state(state["torch_ranks"][rank])  # this process's dropout stream
    elif (world > 1 or "torch_ranks" in state) and rank == 0:
        print(f"note: the checkpoint was written by {len(state.get('torch_ranks', [])) or 1} process(es), this run has "
              f"{world}: the data continues exactly, dropout's randomness does not")
    windows.generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
        if world > 1 and len(state.get("cuda_ranks", [])) == world:
            torch.cuda.set_rng_state(state["cuda_ranks"][rank])  # this process's GPU (dropout on CUDA)


# ----------------------------------------------------------------------------------------
# the loop


def write_json_atomic(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def forward_backward(run_model, windows, ctx, scaler, accumulation_steps, teacher=None, tc=None, terms=None):
    """Gradients of one optimizer step, accumulated over micro-batches; returns the mean
    loss (a tensor: reading it is the caller's choice, since on CUDA that syncs). With a
    teacher (distill.OnlineTeacher or CachedTeacher) the loss is tc.kd_alpha * KD +
    (1 - tc.kd_alpha) * the model's loss, and terms (a dict) receives the mean KD and CE."""
    loss_sum = 0.0
    for micro in range(accumulation_steps):
        # DDP averages the gradients over the processes during backward; only the last
        # micro-batch needs that, the others just accumulate here (no_sync)
        last = micro == accumulation_steps - 1
        with (run_model.no_sync() if hasattr(run_model, "no_sync") and not last else nullcontext()):
            x, y = windows.next()
            with ctx:
                logits, loss = run_model(x, y)
                if teacher is not None:
                    kd = teacher.loss(logits, x, y, getattr(windows, "last_starts", None), tc)
                    if terms is not None:
                        terms["kd"] = terms.get("kd", 0.0) + kd.detach() / accumulation_steps
                        terms["ce"] = terms.get("ce", 0.0) + loss.detach() / accumulation_steps
                    loss = tc.kd_alpha * kd + (1.0 - tc.kd_alpha) * loss
            loss_sum += loss.detach()
            # each micro-batch's loss is a mean over its tokens; dividing by the number of
            # micro-batches makes the summed gradient the mean over all of them, i.e. the
            # gradient of one batch accumulation_steps times larger (and DDP's average over
            # N processes makes it N times larger again)
            scaler.scale(loss / accumulation_steps).backward()
    return loss_sum / accumulation_steps


def optimizer_step(model, optimizer, scaler, grad_clip):
    if grad_clip > 0.0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train(tc, mc, pc=None):
    """Run the training that (tc, mc, pc) describe. Returns the final metrics row. Under
    torchrun, one data-parallel process of it (setup_distributed)."""
    pc = pc or PEFTConfig()

    device, dtype = resolve_system(tc)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; checked before any process group exists
    if tc.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={tc.gradient_accumulation_steps} must be a multiple of the "
                        f"{world} processes torchrun started: it counts the micro-batches of one optimizer step "
                        f"over all of them (each runs gradient_accumulation_steps / {world})")
    rank, world, device = setup_distributed(device)
    if world == 1:
        return _train(tc, mc, pc, device, dtype, rank, world)
    import torch.distributed as dist

    try:
        row = _train(tc, mc, pc, device, dtype, rank, world)
        dist.barrier()  # leave together: a process that tears gloo down while another still saves aborts
        return row
    finally:
        dist.destroy_process_group()


def _train(tc, mc, pc, device, dtype, rank, world):
    from tqdm import tqdm

    master = rank == 0  # under DDP only process 0 prints and writes files
    say = print if master else (lambda *args, **kwargs: None)
    local_accumulation = tc.gradient_accumulation_steps // world
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    train_data, val_data, meta = load_dataset(tc.dataset)
    mc.vocab_size = meta["vocab_size"]

    # the model: fresh, or the weights of a checkpoint (resume / fine-tune), then PEFT surgery
    ckpt, peft_base = None, None
    if tc.init_from != "scratch":
        src = tc.out_dir if tc.init_from == "resume" else tc.init_from
        why = f"--init_from={tc.init_from}"
        ckpt_path = os.path.join(src, "ckpt.pt")
        ckpt = read_checkpoint(ckpt_path, why=why)
        if not same_tokenizer(ckpt["meta"], meta):
            raise UserError(
                f"dataset '{tc.dataset}' has another tokenizer (vocab_size={meta['vocab_size']}) than the checkpoint "
                f"in {src} (vocab_size={ckpt['meta']['vocab_size']}); prepare the data with that checkpoint's tokenizer"
            )
        if tc.init_from == "resume" and "optimizer" not in ckpt:
            raise UserError(f"{src} holds an exported checkpoint (no optimizer state), which cannot be resumed; "
                            f"fine-tune from it with --init_from={src} and another out_dir")
        if tc.init_from != "resume" and "peft_base" in ckpt:
            raise UserError(
                f"{src} is a PEFT run: its ckpt.pt holds only PEFT tensors. Fine-tune from its base "
                f"({os.path.dirname(ckpt['peft_base']['path'])}), or export a merged model first: "
                f"python export.py --out_dir={src} --to=DIR"
            )
        # a PEFT run (on resume): its base, its surgery, its tensors
        model = restore_model(ckpt, why, pc if tc.init_from == "resume" else None, **asdict(mc))
        if tc.init_from == "resume":
            peft_base = ckpt.get("peft_base")
        elif pc.peft != "none":
            try:
                apply_peft(model, pc)
            except ValueError as e:
                raise UserError(str(e)) from None
            peft_base = {"path": os.path.abspath(ckpt_path), "sha256": file_sha256(ckpt_path)}
    else:
        model = GPT(mc)
    model.to(device)
    trainable = trainable_summary(model)
    if world > 1:
        torch.manual_seed(tc.seed + rank)  # each process its own dropout (the weights are rank 0's: DDP broadcasts them)

    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    ctx = autocast_context(device, ptdtype)
    # fp16's range is too narrow for small gradients: scale the loss up, unscale before the step
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    optimizer = make_optimizer(model, tc)
    # distillation: an online teacher, or a cache whose windows the batches must follow
    teacher = None
    try:
        if tc.soft_labels:
            teacher = distill.CachedTeacher(tc.soft_labels, meta, mc.block_size, tc.kd_top_k or None, tc.kd_tail,
                                            tc.kd_temperature)
        elif tc.teacher:
            teacher = distill.OnlineTeacher(distill.load_teacher(tc.teacher, meta, device)[0])
    except ValueError as e:
        raise UserError(str(e)) from None
    if isinstance(teacher, distill.CachedTeacher):
        windows = distill.AlignedWindows(train_data, tc.batch_size, mc.block_size, device, tc.seed, teacher.n_windows)
    else:
        windows = RandomWindows(train_data, tc.batch_size, mc.block_size, device, tc.seed)
    windows.rank, windows.world = rank, world

    iter_num, best_val_loss, elapsed_before = 0, float("inf"), 0.0
    if tc.init_from == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, decay in zip(optimizer.param_groups, (tc.weight_decay, 0.0)):
            group["weight_decay"], group["betas"] = decay, (tc.beta1, tc.beta2)  # today's config, not the saved one
        scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss, elapsed_before = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["elapsed"]
        set_rng_state(ckpt["rng"], windows, rank, world)
    del ckpt
    start_iter = iter_num

    eval_model = torch.compile(model) if tc.compile else model  # `model` stays the plain module we save
    run_model = eval_model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run_model = DistributedDataParallel(
            eval_model, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None)

    config = {**asdict(tc), **asdict(mc), **asdict(pc), "device": device, "dtype": dtype,
              "trainable": {k: v for k, v in trainable.items() if k != "line"}}
    metrics = None  # eval_only is an extra measurement: it leaves the run's files as they are
    if not tc.eval_only and master:
        os.makedirs(tc.out_dir, exist_ok=True)
        write_json_atomic(config, os.path.join(tc.out_dir, "config.json"))
        metrics_path = os.path.join(tc.out_dir, "metrics.jsonl")
        if tc.init_from == "resume":
            trim_metrics(metrics_path, start_iter)
        elif os.path.exists(metrics_path):
            os.remove(metrics_path)  # a new run in an old run's folder: the file holds the new run's rows only
        metrics = open(metrics_path, "a")

    tokens_per_iter = tc.gradient_accumulation_steps * tc.batch_size * mc.block_size
    moe_layers = model.moe_layers()
    active = f" ({model.get_num_params(active=True) / 1e6:.2f}M active per token)" if moe_layers else ""
    say(
        f"model: {model.get_num_params() / 1e6:.2f}M parameters{active} | {device} {dtype} | "
        f"tokens per optimizer step: {tokens_per_iter:,} "
        f"({tc.gradient_accumulation_steps} x {tc.batch_size} x {mc.block_size})"
        + (f" | data parallel: {world} processes x {local_accumulation} micro-batches" if world > 1 else "")
    )
    if pc.peft != "none" or tc.init_from not in ("scratch", "resume"):
        say(f"{pc.peft if pc.peft != 'none' else 'full fine-tuning'}: {trainable['line']}")
    if tc.init_from == "resume":
        say(f"resuming {tc.out_dir} at iter {iter_num}")
    if iter_num >= tc.max_iters and not tc.eval_only:
        say(f"nothing to do: the checkpoint is at iter {iter_num} >= max_iters={tc.max_iters}; "
              f"pass a larger --max_iters to train on")
        if metrics:
            metrics.close()
        return None

    t_start = time.perf_counter()

    def log(row):
        row["time"] = round(elapsed_before + time.perf_counter() - t_start, 3)
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        return row

    def evaluate_and_save(it):
        nonlocal best_val_loss
        # every process evaluates the same fixed batches (no collective), so all agree on best_val_loss
        losses = estimate_loss(eval_model, {"train": train_data, "val": val_data}, tc.batch_size,
                               mc.block_size, tc.eval_iters, device, ctx, tc.seed)
        row = log({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
        improved = losses["val"] < best_val_loss
        best_val_loss = min(best_val_loss, losses["val"])
        if master:
            tqdm.write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if tc.eval_only:
            return row
        if improved or tc.always_save_checkpoint or it == tc.max_iters:
            rng = rng_state(windows, world)  # under DDP a collective: before the master-only part
            if not master:
                return row
            ckpt = {
                # a PEFT run saves its PEFT tensors and where its base is (restore_model)
                "model": peft_state_dict(model) if peft_base else model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "model_config": asdict(model.config),
                "config": config,
                "meta": meta,  # the tokenizer, so sample.py needs only the checkpoint
                "iter_num": it,
                "best_val_loss": best_val_loss,
                "elapsed": row["time"],
                "rng": rng,
            }
            if peft_base:
                ckpt["peft_base"] = peft_base
            save_checkpoint(ckpt, os.path.join(tc.out_dir, "ckpt.pt"))
        return row

    if tc.eval_only:
        return evaluate_and_save(iter_num)

    bar = tqdm(total=tc.max_iters, initial=iter_num, disable=not (tc.progress and master), dynamic_ncols=True)
    run_model.train()
    t_last, steps_since_log = time.perf_counter(), 0
    while iter_num < tc.max_iters:
        # evaluate on the schedule, except right after resuming: that state was evaluated
        if iter_num % tc.eval_interval == 0 and not (tc.init_from == "resume" and iter_num == start_iter):
            evaluate_and_save(iter_num)
            t_last, steps_since_log = time.perf_counter(), 0  # tokens/s leaves eval time out

        lr = get_lr(iter_num, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = {}
        loss = forward_backward(run_model, windows, ctx, scaler, local_accumulation, teacher, tc, terms)
        loss_value = all_mean(loss, world).item()  # every process sees the same value: all stop, or none
        if not math.isfinite(loss_value):
            bar.close()
            if metrics:
                metrics.close()
            raise NonFiniteLossError(
                f"loss is {loss_value} at iter {iter_num}: stopped before the optimizer step; "
                f"{os.path.join(tc.out_dir, 'ckpt.pt')} still holds the last good checkpoint "
                f"(try a lower learning_rate, grad_clip > 0, or dtype=float32)"
            )
        optimizer_step(model, optimizer, scaler, tc.grad_clip)

        it, iter_num, steps_since_log = iter_num, iter_num + 1, steps_since_log + 1
        bar.update(1)
        if it % tc.log_interval == 0 or iter_num == tc.max_iters:
            now = time.perf_counter()
            tok_s = tokens_per_iter * steps_since_log / max(now - t_last, 1e-9)
            t_last, steps_since_log = now, 0
            row = {"iter": it, "loss": loss_value, "lr": lr, "tokens_per_sec": round(tok_s, 1)}
            row.update({k: v.item() for k, v in terms.items()})  # distillation: the KD and CE terms
            postfix = dict(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
            if moe_layers:
                # the routing of this step's last micro-batch: collapse shows as a load near 0 or 1
                stats = moe_statistics(model.moe_stats)
                row.update(ce=stats["ce"], aux_loss=stats["aux_loss"], z_loss=stats["z_loss"],
                           dropped=stats["dropped"], load=stats["load"])
                flat = [f for layer in stats["load"] for f in layer]
                postfix["load"] = f"{100 * min(flat):.0f}-{100 * max(flat):.0f}%"
            log(row)
            bar.set_postfix(**postfix, refresh=False)

    bar.close()
    row = evaluate_and_save(iter_num)  # the final state is always evaluated and saved
    if metrics:
        metrics.close()
    return row


def trim_metrics(path, start_iter):
    """On resume, drop metrics rows past the checkpoint (written after the last save by a
    run that then died), so the file reads as one uninterrupted run."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keep = [r for r in rows if r["iter"] < start_iter or ("val_loss" in r and r["iter"] == start_iter)]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        tc, mc, pc = load_config(argv)
        train(tc, mc, pc)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint written is intact", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
