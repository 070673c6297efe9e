"""
Checkpoints: written atomically, read without running code, tied to their base by hash,
carrying every random state a run draws from, so that a resumed run continues bit for
bit (tests/test_train.py checks all four), and rotated with a checksum each, so that a
damaged newest one falls back to the one before (tests/test_faults.py).

    from checkpoint import find_checkpoint, read_checkpoint, restore_model, save_checkpoint
    ckpt = read_checkpoint("out-quickstart/ckpt.pt")        # torch.load(weights_only=True)
    model = restore_model(ckpt, "my script", dropout=0.0)   # a GPT; a PEFT run comes with its base
    path, ckpt, passed_over = find_checkpoint("out-quickstart", "resume")  # the newest that loads

What train.py writes into ckpt.pt: "model" (the state dict; a PEFT run's PEFT tensors
only), "optimizer", "scaler", "model_config" (GPTConfig as a dict), "config" (the resolved
run config), "meta" (the tokenizer), "iter_num", "best_val_loss", "elapsed", "rng" (see
rng_state) and, for a PEFT run, "peft_base": the path and sha256 of the base's ckpt.pt.
"""

import glob
import hashlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, fields

import numpy as np
import torch

from errors import UserError
from model import GPT, GPTConfig
from peft import PEFTConfig, apply_peft, load_peft_state_dict
from quant import apply_qat, make_quantized
from tokenizer import same_tokenizer

PEFT_KEYS = [f.name for f in fields(PEFTConfig)]

# ----------------------------------------------------------------------------------------
# writing and reading


class _Hashed:
    """A binary file that hashes what is written through it: the checksum of a checkpoint
    comes with the write itself, without reading the file back."""

    def __init__(self, f):
        self.f, self.sha256, self.bytes, self.error = f, hashlib.sha256(), 0, None

    def write(self, b):
        self.sha256.update(b)
        self.bytes += len(b)
        try:
            return self.f.write(b)
        except OSError as e:  # torch's zip writer turns it into a RuntimeError about positions: keep the cause
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def save_checkpoint(obj, path, before_rename=None):
    """torch.save to a temporary file beside path, fsync, then rename over path: a crash
    or an exception at any point (a full disk, a second Ctrl-C) leaves the previous
    checkpoint whole. before_rename(sha256, bytes), if given, runs between the complete
    write and the rename (rotation records the checksum there). Returns (sha256, bytes)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            out = _Hashed(f)
            try:
                torch.save(obj, out)
            except RuntimeError:
                if out.error is None:
                    raise
                raise out.error from None  # e.g. [Errno 28] No space left on device
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(out.sha256.hexdigest(), out.bytes)
        os.replace(tmp, path)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(path)
    return out.sha256.hexdigest(), out.bytes


def fsync_dir(path):
    """Make a rename or an unlink in path's folder survive a power cut."""
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path, why="loading", map_location="cpu", mmap=False):
    """torch.load with weights_only=True: tensors and plain containers only, so a
    checkpoint crafted to run code when unpickled is refused instead of executed.
    mmap=True maps the tensors lazily: cheap when only the config is wanted. A file that
    is not whole (truncated, empty) is reported as damaged, one with code in it as unsafe."""
    if not os.path.exists(path):
        raise UserError(f"{why}: no checkpoint at {path} (train one first, with --init_from=scratch)")
    problem = load_problem(path, mmap=mmap, map_location=map_location)
    if isinstance(problem, str):
        raise UserError(f"{why}: {path} {problem}")
    return problem


