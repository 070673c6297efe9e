"""
Checkpoints: written atomically, read without running code, tied to their base by hash,
and carrying every random state a run draws from, so that a resumed run continues bit for
bit (tests/test_train.py checks all four).

    from checkpoint import read_checkpoint, restore_model, save_checkpoint
    ckpt = read_checkpoint("out-quickstart/ckpt.pt")        # torch.load(weights_only=True)
    model = restore_model(ckpt, "my script", dropout=0.0)   # a GPT; a PEFT run comes with its base

What train.py writes into ckpt.pt: "model" (the state dict; a PEFT run's PEFT tensors
only), "optimizer", "scaler", "model_config" (GPTConfig as a dict), "config" (the resolved
run config), "meta" (the tokenizer), "iter_num", "best_val_loss", "elapsed", "rng" (see
rng_state) and, for a PEFT run, "peft_base": the path and sha256 of the base's ckpt.pt.
"""

import hashlib
import json
import os
import random
from dataclasses import fields

import numpy as np
import torch

from errors import UserError
from model import GPT, GPTConfig
from peft import PEFTConfig, apply_peft, load_peft_state_dict

PEFT_KEYS = [f.name for f in fields(PEFTConfig)]

# ----------------------------------------------------------------------------------------
# writing and reading


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
    """The hex sha256 of a file, read 1 MiB at a time (a PEFT run records its base's)."""
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


def write_json_atomic(obj, path):
    """json.dump to a temporary file, then rename over path (never a half-written file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# a model from a checkpoint


def restore_model(ckpt, why, peft_config=None, **overrides):
    """The GPT a checkpoint describes, with overrides (dropout, a shorter block_size) applied
    to its saved GPTConfig. A PEFT run's checkpoint holds only the PEFT tensors: the base's
    weights are loaded (hash-checked), the run's surgery is redone from its saved config,
    and the PEFT tensors are loaded on top (peft_config: today's settings, on resume)."""
    cfg = {**ckpt["model_config"], **overrides}
    weights = read_base_checkpoint(ckpt["peft_base"], why) if "peft_base" in ckpt else ckpt
    # a learned position table has the saved length (cropped below); RoPE and NoPE run at any
    learned = weights["model_config"].get("pos_emb", "learned") == "learned"
    model = GPT(GPTConfig(**{**cfg, "block_size": weights["model_config"]["block_size"] if learned else cfg["block_size"]}))
    try:
        model.load_state_dict(weights["model"])
    except RuntimeError as e:  # config.saved_config refuses the changes it knows of; this names any other
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{why}: the checkpoint's weights do not fit the model its settings describe ({first}); "
                        f"drop the architecture keys that differ from the checkpoint's") from None
    if cfg["block_size"] < model.config.block_size:
        model.crop_block_size(cfg["block_size"])
    if "peft_base" in ckpt:
        apply_peft(model, peft_config or PEFTConfig(**{k: ckpt["config"][k] for k in PEFT_KEYS}))
        load_peft_state_dict(model, ckpt["model"])
    return model


# ----------------------------------------------------------------------------------------
# random state


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
