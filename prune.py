"""
Structured pruning as Minitron does it (Muralidharan et al. 2024, "Compact Language Models
via Pruning and Knowledge Distillation"): score every MLP neuron, attention head, embedding
channel and block of a trained GPT by how much it is used, keep the most important fraction
of each chosen dimension, and write the result as a smaller dense GPT (smaller matrices, a
new GPTConfig: no masks), which then recovers by distillation from the model it came from.

    python prune.py --out_dir=out-shakespeare-char --keep=0.5 --to=out-pruned     # half the neurons and heads
    python prune.py --out_dir=RUN --keep=0.75 --what=mlp,heads,embd,depth --importance=magnitude --to=DIR
    python sample.py --out_dir=DIR                                                  # it loads as any run folder
    python train.py --init_from=DIR --eval_only=True --out_dir=DIR-eval             # its loss before recovery
    python train.py configs/shakespeare_char_cpu.py --init_from=DIR --teacher=RUN --kd_alpha=1.0 \\
        --out_dir=DIR-kd                                                            # recovery by distillation

The dimensions (--what, default mlp,heads), each cut to the same count in every block, so
that one GPTConfig describes the result (model.py's mlp_hidden and head_dim keep the widths):
  mlp    neuron i of block l: row i of c_fc (and its bias), column i of the MLP's c_proj
  heads  head h: its hs rows of q, k, v in c_attn and its hs columns of c_proj (head_dim stays).
         With grouped-query attention the unit is a group, one key/value head and the
         n_head / n_kv_head query heads that read it, so that the groups stay whole
  embd   channel c of the residual stream: column c of wte (the tied head) and wpe, entry c
         of every LayerNorm, column c of c_attn and c_fc, row c of both c_proj
  depth  whole blocks
A dropped neuron or head is exactly a zeroed one (tests/test_prune.py), a dropped block one
that is skipped; a dropped channel is not a zeroed one, since every LayerNorm then
normalises over fewer channels.

Importance (--importance), computed once on the unpruned model:
  activation  Minitron's "Importance Analysis" (forward passes only): over --calib_batches
              batches of the run's batch_size x block_size from its training split (seeded),
     mlp    the mean |GELU(x W_fc^T + b)_i| over tokens: what c_proj reads (the paper
            sums the activation X W_1^i over batch and sequence)
     heads  the mean over tokens of the L2 norm of the head's attention output, before
            c_proj (the paper: the sum over batch and sequence of ||Attn(X W^Q_i, X W^K_i,
            X W^V_i)||_2); a group's score is the sum over its query heads
     embd   the mean |LN(X)_c| over tokens, summed over every LayerNorm (the paper: LN(X)_c)
     depth  Block Importance (Men et al. 2024, "ShortGPT"), one of Minitron's two depth
            metrics (the other: the loss with the block dropped, one pass per block):
            1 - the mean cosine similarity of a block's input and output hidden states.
            A block that barely turns the stream matters least
  magnitude   the baseline without data: the L2 norm of every weight and bias that feeds or
              leaves the unit (a block: of its two residual projections, what it writes)

The pruned folder holds ckpt.pt as export.py writes one (no optimizer state: fine-tune it,
do not resume it), with "pruned_from": the run, keep, what, importance. Refused with one
line: a PEFT run (export it first), MoE, shared blocks, a factorized embedding, muP with
embd, heads of a multi-query model. The pieces for tests and experiments: importance,
keep_indices, prune_model, prune_checkpoint.
"""

import argparse
import math
import os
from dataclasses import asdict

import torch
from torch.nn import functional as F

from batches import calibration_batches
from checkpoint import read_checkpoint, restore_model, save_checkpoint
from errors import UserError, cli
from model import GPT, GPTConfig

DIMENSIONS = ("mlp", "heads", "embd", "depth")
KINDS = ("activation", "magnitude")
SHAPE_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden", "head_dim")  # what pruning changes


