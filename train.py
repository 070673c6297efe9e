"""
The one training loop: pretraining from scratch, full or parameter-efficient fine-tuning
from a checkpoint, distillation, and resuming.

    python train.py configs/quickstart.py                      # a config file: plain assignments
    python train.py configs/shakespeare_char_cpu.py --max_iters=500 --dtype=float32
    python train.py configs/shakespeare_char_cpu.py --init_from=resume --max_iters=3000
    python train.py configs/peft_finetune.py --peft=lora --lora_r=8   # LoRA on a base run (peft.py)
    torchrun --standalone --nproc_per_node=2 train.py configs/shakespeare_char_cpu.py --gradient_accumulation_steps=2

The keys, their defaults and their checks are config.py's; one optimizer step (micro-batch
accumulation, KD, clipping) is step.py's; this file is the loop around them, readable top
to bottom:

    setup      lock out_dir -> config -> seeds -> data -> model (scratch | resume | init_from,
               then PEFT surgery) -> AdamW, GradScaler -> teacher and batches -> resumed state
    train      until max_iters: [evaluate and save on the schedule] -> lr = get_lr(it) ->
               forward_backward -> a spike? stop or rewind -> optimizer_step -> log ->
               a stop signal? save and exit 128 + signum
    finish     evaluate and save the final state

out_dir receives config.json (the resolved config), metrics.jsonl (a JSON object per line:
training rows `iter, loss, lr, tokens_per_sec, time`, eval rows `iter, train_loss,
val_loss, time`) and ckpt.pt, written atomically at every eval and at the end, the older
ones rotated to ckpt-<iter>.pt (checkpoint.py); run.lock keeps a second run out (rundir.py).
What a long run meets (SIGTERM, Ctrl-C, spikes, a full disk) and the answers: faults.py.

Data parallel: `torchrun --standalone --nproc_per_node=N train.py ...` runs N processes
(system.setup_distributed); each runs gradient_accumulation_steps / N of the micro-batches,
DDP averages the gradients, and process 0 alone prints and writes the files.

PEFT (peft != 'none', with init_from a base run folder): the base is loaded, peft.py's
surgery freezes it and adds the PEFT parameters, and only those reach the optimizer. The
run's ckpt.pt then holds the PEFT tensors, their optimizer state and the path and sha256
of the base's ckpt.pt (checkpoint.restore_model puts the two back together, refusing a
changed base). Nothing imports this file: it is the top of the import graph.
"""

import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

import distill
from batches import DifficultyWindows, MixtureWindows, SeqLenWindows, check_length, load_dataset, load_mixture, make_windows
from checkpoint import find_checkpoint, init_model, load_weights, rng_state, save_rotating, set_rng_state, write_json_atomic
from config import Config, check_memory, load_config
from curriculum import load_scores
from errors import UserError, cli
from faults import Interrupted, NonFiniteLossError, Preempted, SaveError, SpikeError, SpikeGuard, StopSignals
from model import GPT, moe_statistics
from peft import peft_state_dict, trainable_summary
from rundir import hold_folder, open_metrics, recover_folder
from step import estimate_loss, forward_backward, get_lr, make_optimizer, optimizer_step
from system import all_mean, autocast_context, barrier, resolve_system, setup_distributed, world_size


def train(cfg):
    """Run the training that cfg (a config.Config) describes. Returns the final eval row
    (None when there was nothing to do). Under torchrun, one data-parallel process of it."""
    device, dtype = resolve_system(cfg.train.device, cfg.train.dtype)
    world = world_size()  # torchrun's; checked before any process group exists
    if cfg.train.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={cfg.train.gradient_accumulation_steps} must be a multiple of "
                        f"the {world} processes torchrun started: it counts the micro-batches of one optimizer step "
                        f"over all of them (each runs gradient_accumulation_steps / {world})")
    rank, world, device = setup_distributed(device)
    lock = None  # rundir.RunLock
    try:
        run = setup(cfg, device, dtype, rank, world)  # reads, refuses, writes nothing
        lock = hold_folder(cfg.train, rank, world)  # one run per out_dir, from here on
        recover_folder(run.resumed, cfg.train, rank, world)  # resumed past a damaged newest checkpoint?
        row = train_steps(run)
        barrier(world)  # leave together: a process that tears gloo down while another still saves aborts
        return row
    finally:
        if lock is not None:
            lock.release()
        if world > 1:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------