def load_problem(path, mmap=False, map_location="cpu"):
    """The loaded checkpoint, or why it cannot be loaded (a string)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # weights_only refused a global: code, not data
        first = str(e).strip().splitlines()[0]
        return f"is not a plain weights checkpoint, refusing to load it ({first})"
    except Exception as e:  # RuntimeError (no zip directory: truncated), EOFError (empty), ...
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        size = os.path.getsize(path)
        return f"is damaged: it cannot be read ({size:,} bytes; {first})"


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
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------
# a run folder's checkpoints: rotation, checksums, resuming from the newest that loads
#
#   ckpt.pt             the newest (nanoGPT's name: every tool reads it)
#   ckpt-<iter>.pt      the keep_last - 1 before it
#   checkpoints.json    {"checkpoints": [{"file", "iter", "sha256", "bytes"}, ...]}, newest first:
#                       each file's checksum, recorded when it was written
#
# A save writes the new file beside ckpt.pt, hard-links the current ckpt.pt to ckpt-<its
# iter>.pt, records the new checksum, renames the new file over ckpt.pt, then drops the
# checkpoints beyond keep_last. Killed anywhere in between, the folder still holds a
# checkpoint whose checksum is on record (torchtitan and Composer keep the last K the same way).

CKPT, MANIFEST = "ckpt.pt", "checkpoints.json"


def read_manifest(folder):
    """The recorded checkpoints, newest first ([] for a folder from before rotation)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save_rotating(obj, folder, keep_last, fresh=False):
    """Save obj (a training checkpoint: it has "iter_num") as folder/ckpt.pt, keeping the
    previous keep_last - 1 as ckpt-<iter>.pt. fresh: the first save of a new run, which
    replaces the checkpoints another run left in the folder. Returns the new record."""
    path = os.path.join(folder, CKPT)
    records = [] if fresh else [r for r in read_manifest(folder) if os.path.exists(os.path.join(folder, r["file"]))]
    current = next((r for r in records if r["file"] == CKPT), None)
    if current is None and os.path.exists(path) and not fresh:  # a folder from before rotation: describe its ckpt.pt
        state = load_problem(path, mmap=True)
        if not isinstance(state, str):
            current = {"file": CKPT, "iter": state["iter_num"], "sha256": file_sha256(path),
                       "bytes": os.path.getsize(path)}
    new = {"file": CKPT, "iter": obj["iter_num"]}

    def before_rename(sha256, size):
        older = [r for r in records if r["file"] != CKPT]
        if keep_last > 1 and current is not None and current["iter"] != new["iter"]:
            kept = f"ckpt-{current['iter']}.pt"
            link_or_copy(path, os.path.join(folder, kept))
            older = [{**current, "file": kept}] + [r for r in older if r["file"] != kept]
        new.update(sha256=sha256, bytes=size)
        # recorded before the rename: whichever file ckpt.pt is when a crash comes, its checksum is on record
        write_json_atomic({"checkpoints": [new] + older}, os.path.join(folder, MANIFEST))

    save_checkpoint(obj, path, before_rename)
    prune(folder, keep_last)
    return new