def check_prunable(config, what):
    """A UserError, in one line, for a model this file cannot cut along `what`."""
    refuse = {
        "moe_num_experts": "a mixture of experts (its experts would need pruning of their own)",
        "share_layers": "shared blocks (one stored block runs at several layers, each with its own importance)",
        "emb_dim": "a factorized embedding (its channels are not the residual stream's)",
    }
    for key, why in refuse.items():
        if getattr(config, key) not in (0, "none"):
            raise UserError(f"prune.py cannot prune {why}: {key}={getattr(config, key)!r}")
    if config.mup and "embd" in what:
        raise UserError("prune.py cannot prune embedding channels of a muP model (its multipliers scale with "
                        "n_embd); drop embd from --what")
    if "heads" in what and config.kv_heads() == 1 and config.n_head > 1:
        raise UserError("n_kv_head=1 (multi-query): heads are pruned in whole groups of a key/value head and "
                        "its query heads, and there is one group; drop heads from --what")


# ----------------------------------------------------------------------------------------
# importance: a score per unit, higher = keep; {"mlp": (L, H), "heads": (L, G), "embd": (C,), "depth": (L,)}


def _add(total, value):
    """total += value, returning None: a hook that returns a value replaces the module's input or output."""
    total.add_(value)


@torch.no_grad()
def activation_importance(model, batches):
    """Minitron's activation-based scores (and Block Importance for depth), from forward
    hooks over batches, a list of (B, T) token ids."""
    c, blocks = model.config, model.transformer.h
    L, nh, hs = c.n_layer, c.n_head, c.head_size()
    # running sums over tokens, one slot per unit
    mlp, heads = torch.zeros(L, blocks[0].mlp.c_fc.out_features), torch.zeros(L, nh)
    embd, depth = torch.zeros(c.n_embd), torch.zeros(L)
    hooks = []
    for l, block in enumerate(blocks):
        # the MLP's c_proj reads GELU's output (B, T, H): |a_i| summed over B and T
        hooks.append(block.mlp.c_proj.register_forward_pre_hook(
            lambda m, args, l=l: _add(mlp[l], args[0].abs().sum((0, 1)))))
        # attention's c_proj reads the heads side by side (B, T, nh * hs): each head's L2 norm per token
        hooks.append(block.attn.c_proj.register_forward_pre_hook(
            lambda m, args, l=l: _add(heads[l], args[0].unflatten(-1, (nh, hs)).norm(dim=-1).sum((0, 1)))))
        # Block Importance: 1 - cos(x_in, x_out) per token (a block returns (x, the MoE's aux))
        hooks.append(block.register_forward_hook(
            lambda m, args, out, l=l: _add(depth[l], (1 - F.cosine_similarity(args[0], out[0], dim=-1)).sum())))
    for ln in [m for block in blocks for m in (block.ln_1, block.ln_2)] + [model.transformer.ln_f]:
        hooks.append(ln.register_forward_hook(lambda m, args, out: _add(embd, out.abs().sum((0, 1)))))  # |LN(X)_c|
    was_training, tokens = model.training, 0
    model.eval()
    try:
        for x in batches:
            model(x)
            tokens += x.numel()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    groups = heads.view(L, c.kv_heads(), -1).sum(-1)  # (L, G): a group sums its query heads
    return {"mlp": mlp / tokens, "heads": groups / tokens, "embd": embd / tokens, "depth": depth / tokens}