# setup


@dataclass
class Run:
    """What the loop works with, built once by setup()."""

    cfg: Config
    device: str
    dtype: str
    rank: int  # this process under DDP (0 alone prints and writes files)
    world: int  # data-parallel processes
    model: GPT  # the plain module: what is saved
    eval_model: torch.nn.Module  # the model, compiled if asked
    run_model: torch.nn.Module  # what trains: eval_model, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: object  # the autocast context
    windows: object  # batches.RandomWindows or AlignedWindows
    teacher: object  # distill.OnlineTeacher, CachedTeacher or None
    splits: dict  # {"train": tokens, "val": tokens}
    meta: dict  # the dataset's tokenizer
    config: dict  # the resolved config, as config.json and every checkpoint hold it
    peft_base: dict  # a PEFT run's base {"path", "sha256"}, else None
    moe: bool  # the model has MoE layers: their routing statistics are logged
    iter_num: int = 0
    start_iter: int = 0
    best_val_loss: float = float("inf")
    elapsed_before: float = 0.0  # seconds of earlier sessions of this run (resume)
    t_start: float = 0.0
    metrics: object = None  # metrics.jsonl, open for appending (process 0, not eval_only)
    guard: SpikeGuard = None  # tells a loss spike (faults.py)
    rewinds: int = 0  # on_spike=rewind: rewinds so far
    last_saved: int = None  # the iter of the newest good checkpoint (None: none yet)
    evaluated_at: int = -1  # a state evaluated before (resumed, rewound to): no second eval row for it
    resumed: dict = None  # on resume: the checkpoint's "path" and the damaged newer ones "passed_over"

    @property
    def master(self):
        return self.rank == 0

    def say(self, *args):
        if self.master:
            print(*args)


