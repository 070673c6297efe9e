"""
One optimizer step and the pieces every training loop shares: train.py's loop, bench.py's
timed step, and the loops still to come are built from these and nothing else.

    from step import estimate_loss, forward_backward, get_lr, make_optimizer, optimizer_step
    optimizer = make_optimizer(model, tc)              # AdamW: matrices decay, biases and gains do not
    for group in optimizer.param_groups:
        group["lr"] = get_lr(it, tc) * group["lr_scale"]  # warmup, then cosine / linear / wsd / constant
    loss = forward_backward(model, windows, ctx, scaler, accumulation_steps)
    optimizer_step(model, optimizer, scaler, tc.grad_clip)

What one optimizer step does (DESIGN.md, "How data flows"):

    for each of accumulation_steps micro-batches:
        x, y = windows.next()                                  (batches.py: seeded, exact resume)
        with autocast: logits, loss = model(x, y)              (fp32 loss; an MoE's: CE + aux)
                       with a teacher (distill.py), instead:
                       loss = kd_alpha * KD + (1 - kd_alpha) * CE + aux
        backward(scale(loss / accumulation_steps))             (the mean over the whole batch)
    [the caller stops here if the loss is not finite: the checkpoint stays intact]
    unscale -> clip the gradient norm -> AdamW step -> zero the gradients
"""

import math
import time
from contextlib import nullcontext

import torch

from batches import RandomWindows

# ----------------------------------------------------------------------------------------
# optimizer and learning-rate schedule


def make_optimizer(model, tc):
    """AdamW over the parameters that require grad (frozen ones, as PEFT leaves them, are
    not handed to the optimizer at all). Matrices (weights, embeddings) decay; biases and
    LayerNorm gains, the 1-D tensors, do not (as GPT-2 and nanoGPT). Each group carries
    "lr_scale", the factor the loop multiplies the schedule's rate by: 1, but under muP
    base / width for the hidden matrices (model.GPT.lr_scale, mup.py)."""
    groups = {}  # (decays, lr_scale) -> parameters; named_parameters() visits the tied one once
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, model.lr_scale(name, p)), []).append(p)
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(map(len, groups.values())) == len(params) == len({id(p) for g in groups.values() for p in g})
    # decaying groups first, as before muP: (decay, no decay) in the standard model
    groups = [{"params": ps, "weight_decay": tc.weight_decay if decays else 0.0, "lr_scale": scale}
              for (decays, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]
    # fused AdamW: one kernel for all tensors; at the Shakespeare CPU model it takes 0.8 ms
    # per step here, vs 2.8 ms for the default (foreach) implementation nanoGPT uses on CPU
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=True)


def get_lr(it, cfg):
    """Learning rate at optimizer step `it` (0-based). Every schedule starts with a linear
    warmup over warmup_iters (as nanoGPT: lr * (it+1) / (warmup_iters+1)), then:
      cosine:   half a cosine from learning_rate down to min_lr at lr_decay_iters
      linear:   a straight line down to min_lr at lr_decay_iters
      wsd:      warmup-stable-decay: flat at learning_rate, then a straight line down to
                min_lr over the last decay_frac of the schedule (Hu et al. 2024, MiniCPM;
                the schedule SmolLM2 trains with)
      constant: flat at learning_rate
      exponential: no warmup; min_lr * (learning_rate / min_lr) ** (it / (max_iters - 1)), from
                min_lr at the first step to learning_rate at the last: the LR range test
                (Smith 2017, "Cyclical Learning Rates", section 3.3; sweep.py --lr_range)
    After lr_decay_iters (0 means max_iters) the rate stays at min_lr."""
    if cfg.lr_schedule == "exponential":
        return cfg.min_lr * (cfg.learning_rate / cfg.min_lr) ** (min(it, cfg.max_iters - 1) / max(cfg.max_iters - 1, 1))
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
# the step


def forward_backward(run_model, windows, ctx, scaler, accumulation_steps, teacher=None, kd=None, terms=None):
    """Gradients of one optimizer step, accumulated over micro-batches; returns the mean
    loss (a tensor: reading it is the caller's choice, since on CUDA that syncs). With a
    teacher (distill.OnlineTeacher or CachedTeacher) and kd (distill.KDConfig) the loss is
    kd.kd_alpha * KD + (1 - kd.kd_alpha) * CE + aux, where aux (MoE students only) is the
    routers' weighted balancing and z losses: they keep their own weights, since they
    regularise the routing whatever the targets are. terms (a dict) receives the means of
    KD, CE and (MoE) aux as "kd", "ce" and "moe_loss"."""
    loss_sum = 0.0
    for micro in range(accumulation_steps):
        # DDP averages the gradients over the processes during backward; only the last
        # micro-batch needs that, the others just accumulate here (no_sync)
        last = micro == accumulation_steps - 1
        with (run_model.no_sync() if hasattr(run_model, "no_sync") and not last else nullcontext()):
            x, y = windows.next()
            on_policy = False
            if teacher is not None and kd.kd_on_policy > 0:  # GKD: some micro-batches are the student's own text
                k = getattr(windows, "it", 0) * accumulation_steps + micro  # this micro-batch's number in the run
                x, y, on_policy = teacher.on_policy_batch(run_model, x, y, k, kd, terms)
            with ctx:
                if teacher is None:
                    logits, loss = run_model(x, y)
                else:
                    logits, parts = run_model(x, y, loss_parts=True)
                    t0 = time.perf_counter()  # the teacher's share of the step, apart from rollouts and the update
                    kd_term = teacher.loss(logits, x, y, getattr(windows, "last_starts", None), kd)
                    if terms is not None:
                        terms["teacher_s"] = terms.get("teacher_s", 0.0) + torch.tensor(time.perf_counter() - t0)
                    # Hinton's mix weights two views of the target; the MoE losses are not about the target.
                    # On the student's own text the divergence alone (its tokens are no target to copy)
                    loss = kd_term if on_policy else kd.kd_alpha * kd_term + (1.0 - kd.kd_alpha) * parts["ce"]
                    if "aux" in parts:
                        loss = loss + parts["aux"]
                    if terms is not None:
                        for name, value in (("kd", kd_term), ("ce", parts["ce"]), ("moe_loss", parts.get("aux"))):
                            if value is not None:
                                terms[name] = terms.get(name, 0.0) + value.detach() / accumulation_steps
            loss_sum += loss.detach()
            # each micro-batch's loss is a mean over its tokens; dividing by the number of
            # micro-batches makes the summed gradient the mean over all of them, i.e. the
            # gradient of one batch accumulation_steps times larger (and DDP's average over
            # N processes makes it N times larger again)
            scaler.scale(loss / accumulation_steps).backward()
    return loss_sum / accumulation_steps


def optimizer_step(model, optimizer, scaler, grad_clip):
    """Unscale (fp16), clip the global gradient norm (grad_clip > 0), step, zero the gradients."""
    if grad_clip > 0.0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------
# evaluation


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