def link_or_copy(src, dst):
    """dst becomes src's content: a hard link (no bytes copied), or a copy where the
    filesystem has no links."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return  # already one file: a rename onto its own other name would do nothing and leave tmp behind
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prune(folder, keep_last):
    """Keep the newest keep_last checkpoints; delete the older ones and any ckpt-<iter>.pt
    that no record names (left by a save that was killed)."""
    records = sorted(read_manifest(folder), key=lambda r: (r["file"] == CKPT, r["iter"]), reverse=True)
    keep, drop = records[:keep_last], records[keep_last:]
    if drop:
        write_json_atomic({"checkpoints": keep}, os.path.join(folder, MANIFEST))
    named = {r["file"] for r in keep}
    for path in glob.glob(os.path.join(folder, "ckpt-*.pt")):
        if re.fullmatch(r"ckpt-\d+\.pt", os.path.basename(path)) and os.path.basename(path) not in named:
            os.remove(path)


def clear_partial_saves(folder):
    """Delete the temporary files of saves that were killed before their rename (call it
    while holding the folder's lock: then no save is in flight)."""
    for pattern in (f"{CKPT}.tmp*", "ckpt-*.pt.tmp*", f"{MANIFEST}.tmp"):
        for path in glob.glob(os.path.join(folder, pattern)):
            os.remove(path)


def candidates(folder):
    """The checkpoint files of a run folder, newest first: ckpt.pt, then ckpt-<iter>.pt by iter."""
    older = [p for p in glob.glob(os.path.join(folder, "ckpt-*.pt")) if re.fullmatch(r"ckpt-\d+\.pt", os.path.basename(p))]
    older.sort(key=lambda p: int(os.path.basename(p)[5:-3]), reverse=True)
    return [os.path.join(folder, CKPT)] * os.path.exists(os.path.join(folder, CKPT)) + older


_checked = {}  # (path, size, mtime) -> sha256: config.py and train.py check the same file once


def checksum_problem(path, records):
    """Why path does not match the checksum recorded when it was written, or None (also
    for a folder from before rotation, which has no record to check against)."""
    if not records:
        return None
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _checked:
        _checked[key] = file_sha256(path)
    if _checked[key] in {r["sha256"] for r in records}:
        return None
    mine = next((r for r in records if r["file"] == os.path.basename(path)), None)
    if mine is not None and mine["bytes"] != st.st_size:
        return f"is damaged: {st.st_size:,} bytes, but {mine['bytes']:,} were written (truncated or half-written)"
    return "is damaged: its sha256 is not the one recorded when it was saved (corrupted or half-written)"


def find_checkpoint(folder, why, mmap=False):
    """(path, checkpoint, passed_over) for the newest checkpoint in folder that loads and
    matches its recorded checksum; passed_over lists each newer file as (path, why). With
    none loadable, a UserError lists what was tried: never a silent fresh start."""
    records, passed_over = read_manifest(folder), []
    for path in candidates(folder):
        problem = checksum_problem(path, records) if os.path.getsize(path) else "is empty (0 bytes)"
        ckpt = problem or load_problem(path, mmap=mmap)
        if isinstance(ckpt, str):
            passed_over.append((path, ckpt))
            continue
        return path, ckpt, passed_over
    if not passed_over:
        raise UserError(f"{why}: no checkpoint at {os.path.join(folder, CKPT)} (train one first, with --init_from=scratch)")
    tried = "; ".join(f"{os.path.basename(p)} {problem}" for p, problem in passed_over)
    raise UserError(f"{why}: no loadable checkpoint in {folder}; tried: {tried}. Nothing was changed: "
                    f"put a good ckpt.pt back, or start over with --init_from=scratch")


def set_aside(folder, path, passed_over):
    """After resuming from path past damaged newer files: rename each to <name>.damaged
    (kept to look at, out of the rotation) and make ckpt.pt the checkpoint resumed from."""
    damaged = {os.path.basename(p) for p, _ in passed_over}
    for p, _ in passed_over:
        os.replace(p, p + ".damaged")
    records = [r for r in read_manifest(folder) if r["file"] not in damaged]
    if os.path.basename(path) != CKPT:
        link_or_copy(path, os.path.join(folder, CKPT))
        records = [{**r, "file": CKPT} for r in records if r["file"] == os.path.basename(path)] + records
    if read_manifest(folder):
        write_json_atomic({"checkpoints": records}, os.path.join(folder, MANIFEST))
    fsync_dir(os.path.join(folder, CKPT))


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
    if "quant" in weights:  # quantize.py's: its Linear layers hold codes and scales (quant.QuantLinear)
        make_quantized(model, weights["quant"])
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


def init_model(cfg, meta):
    """train.py's model: (model, its checkpoint or None, a PEFT run's base or None) for a
    config.Config whose dataset has the tokenizer meta. A fresh GPT (init_from=scratch);
    the run being resumed, from the newest checkpoint that loads (its "path" and
    "passed_over" added: find_checkpoint); or the weights of init_from, with PEFT surgery
    on top when asked. With qat_bits, its Linear layers then train fake-quantized."""
    model, ckpt, base = _init_model(cfg, meta)
    if cfg.train.qat_bits:
        try:
            apply_qat(model, cfg.train.qat_bits, 0 if cfg.train.qat_bits == 8 else cfg.train.qat_group_size)
        except ValueError as e:
            raise UserError(f"qat_group_size={cfg.train.qat_group_size}: {e}") from None
    return model, ckpt, base


def _init_model(cfg, meta):
    tc, mc, pc, _ = cfg
    if tc.init_from == "scratch":
        return GPT(mc), None, None
    src = tc.out_dir if tc.init_from == "resume" else tc.init_from
    why = f"--init_from={tc.init_from}"
    ckpt_path = os.path.join(src, "ckpt.pt")
    if tc.init_from == "resume":  # the newest checkpoint that loads and matches its checksum
        ckpt_path, ckpt, passed_over = find_checkpoint(src, why)
        ckpt["path"], ckpt["passed_over"] = ckpt_path, passed_over
    else:
        ckpt = read_checkpoint(ckpt_path, why=why)
    if not same_tokenizer(ckpt["meta"], meta):
        raise UserError(
            f"dataset '{tc.dataset}' has another tokenizer (vocab_size={meta['vocab_size']}) than the checkpoint "
            f"in {src} (vocab_size={ckpt['meta']['vocab_size']}); prepare the data with that checkpoint's tokenizer"
        )
    if tc.init_from == "resume" and "optimizer" not in ckpt:
        raise UserError(f"{src} holds an exported checkpoint (no optimizer state), which cannot be resumed; "
                        f"fine-tune from it with --init_from={src} and another out_dir")
    if "quant" in ckpt and not tc.eval_only and pc.peft != "lora":
        raise UserError(f"{src} holds a quantized model (int{ckpt['quant']['bits']}, quantize.py): its weights are "
                        f"codes that do not train. Evaluate it (--eval_only=True), sample it, put LoRA on it "
                        f"(--peft=lora: QLoRA), or fine-tune its source run ({ckpt['quantized_from']['run']})")
    if tc.init_from != "resume" and "peft_base" in ckpt:
        raise UserError(
            f"{src} is a PEFT run: its ckpt.pt holds only PEFT tensors. Fine-tune from its base "
            f"({os.path.dirname(ckpt['peft_base']['path'])}), or export a merged model first: "
            f"python export.py --out_dir={src} --to=DIR"
        )
    # a PEFT run (on resume): its base, its surgery, its tensors
    model = restore_model(ckpt, why, pc if tc.init_from == "resume" else None, **asdict(mc))
    if tc.init_from == "resume":
        return model, ckpt, ckpt.get("peft_base")
    if pc.peft == "none":
        return model, ckpt, None
    try:
        apply_peft(model, pc)
    except ValueError as e:
        raise UserError(str(e)) from None
    return model, ckpt, {"path": os.path.abspath(ckpt_path), "sha256": file_sha256(ckpt_path)}


def load_weights(model, ckpt):
    """Put a training checkpoint's weights back into the model that saved them, in place (a
    PEFT run's: its PEFT tensors; the frozen base is unchanged)."""
    if "peft_base" in ckpt:
        load_peft_state_dict(model, ckpt["model"])
    else:
        model.load_state_dict(ckpt["model"])


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