def setup(cfg, device, dtype, rank, world):
    """Everything before the first step, in the order the random state depends on: seeds,
    data, the model, AdamW and the GradScaler, the teacher and the batches, a resumed
    run's state, then compile and DDP. Every refusal of what was asked happens here,
    before train_steps writes a file."""
    tc, mc, pc, kc = cfg
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    mixture = load_mixture(tc.datasets) if tc.datasets else None  # {name: (train, val, meta)}
    # a mixture's first dataset gives train_loss, val_loss and the tokenizer
    train_data, val_data, meta = next(iter(mixture.values())) if mixture else load_dataset(tc.dataset)
    mc.vocab_size = meta["vocab_size"]
    for name, (train_split, val_split, _) in (mixture or {tc.dataset: (train_data, val_data, meta)}).items():
        check_length(train_split, mc.block_size, f"dataset '{name}': train.bin")
        check_length(val_split, mc.block_size, f"dataset '{name}': val.bin")
    check_memory(cfg, mc.vocab_size, device)
    model, ckpt, peft_base = init_model(cfg, meta)
    model.to(device)
    trainable = trainable_summary(model)
    if world > 1:
        torch.manual_seed(tc.seed + rank)  # each process its own dropout (the weights are rank 0's: DDP broadcasts them)

    ctx = autocast_context(device, dtype)
    # fp16's range is too narrow for small gradients: scale the loss up, unscale before the step
    scaler = torch.amp.GradScaler("cuda" if device.startswith("cuda") else "cpu", enabled=(dtype == "float16"))
    optimizer = make_optimizer(model, tc)
    # distillation: an online teacher, or a cache whose windows the batches must follow
    try:
        teacher = distill.make_teacher(kc, meta, mc.block_size, device, train_data, tc.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    aligned = teacher.n_windows if isinstance(teacher, distill.CachedTeacher) else None
    windows = make_windows(tc, mc.block_size, device, train_data, mixture, aligned, lambda: load_scores(
        tc.dataset, train_data, mc.block_size, tc.curriculum_scorer, mc.vocab_size, device))
    windows.rank, windows.world = rank, world

    config = {**cfg.as_dict(), "device": device, "dtype": dtype,
              "trainable": {k: v for k, v in trainable.items() if k != "line"}}
    splits = {"train": train_data, "val": val_data, **{f"val_{n}": d[1] for n, d in list((mixture or {}).items())[1:]}}
    run = Run(cfg, device, dtype, rank, world, model, model, model, optimizer, scaler, ctx, windows,
              teacher, splits, meta, config, peft_base, bool(model.moe_layers()),
              guard=SpikeGuard(tc.spike_factor if tc.on_spike == "rewind" else 0, tc.spike_window))
    if tc.init_from == "resume":
        restore_state(run, ckpt)
        run.resumed = {k: ckpt[k] for k in ("path", "passed_over", "iter_num")}
    run.eval_model = torch.compile(model) if tc.compile else model  # `model` stays the plain module we save
    run.run_model = run.eval_model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.run_model = DistributedDataParallel(
            run.eval_model, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)
    describe(run, trainable, ckpt["config"] if tc.init_from == "resume" else None)
    return run


def restore_state(run, ckpt):
    """Resume: AdamW, the GradScaler, the iteration, the best val loss and every RNG, as saved."""
    tc = run.cfg.train
    fresh = [(g["weight_decay"], g["lr_scale"]) for g in run.optimizer.param_groups]  # from today's config
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for group, (decay, scale) in zip(run.optimizer.param_groups, fresh):
        # today's config, not the saved one (a checkpoint from before muP has no lr_scale)
        group["weight_decay"], group["betas"], group["lr_scale"] = decay, (tc.beta1, tc.beta2), scale
    if run.scaler.is_enabled() and not ckpt["scaler"]:
        # saved by an fp32 or bf16 run, whose scaler was off: fp16 begins with a fresh scale
        run.say("note: the checkpoint has no GradScaler state (it was trained without fp16); starting a fresh one")
    else:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.iter_num, run.best_val_loss, run.elapsed_before = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["elapsed"]
    run.start_iter = run.last_saved = run.iter_num
    # a checkpoint saved between evals (a signal, ckpt_interval) has no eval row: evaluate it if it is due
    run.evaluated_at = run.iter_num if ckpt.get("evaluated", True) else -1
    run.guard.recent.clear()
    run.guard.recent.extend(ckpt.get("spike_recent", []))
    run.rewinds = ckpt.get("rewinds", 0)
    set_rng_state(ckpt["rng"], run.windows, run.rank, run.world)


def describe(run, trainable, saved=None):
    """The start-up lines: size, machine, tokens per step, what trains; on resume, the keys
    that differ from the checkpoint's config (saved)."""
    tc, mc, pc, _ = run.cfg
    tokens_per_iter = tc.gradient_accumulation_steps * tc.batch_size * mc.block_size
    active = f" ({run.model.get_num_params(active=True) / 1e6:.2f}M active per token)" if run.moe else ""
    run.say(
        f"model: {run.model.get_num_params() / 1e6:.2f}M parameters{active} | {run.device} {run.dtype} | "
        f"tokens per optimizer step: {tokens_per_iter:,} "
        f"({tc.gradient_accumulation_steps} x {tc.batch_size} x {mc.block_size})"
        + (f" | data parallel: {run.world} processes x {tc.gradient_accumulation_steps // run.world} micro-batches"
           if run.world > 1 else "")
    )
    if mc.attention != "full":
        detail = (f"window {mc.attn_window}" if mc.attention == "sliding"
                  else f"blocks of {mc.attn_block}, {mc.attn_summary} summary positions each")
        run.say(f"attention: {mc.attention} ({detail})")
    if pc.peft != "none" or tc.init_from not in ("scratch", "resume"):
        run.say(f"{pc.peft if pc.peft != 'none' else 'full fine-tuning'}: {trainable['line']}")
    if tc.init_from == "resume":
        changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in run.config.items()
                   if k in saved and k not in ("init_from", "trainable") and saved[k] != v]  # dtype too: a new machine
        run.say(f"resuming {tc.out_dir} at iter {run.iter_num}"
                + (f"; changed since the checkpoint: {', '.join(changed)}" if changed else ""))


# ----------------------------------------------------------------------------------------
# the loop