@torch.no_grad()
def magnitude_importance(model):
    """The data-free baseline: the L2 norm of every weight (and bias) feeding or leaving a unit."""
    c, blocks = model.config, model.transformer.h
    G, hs = c.kv_heads(), c.head_size()
    q_dim = c.n_head * hs

    def sq(m):  # (weight^2, bias^2 or zeros) of a Linear or LayerNorm
        w = m.weight.float() ** 2
        return w, (m.bias.float() ** 2 if m.bias is not None else torch.zeros(w.shape[0]))

    mlp, heads, depth = [], [], []
    tables = [model.transformer.wte] + ([model.transformer.wpe] if "wpe" in model.transformer else [])
    embd = sum(t.weight.float().pow(2).sum(0) for t in tables)  # column c of the token (= head) and position tables
    for block in blocks:
        (fc, fc_b), (proj, proj_b) = sq(block.mlp.c_fc), sq(block.mlp.c_proj)
        mlp.append(fc.sum(1) + fc_b + proj.sum(0))  # row i of c_fc, its bias, column i of c_proj: (H,)
        (qkv, qkv_b), (out, out_b) = sq(block.attn.c_attn), sq(block.attn.c_proj)
        rows = qkv.sum(1) + qkv_b  # (q_dim + 2 kv_dim,)
        q = (rows[:q_dim] + out.sum(0)).view(G, -1).sum(1)  # each group's query rows and c_proj columns: (G,)
        kv = rows[q_dim:].view(2, G, hs).sum((0, 2))  # its key and value rows: (G,)
        heads.append(q + kv)
        # channel c: column c of c_attn and c_fc (they read it), row c of both c_proj (they write it)
        embd = embd + qkv.sum(0) + fc.sum(0) + out.sum(1) + out_b + proj.sum(1) + proj_b
        depth.append(out.sum() + proj.sum())  # what the block writes into the stream
    return {"mlp": torch.stack(mlp).sqrt(), "heads": torch.stack(heads).sqrt(), "embd": embd.sqrt(),
            "depth": torch.stack(depth).sqrt()}


def importance(model, batches, kind):
    """{dimension: scores} of model ("activation" needs batches; "magnitude" reads the weights)."""
    if kind == "activation":
        return activation_importance(model, batches)
    if kind == "magnitude":
        return magnitude_importance(model)
    raise ValueError(f"importance kind '{kind}': use one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------
# which units stay


def keep_count(n, keep):
    """Units kept of n at the fraction keep: rounded half up, at least one."""
    return max(1, math.floor(keep * n + 0.5))


def keep_indices(scores, keep, what):
    """{dimension: the indices kept} for each dimension of `what`: the keep_count most
    important along the last axis (per block for mlp and heads), in their original order."""
    kept = {}
    for dim in what:
        s = scores[dim]
        k = keep_count(s.shape[-1], keep)
        top = s.argsort(dim=-1, descending=True, stable=True)[..., :k]  # ties: the earlier unit
        kept[dim] = top.sort(dim=-1).values  # back in the model's order: the kept blocks run as they did
    return kept


# ----------------------------------------------------------------------------------------
# the surgery: a smaller GPT whose every tensor is cut from the original's


def _head_rows(groups, c):
    """(rows of c_attn, columns of c_proj) of the kept groups (G',): their query heads' q rows,
    then their k rows and v rows, each head hs wide."""
    hs, per_group = c.head_size(), c.n_head // c.kv_heads()
    q_dim, kv_dim = c.n_head * hs, c.kv_heads() * hs
    heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()  # query heads, in order
    q = (heads[:, None] * hs + torch.arange(hs)).flatten()  # (n_head' * hs,)
    kv = (groups[:, None] * hs + torch.arange(hs)).flatten()  # (n_kv' * hs,)
    return torch.cat([q, q_dim + kv, q_dim + kv_dim + kv]), q


def prune_model(model, kept):
    """A new, smaller GPT holding the units in kept ({dimension: indices}, as keep_indices
    gives; a dimension left out keeps everything): mlp (L, H') and heads (L, G') are indexed
    by the original blocks, embd (C',) and depth (L',) are global. No masks: smaller matrices."""
    c = model.config
    check_prunable(c, list(kept))
    L, C, G = c.n_layer, c.n_embd, c.kv_heads()
    H = model.transformer.h[0].mlp.c_fc.out_features
    k = {"mlp": torch.arange(H).expand(L, H), "heads": torch.arange(G).expand(L, G), "embd": torch.arange(C),
         "depth": torch.arange(L), **{dim: torch.as_tensor(ix) for dim, ix in kept.items()}}
    for dim, n in (("mlp", H), ("heads", G), ("embd", C), ("depth", L)):
        ix = k[dim]
        if (ix.numel() == 0 or not (ix.min() >= 0 and ix.max() < n and (ix.diff(dim=-1) > 0).all())
                or ix.dim() != (2 if dim in ("mlp", "heads") else 1) or (ix.dim() == 2 and len(ix) != L)):
            raise ValueError(f"kept {dim}: increasing indices in [0, {n}), for mlp and heads one row per block")
    e = k["embd"]
    per_group = c.n_head // G
    shape = {"n_layer": len(k["depth"]), "n_embd": len(e), "mlp_hidden": k["mlp"].shape[-1],
             "n_head": k["heads"].shape[-1] * per_group, "head_dim": c.head_size(),
             "n_kv_head": k["heads"].shape[-1] if c.n_kv_head else 0}
    with torch.random.fork_rng(devices=[]):  # its init weights, overwritten below, leave the caller's RNG alone
        small = GPT(GPTConfig(**{**asdict(c), **shape}))
    old, new = model.state_dict(), {}
    for name in small.state_dict():
        if not name.startswith("transformer.h."):  # wte and the tied lm_head (V, C), wpe (T, C), ln_f (C,)
            new[name] = old[name].index_select(-1, e)
            continue
        j, rest = name[len("transformer.h."):].split(".", 1)
        l = int(k["depth"][int(j)])  # the original block that new block j is
        qkv, q = _head_rows(k["heads"][l], c)
        module = rest.rsplit(".", 1)[0]
        # (rows, columns) of each tensor: out_features first, as nn.Linear stores them; a bias or a gain takes rows
        rows, cols = {"ln_1": (e, None), "ln_2": (e, None), "attn.c_attn": (qkv, e), "attn.c_proj": (e, q),
                      "mlp.c_fc": (k["mlp"][l], e), "mlp.c_proj": (e, k["mlp"][l])}[module]
        t = old[f"transformer.h.{l}.{rest}"].index_select(0, rows)
        new[name] = t.index_select(1, cols) if t.dim() == 2 else t
    small.load_state_dict(new)  # strict: every tensor of the smaller GPT, nothing else
    return small.train(model.training)


# ----------------------------------------------------------------------------------------
# a run folder in, a pruned folder out


def prune_checkpoint(run_dir, to_dir, keep, what=("mlp", "heads"), kind="activation", calib_batches=32,
                     dataset=None, seed=1337):
    """Write to_dir/ckpt.pt: run_dir's model with the keep fraction of each dimension in what,
    by importance kind. Returns {"path", "bytes", "params_before", "params_after", "shape" (the
    new GPTConfig's keys), "widths" (the sizes before and after, as numbers)}."""
    ckpt = read_checkpoint(os.path.join(run_dir, "ckpt.pt"), why="prune.py")
    if "peft_base" in ckpt:
        raise UserError(f"{run_dir} is a PEFT run: its ckpt.pt holds only PEFT tensors. Export it first "
                        f"(python export.py --out_dir={run_dir} --to=DIR) and prune DIR")
    if "quant" in ckpt:
        raise UserError(f"{run_dir} is quantized: prune its source run ({ckpt['quantized_from']['run']}), "
                        f"then quantize the pruned model")
    check_prunable(GPTConfig(**ckpt["model_config"]), what)
    model = restore_model(ckpt, "prune.py", dropout=0.0).eval()
    batches = None
    if kind == "activation":
        cfg = ckpt["config"]
        batches = calibration_batches(dataset or cfg["dataset"], ckpt["meta"], cfg["batch_size"],
                                      model.config.block_size, calib_batches, seed)
    small = prune_model(model, keep_indices(importance(model, batches, kind), keep, what))
    shape = {key: getattr(small.config, key) for key in SHAPE_KEYS}  # the keys of the new GPTConfig
    out = {
        "model": small.state_dict(),
        "model_config": {**ckpt["model_config"], **shape},  # the run's dropout etc., the new widths
        "config": {**ckpt["config"], **shape, "init_from": "pruned"},  # a fine-tune inherits the shape keys
        "meta": ckpt["meta"],
        "iter_num": ckpt["iter_num"],
        "pruned_from": {"run": os.path.abspath(run_dir), "keep": keep, "what": list(what), "importance": kind},
    }
    os.makedirs(to_dir, exist_ok=True)
    path = os.path.join(to_dir, "ckpt.pt")
    _, size = save_checkpoint(out, path)
    return {"path": path, "bytes": size, "params_before": model.get_num_params(non_embedding=False),
            "params_after": small.get_num_params(non_embedding=False), "shape": shape,
            "widths": (widths(model), widths(small))}


def widths(model):
    """The sizes pruning changes: the MLP's and a head's width as numbers, n_kv_head as the
    config holds it (0: n_head)."""
    c = model.config
    return {"n_layer": c.n_layer, "n_head": c.n_head, "n_kv_head": c.n_kv_head, "n_embd": c.n_embd,
            "mlp_hidden": model.transformer.h[0].mlp.c_fc.out_features, "head_dim": c.head_size()}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.strip().split("\n\n")[0].split()))  # 1st paragraph
    p.add_argument("--out_dir", required=True, help="the run folder to prune (its ckpt.pt)")
    p.add_argument("--to", required=True, help="folder for the pruned checkpoint (ckpt.pt)")
    p.add_argument("--keep", type=float, required=True, help="fraction of each pruned dimension kept, in (0, 1]")
    p.add_argument("--what", default="mlp,heads", help="comma-separated: mlp, heads, embd, depth")
    p.add_argument("--importance", default="activation", help="activation (Minitron) or magnitude (weights)")
    p.add_argument("--calib_batches", type=int, default=32, help="activation: batches of the training split")
    p.add_argument("--dataset", default=None, help="activation: the calibration data (default: the run's)")
    p.add_argument("--seed", type=int, default=1337, help="activation: which calibration windows")
    args = p.parse_args(argv)
    # the flags' domains, before any checkpoint is read ("not inside": a nan fails too)
    if not 0 < args.keep <= 1:
        raise UserError(f"--keep={args.keep} must be in (0, 1]: the fraction of each dimension kept")
    what = [w for w in args.what.split(",") if w]
    unknown = [w for w in what if w not in DIMENSIONS]
    if unknown or not what:
        raise UserError(f"--what={args.what}: give some of {', '.join(DIMENSIONS)}, comma-separated")
    if args.importance not in KINDS:
        raise UserError(f"--importance={args.importance}: use one of {', '.join(KINDS)}")
    if args.calib_batches < 1:
        raise UserError(f"--calib_batches={args.calib_batches} must be >= 1")
    if os.path.abspath(args.to) == os.path.abspath(args.out_dir):
        raise UserError("--to must be another folder than --out_dir: the run's checkpoint stays as it is")
    r = prune_checkpoint(args.out_dir, args.to, args.keep, what, args.importance, args.calib_batches,
                         args.dataset, args.seed)
    print(f"pruned {args.out_dir} by {args.importance} importance, keep={args.keep} of {', '.join(what)}:")
    was, now = r["widths"]
    print("  " + (", ".join(f"{key} {was[key]} -> {now[key]}" for key in was if was[key] != now[key])
                  or "nothing: every count rounds back to all"))
    print(f"parameters: {r['params_before']:,} -> {r['params_after']:,} "
          f"({r['params_after'] / r['params_before']:.1%})")
    print(f"wrote {r['path']} ({r['bytes']:,} bytes): a plain GPT checkpoint; recover it by distillation "
          f"with python train.py --init_from={args.to} --teacher={args.out_dir} --kd_alpha=1.0 --out_dir=...")


if __name__ == "__main__":
    main()