def train_steps(run):
    """From run.iter_num to max_iters; returns the final eval row (eval_only: the one eval)."""
    tc = run.cfg.train
    open_run_files(run)
    if run.iter_num >= tc.max_iters and not tc.eval_only:
        run.say(f"nothing to do: the checkpoint is at iter {run.iter_num} >= max_iters={tc.max_iters}; "
                f"pass a larger --max_iters to train on")
        close_run_files(run)
        return None
    run.t_start = time.perf_counter()
    if tc.eval_only:
        return evaluate_and_save(run, run.iter_num)
    try:
        with StopSignals() as stop:  # SIGTERM, Ctrl-C: this step finishes, a checkpoint is saved (faults.py)
            return loop(run, stop)
    finally:
        close_run_files(run)


def loop(run, stop):
    """The steps, with stop (faults.StopSignals) telling of a signal; the final eval row."""
    tc = run.cfg.train
    bar = tqdm(total=tc.max_iters, initial=run.iter_num, disable=not (tc.progress and run.master), dynamic_ncols=True)
    run.run_model.train()
    t_last, steps_since_log = time.perf_counter(), 0
    while run.iter_num < tc.max_iters:
        # evaluate on the schedule, except right after resuming: that state was evaluated
        if run.iter_num % tc.eval_interval == 0 and run.iter_num != run.evaluated_at:
            evaluate_and_save(run, run.iter_num)
            t_last, steps_since_log = time.perf_counter(), 0  # tokens/s leaves eval time out
        elif tc.ckpt_interval and run.iter_num % tc.ckpt_interval == 0 and run.iter_num != run.last_saved:
            save(run, run.iter_num)

        lr = get_lr(run.iter_num, tc)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]  # 1, but for muP's hidden matrices (step.make_optimizer)
        terms = {}
        run.windows.it = run.iter_num  # a curriculum's position (SeqLenWindows: the windows' length)
        loss = forward_backward(run.run_model, run.windows, run.ctx, run.scaler,
                                tc.gradient_accumulation_steps // run.world, run.teacher, run.cfg.kd, terms)
        # every process sees the same loss and the same signals: all stop, rewind or go on together
        flags = torch.tensor([float(stop.signum == s) for s in StopSignals.SIGNALS], device=loss.device)
        shared = all_mean(torch.cat([loss.detach().float().reshape(1), flags]), run.world).tolist()
        loss_value = shared[0]
        spike = run.guard.check(loss_value)  # on_spike=stop: a non-finite loss only
        if spike and tc.on_spike == "stop":
            raise NonFiniteLossError(f"loss is {loss_value} at iter {run.iter_num}: stopped before the optimizer step; "
                                     f"{last_good(run)} (try a lower learning_rate, grad_clip > 0, dtype=float32, "
                                     f"or on_spike=rewind)")
        if spike:
            rewind(run, spike, bar)
            continue
        optimizer_step(run.model, run.optimizer, run.scaler, tc.grad_clip)

        it, run.iter_num, steps_since_log = run.iter_num, run.iter_num + 1, steps_since_log + 1
        bar.update(1)
        if it % tc.log_interval == 0 or run.iter_num == tc.max_iters:
            now = time.perf_counter()
            tokens = tc.gradient_accumulation_steps * tc.batch_size * run.cfg.model.block_size * steps_since_log
            postfix = log_step(run, it, loss_value, lr, tokens / max(now - t_last, 1e-9), terms)
            t_last, steps_since_log = now, 0
            bar.set_postfix(**postfix, refresh=False)
        signum = stop.signum if run.world == 1 else next((s for s, got in zip(StopSignals.SIGNALS, shared[1:]) if got > 0), 0)
        if signum and run.iter_num < tc.max_iters:
            bar.close()
            preempt(run, signum)

    bar.close()
    return evaluate_and_save(run, run.iter_num)  # the final state is always evaluated and saved


def rewind(run, why, bar):
    """on_spike=rewind (PaLM, section 5.1): back to the newest checkpoint, every state as
    saved but the data stream's, which stays where it is, so the batches that led to the
    spike are skipped; logged in metrics.jsonl as a row with "rewind"."""
    tc = run.cfg.train
    if run.rewinds >= tc.max_rewinds:
        raise SpikeError(f"{why} at iter {run.iter_num}, after {run.rewinds} rewinds (max_rewinds={tc.max_rewinds}): "
                         f"stopped before the optimizer step; the last checkpoint is intact "
                         f"(try a lower learning_rate or grad_clip > 0)")
    path, ckpt, _ = find_checkpoint(tc.out_dir, "on_spike=rewind")
    spike_iter, data, elapsed, rewinds = run.iter_num, run.windows.generator.get_state(), run.elapsed_before, run.rewinds
    run.optimizer.zero_grad(set_to_none=True)  # the spike's gradients are never applied
    load_weights(run.model, ckpt)
    restore_state(run, ckpt)
    run.windows.generator.set_state(data)
    run.elapsed_before, run.rewinds = elapsed, rewinds + 1  # the wall clock and the count go on
    skipped = (spike_iter - run.iter_num + 1) * tc.gradient_accumulation_steps
    log(run, {"iter": spike_iter, "rewind": run.rewinds, "to_iter": run.iter_num, "skipped_batches": skipped,
              "why": why})
    run.say(f"\nspike at iter {spike_iter}: {why}; rewound to {os.path.basename(path)} (iter {run.iter_num}), "
            f"skipping the {skipped} batches since (rewind {run.rewinds} of at most {tc.max_rewinds})")
    bar.n = run.iter_num
    bar.refresh()


def preempt(run, signum):
    """A stop signal: save this step's state, say how to resume, and leave with 128 + signum."""
    tc = run.cfg.train
    if not save(run, run.iter_num):
        raise SaveError(f"stopped by {signal.Signals(signum).name} at iter {run.iter_num}, but the checkpoint could "
                        f"not be saved; {os.path.join(tc.out_dir, 'ckpt.pt')} holds the last good one")
    barrier(run.world)  # process 0 has saved before any process leaves
    launcher = "your torchrun command" if run.world > 1 else "python train.py"
    run.say(f"{signal.Signals(signum).name}: saved {os.path.join(tc.out_dir, 'ckpt.pt')} at iter {run.iter_num}; "
            f"resume with: {launcher} --out_dir={tc.out_dir} --init_from=resume --dtype={run.dtype}")
    raise Preempted(signum)


def log_step(run, it, loss_value, lr, tok_s, terms):
    """A training row of metrics.jsonl; returns the progress bar's postfix."""
    row = {"iter": it, "loss": loss_value, "lr": lr, "tokens_per_sec": round(tok_s, 1)}
    postfix = dict(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
    if isinstance(run.windows, SeqLenWindows):
        row["seq_len"] = postfix["len"] = run.windows.length()
    if isinstance(run.windows, MixtureWindows):
        row["mixture"] = run.windows.weights()
        postfix["mix"] = "/".join(f"{100 * w:.0f}" for w in row["mixture"].values())  # percent per dataset
    if isinstance(run.windows, DifficultyWindows):
        row["pool"] = run.windows.pool() / len(run.windows.order)  # the share of the windows drawn from
        postfix["pool"] = f"{100 * row['pool']:.0f}%"
    if run.moe:
        # the routing of this step's last micro-batch: collapse shows as a load near 0 or 1
        stats = moe_statistics(run.model.moe_stats)
        row.update(ce=stats["ce"], aux_loss=stats["aux_loss"], z_loss=stats["z_loss"],
                   dropped=stats["dropped"], load=stats["load"])
        flat = [f for layer in stats["load"] for f in layer]
        postfix["load"] = f"{100 * min(flat):.0f}-{100 * max(flat):.0f}%"
    # distillation: the step's mean KD, CE and (MoE) weighted aux terms; loss = alpha kd + (1 - alpha) ce + moe_loss
    row.update({k: v.item() for k, v in terms.items()})
    log(run, row)
    return postfix


def evaluate_and_save(run, it):
    """Val and train loss on fixed batches, a metrics row, and the checkpoint (always, or
    when val improved, and at the end). Returns the row."""
    tc, mc = run.cfg.train, run.cfg.model
    # every process evaluates the same fixed batches (no collective), so all agree on best_val_loss
    losses = estimate_loss(run.eval_model, run.splits, tc.batch_size, mc.block_size, tc.eval_iters, run.device,
                           run.ctx, tc.seed)
    # a mixture: each dataset's val loss too (the first one's is val_loss)
    first = ({f"val_loss_{next(iter(run.windows.base))}": losses["val"]}
             if isinstance(run.windows, MixtureWindows) else {})
    row = log(run, {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"], **first,
                    **{f"val_loss_{k[4:]}": v for k, v in losses.items() if k.startswith("val_")}})
    improved = losses["val"] < run.best_val_loss
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    if run.master:
        tqdm.write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    if not tc.eval_only and (improved or tc.always_save_checkpoint or it == tc.max_iters):
        save(run, it, evaluated=True)
    return row


def save(run, it, evaluated=False):
    """The run's state at step `it` as out_dir/ckpt.pt, rotating the older ones (checkpoint.
    save_rotating). Under DDP every process calls it and process 0 writes. A save that fails
    (a full disk, a read-only folder) leaves the previous checkpoint whole and stops the run,
    or with on_save_error=continue warns and returns False (the next save tries again)."""
    tc = run.cfg.train
    rng = rng_state(run.windows, run.world)  # under DDP a collective: before the master-only part
    error = None
    if run.master:
        ckpt = {
            # a PEFT run saves its PEFT tensors and where its base is (checkpoint.restore_model)
            "model": peft_state_dict(run.model) if run.peft_base else run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "model_config": asdict(run.model.config),
            "config": run.config,
            "meta": run.meta,  # the tokenizer, so sample.py needs only the checkpoint
            "iter_num": it,
            "best_val_loss": run.best_val_loss,
            "elapsed": round(run.elapsed_before + time.perf_counter() - run.t_start, 3),
            "rng": rng,
            "evaluated": evaluated,  # this state has its eval row: a resumed run does not evaluate it again
            "spike_recent": list(run.guard.recent), "rewinds": run.rewinds,  # faults.SpikeGuard, exactly resumed
        }
        if run.peft_base:
            ckpt["peft_base"] = run.peft_base
        try:
            # a fresh run's first save replaces what an older run left in the folder
            save_rotating(ckpt, tc.out_dir, tc.keep_last, fresh=run.last_saved is None and tc.init_from != "resume")
        except OSError as e:
            error = (f"could not save the checkpoint of iter {it} to {os.path.join(tc.out_dir, 'ckpt.pt')}: "
                     f"{e.strerror or e}" + (f" ({e.filename})" if getattr(e, "filename", None) else "")
                     + f"; {last_good(run)}")
    if run.world > 1 and all_mean(torch.tensor([float(error is None)]), run.world).item() < 1:
        error = error or "process 0 could not save the checkpoint (see its message)"
    if error is None:
        run.last_saved = it
        return True
    if tc.on_save_error == "continue" and it < tc.max_iters:
        run.say(f"warning: {error}; training on (on_save_error=continue), the next save tries again")
        return False
    raise SaveError(error + ("" if tc.on_save_error == "continue" else
                             "; the run stops (on_save_error=continue would train on)"))


def last_good(run):
    if run.last_saved is None:
        return "no checkpoint of this run was saved yet"
    return f"{os.path.join(run.cfg.train.out_dir, 'ckpt.pt')} (iter {run.last_saved}) is intact"


# ----------------------------------------------------------------------------------------
# the run's files: config.json, metrics.jsonl (ckpt.pt: save; all under rundir.RunLock)


def open_run_files(run):
    """Write config.json and open metrics.jsonl (process 0; an eval_only run is an extra
    measurement and leaves the run's files as they are)."""
    tc = run.cfg.train
    if tc.eval_only or not run.master:
        return
    os.makedirs(tc.out_dir, exist_ok=True)
    write_json_atomic(run.config, os.path.join(tc.out_dir, "config.json"))
    run.metrics = open_metrics(tc.out_dir, run.start_iter if tc.init_from == "resume" else None)


def close_run_files(run):
    if run.metrics is not None:
        run.metrics.close()
        run.metrics = None


def log(run, row):
    """Stamp row with the run's wall time (resumes included) and append it to metrics.jsonl."""
    row["time"] = round(run.elapsed_before + time.perf_counter() - run.t_start, 3)
    if run.metrics is not None:
        run.metrics.write(json.dumps(row) + "\n")
        run.metrics.flush()
    return row


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        train(load_config(argv))
    except Preempted as e:  # a stop signal, after its checkpoint
        sys.exit(128 + e.signum)
    except (KeyboardInterrupt, Interrupted) as e:  # before the loop, or a second signal: no new checkpoint
        print("\ninterrupted: the last checkpoint written is intact", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


if __name__ == "__main__":
    main()
