"""
Federated learning on tiny shakespeare's speakers: every speaking role is a client with its
own data (McMahan et al. 2017; LEAF, Caldas et al. 2018), naturally unbalanced and non-IID.
Each round the server sends the global weights to a sample of clients, each trains a few
local steps on its own lines, and the server averages what comes back.

    python federated.py prepare --input ../shared/data/tinyshakespeare/input.txt        # data/shakespeare_clients/
    python federated.py configs/federated_shakespeare.py --out_dir=out-fed/fedavg        # FedAvg (E = 10 local steps)
    python federated.py configs/federated_shakespeare.py --fed_client_frac=1 --fed_local_steps=1 --out_dir=out-fed/fedsgd
    python federated.py configs/federated_shakespeare.py --fed_mu=0.01 --out_dir=out-fed/fedprox   # FedProx
    python federated.py configs/federated_shakespeare.py --init_from=out-fed/base --peft=lora --out_dir=out-fed/lora
    python federated.py configs/federated_shakespeare.py --fed_update_bits=8 --out_dir=out-fed/int8   # int8 updates
    torchrun --standalone --nproc_per_node=2 federated.py configs/federated_shakespeare.py --out_dir=out-fed/dist
    python federated.py ... --init_from=resume       # continue a stopped run from its last round
    python federated.py personalize --out_dir=out-fed/fedavg --steps=50   # each client's own LoRA on top

Keys: the model and training keys of train.py (config.py: n_layer, learning_rate,
batch_size, peft, ...) plus the fed_ keys of FedConfig below, on the command line.

The algorithms, as this file computes them (w: the weights that travel; n_k: client k's
training tokens; S_t: round t's clients):
  FedAvg (McMahan et al. 2017, Algorithm 1): each k in S_t starts from w_t, takes E local
      steps of SGD (lr = learning_rate, batch_size windows of its own text) to w_k, and sends
      d_k = w_k - w_t; then w_{t+1} = w_t + server_lr * sum_k (n_k / sum_j n_j) d_k.
  FedSGD: E = 1 and every client each round (fed_client_frac=1): one averaged gradient step.
  FedProx (Li et al. 2020, eq. 2): the local objective gets + mu/2 ||w - w_t||^2, so each
      local gradient gets + mu (w - w_t), which holds a client near the global weights.
  LoRA-only (FedIT, Zhang et al. 2024): with peft=lora the frozen base never travels; the
      clients train and send only the LoRA tensors A and B, and the server averages A and B
      separately, as FedIT does. That is not the average of the products:
      mean_k(B_k A_k) != mean(B) mean(A). Each round logs the gap,
      ||mean(B_k A_k) - mean(B) mean(A)|| / ||mean(B_k A_k)||, over every LoRA layer.
  int8 updates (fed_update_bits=8): each d_k travels as int8 codes with one fp32 scale per
      row (the compression issue's round-to-nearest quantizer, quant.quantize_rtn), about a
      quarter of the bytes; the server averages the dequantized updates.

Reproducible by construction: the clients of round t are drawn by a generator seeded with
(seed, t), and client k's batches and dropout in round t by (seed, t, k). A checkpoint then
needs only the global weights and the round to resume exactly, and a run whose clients
train in other processes (torchrun; the server is process 0, which sums the updates in the
simulation's order) gives the simulation's weights to the bit.
"""

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

from batches import RandomWindows, load_dataset
from checkpoint import init_model, read_checkpoint, save_checkpoint
from config import check_value, load_config
from errors import UserError, cli
from peft import LoRALinear
from quant import dequantize, quantize_rtn
from step import forward_backward, optimizer_step
from system import autocast_context, resolve_system, setup_distributed

CLIENTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "shakespeare_clients")


@dataclass
class FedConfig:
    """federated.py's keys (train.py does not read them)."""

    fed_clients: str = "shakespeare_clients"  # a folder of client datasets (federated.py prepare) with clients.json
    fed_rounds: int = 50  # communication rounds
    fed_client_frac: float = 0.1  # C: the share of the clients sampled each round (at least one)
    fed_local_steps: int = 10  # E: local optimizer steps per client per round (FedSGD: 1)
    fed_local_opt: str = "sgd"  # 'sgd' (McMahan et al.) or 'adamw' (fresh each round); lr = learning_rate
    fed_server_lr: float = 1.0  # the step the server takes along the averaged update (1: FedAvg)
    fed_mu: float = 0.0  # FedProx's proximal weight (0: FedAvg)
    fed_eval_interval: int = 5  # evaluate the global model every this many rounds (and at the end)
    fed_update_bits: int = 0  # 8: each client's update travels as int8 codes, one fp32 scale per row; 0: fp32

    def __post_init__(self):
        if self.fed_rounds < 1:
            raise ValueError(f"fed_rounds={self.fed_rounds} must be >= 1")
        if not 0.0 < self.fed_client_frac <= 1.0:
            raise ValueError(f"fed_client_frac={self.fed_client_frac} must be in (0, 1] (a share of the clients)")
        if self.fed_local_steps < 1:
            raise ValueError(f"fed_local_steps={self.fed_local_steps} must be >= 1")
        if self.fed_local_opt not in ("sgd", "adamw"):
            raise ValueError(f"fed_local_opt='{self.fed_local_opt}': use 'sgd' or 'adamw'")
        if not 0.0 < self.fed_server_lr <= 100.0:
            raise ValueError(f"fed_server_lr={self.fed_server_lr} must be in (0, 100]")
        if not 0.0 <= self.fed_mu <= 1e4:
            raise ValueError(f"fed_mu={self.fed_mu} must be in [0, 1e4] (0: no proximal term)")
        if self.fed_eval_interval < 1:
            raise ValueError(f"fed_eval_interval={self.fed_eval_interval} must be >= 1")
        if self.fed_update_bits not in (0, 8):
            raise ValueError(f"fed_update_bits={self.fed_update_bits}: use 0 (fp32 updates) or 8 (int8)")


FED_TYPES = {f.name: f.type for f in fields(FedConfig)}


def split_argv(argv):
    """({fed key: value}, train.py's argv): the --fed_* settings are this file's, the rest config.py's."""
    mine, rest = {}, []
    for arg in argv:
        if arg.startswith("--fed_"):
            if "=" not in arg:
                raise UserError(f"'{arg}': write options as --key=value")
            key, value = arg[2:].split("=", 1)
            mine[key] = check_value(key, value, from_cli=True, types=FED_TYPES)
        else:
            rest.append(arg)
    return mine, rest


def fed_config(values):
    try:
        return FedConfig(**values)
    except ValueError as e:
        raise UserError(str(e)) from None


# ----------------------------------------------------------------------------------------
# clients from speakers


def speeches_by_speaker(text):
    """{speaker: their speeches joined by blank lines}, in the play's order ("NAME:\\nlines"
    blocks, as tiny shakespeare writes them)."""
    out = {}
    for s in (s for s in text.split("\n\n") if s.strip()):
        out.setdefault(s.split("\n", 1)[0].rstrip(":"), []).append(s)
    return {who: "\n\n".join(v) + "\n" for who, v in out.items()}


def folder_name(speaker):
    return "".join(c if c.isalnum() else "_" for c in speaker.lower())


def prepare_clients(text, out_root, min_chars=2000, val_fraction=0.1):
    """One dataset folder per speaker with at least min_chars characters (one character
    vocabulary for all, from the whole text; each client's last val_fraction held out, as
    LEAF splits each client), a `pooled` folder (every client's train and val, for the
    centralized baseline), a `public` one (the speakers too small to be clients) and
    clients.json with the sizes. Returns clients.json's dict."""
    from tokenizer import CharTokenizer, prepare_dataset

    tok = CharTokenizer.from_text(text)
    parts = {who: t for who, t in speeches_by_speaker(text).items() if len(t) >= min_chars}
    if not parts:
        raise ValueError(f"no speaker has {min_chars} characters: lower --min_chars")
    clients, train_text, val_text = [], [], []
    for who, t in parts.items():
        name = folder_name(who)
        m = prepare_dataset(t, os.path.join(out_root, name), tokenizer=tok, val_fraction=val_fraction,
                            source=f"tiny shakespeare, {who}'s speeches", verbose=False)
        clients.append({"name": name, "speaker": who, "train_tokens": m["train_tokens"], "val_tokens": m["val_tokens"]})
        cut = len(t) - m["val_tokens"]
        train_text.append(t[:cut])
        val_text.append(t[cut:])
    small = [t for who, t in speeches_by_speaker(text).items() if who not in parts]
    if small:  # the speakers too small to be clients: "public" data, e.g. to pretrain a shared base for LoRA-only rounds
        prepare_dataset("".join(small), os.path.join(out_root, "public"), tokenizer=tok,
                        source=f"tiny shakespeare, the speakers under {min_chars} characters", verbose=False)
    pooled = prepare_dataset("".join(train_text) + "".join(val_text), os.path.join(out_root, "pooled"), tokenizer=tok,
                             val_fraction=sum(map(len, val_text)) / (sum(map(len, train_text)) + sum(map(len, val_text))),
                             source="tiny shakespeare, every client's train then val", verbose=False)
    info = {"clients": clients, "min_chars": min_chars, "pooled_train_tokens": pooled["train_tokens"]}
    with open(os.path.join(out_root, "clients.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def leaf_stats(info):
    """LEAF's table of a federated dataset: clients, and samples per client (here tokens)."""
    n = sorted(c["train_tokens"] for c in info["clients"])
    return (f"{len(n)} clients; training tokens per client: min {n[0]:,}, median {int(np.median(n)):,}, "
            f"max {n[-1]:,} (total {sum(n):,}; the largest {n[-1] / max(n[0], 1):.0f}x the smallest)")


def clients_root(name):
    """'shakespeare_clients' -> data/shakespeare_clients (an existing path as it is), which
    must hold clients.json."""
    root = name if os.path.isdir(name) else os.path.join(os.path.dirname(CLIENTS_ROOT), name)
    if not os.path.exists(os.path.join(root, "clients.json")):
        raise UserError(f"fed_clients={name}: {os.path.join(root, 'clients.json')} is missing; run: "
                        f"python federated.py prepare --input=<tiny shakespeare's input.txt>")
    return root


def load_clients(name, meta, block_size):
    """[(client name, train tokens, val tokens)] of a prepared clients folder, checked
    against the model's tokenizer and context."""
    from tokenizer import same_tokenizer

    root = clients_root(name)
    with open(os.path.join(root, "clients.json")) as f:
        info = json.load(f)
    out = []
    for c in info["clients"]:
        train, val, m = load_dataset(os.path.join(root, c["name"]))
        if not same_tokenizer(m, meta):
            raise UserError(f"client {c['name']} has another tokenizer than the model's; prepare them together")
        if min(len(train), len(val)) <= block_size + 1:
            raise UserError(f"client {c['name']} has {len(val)} val tokens; block_size={block_size} needs more: "
                            f"prepare with a larger --min_chars or use a smaller block_size")
        out.append((c["name"], train, val))
    return out, root


# ----------------------------------------------------------------------------------------
# one round


def derived_seed(*parts):
    """A 63-bit seed from (seed, round, client): independent streams without a state to save."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def sample_clients(n_clients, frac, seed, rnd):
    """Round rnd's clients: max(1, round(frac * n)) of them, without replacement, sorted."""
    m = max(1, round(frac * n_clients))
    g = torch.Generator().manual_seed(derived_seed(seed, rnd))
    return sorted(torch.randperm(n_clients, generator=g)[:m].tolist())


def travelling(model):
    """The tensors a client sends (and the server averages): the trainable ones, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def local_update(model, global_w, data, tc, fc, seed, device, ctx, scaler):
    """Client update of FedAvg (Algorithm 1, ClientUpdate): from the global weights, E local
    steps on the client's data; returns (d_k = w_k - w_t by name, mean local loss)."""
    params = travelling(model)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(global_w[n])
    torch.manual_seed(seed)  # dropout
    windows = RandomWindows(data, tc.batch_size, model.config.block_size, device, seed)
    if fc.fed_local_opt == "sgd":
        opt = torch.optim.SGD(list(params.values()), lr=tc.learning_rate)
    else:
        from step import make_optimizer

        opt = make_optimizer(model, tc)
    losses = []
    for _ in range(fc.fed_local_steps):
        losses.append(forward_backward(model, windows, ctx, scaler, 1).item())
        if fc.fed_mu > 0:  # FedProx: the gradient of mu/2 ||w - w_t||^2
            for n, p in params.items():
                p.grad.add_(p.detach() - global_w[n], alpha=fc.fed_mu)
        optimizer_step(model, opt, scaler, tc.grad_clip)
    update = {n: p.detach() - global_w[n] for n, p in params.items()}
    return compress(update, fc.fed_update_bits)[0], sum(losses) / len(losses)


def compress(update, bits):
    """(the update as the server receives it, the bytes sent). bits 0: fp32 tensors. bits 8:
    every tensor as int8 codes with one fp32 scale per row (quant.quantize_rtn, round to
    nearest; a vector is one row, a (k, ...) tensor k rows), dequantized by the server. No
    error feedback: each round's rounding error is lost (|error| <= scale / 2 per entry)."""
    if not bits:
        return update, sum(d.numel() * d.element_size() for d in update.values())
    out, sent = {}, 0
    for n, d in update.items():
        codes, scale = quantize_rtn(d.reshape(d.shape[0] if d.dim() > 1 else 1, -1), bits)
        out[n] = dequantize(codes, scale).reshape(d.shape).to(d.dtype)
        sent += codes.numel() * codes.element_size() + scale.numel() * 4
    return out, sent


def aggregate(global_w, updates, sizes, server_lr=1.0):
    """The server's step: w + server_lr * sum_k (n_k / n) d_k, summed in the order given."""
    total = float(sum(sizes))
    new = {}
    for n, w in global_w.items():
        avg = torch.zeros_like(w)
        for d, size in zip(updates, sizes):
            avg += (size / total) * d[n]
        new[n] = w + server_lr * avg
    return new


def lora_product_gap(model, global_w, updates, sizes):
    """||mean_k(B_k A_k) - mean(B) mean(A)|| / ||mean_k(B_k A_k)|| over every LoRA layer (the
    weighted means the server takes): what averaging the factors separately misses."""
    total, num, den = float(sum(sizes)), 0.0, 0.0
    for name in (n for n, m in model.named_modules() if isinstance(m, LoRALinear)):
        a, b = f"{name}.lora_A", f"{name}.lora_B"
        # B (k, part, r) @ A (k * r, in) per part: the (k, part, in) weight update, up to the scale
        ba = lambda B, A: B @ A.view(B.shape[0], B.shape[2], -1)  # noqa: E731
        prod = sum((s / total) * ba(global_w[b] + d[b], global_w[a] + d[a]) for d, s in zip(updates, sizes))
        mean_a = sum((s / total) * (global_w[a] + d[a]) for d, s in zip(updates, sizes))
        mean_b = sum((s / total) * (global_w[b] + d[b]) for d, s in zip(updates, sizes))
        num += (prod - ba(mean_b, mean_a)).pow(2).sum().item()
        den += prod.pow(2).sum().item()
    return math.sqrt(num / den) if den > 0 else 0.0


@torch.no_grad()
def evaluate(model, datas, tc, ctx, device, seed):
    """Loss and next-token accuracy (LEAF's metric for Shakespeare) of the model on fixed
    batches of each split in datas ({name: tokens}): {name: (loss, accuracy)}."""
    was = model.training
    model.eval()
    out = {}
    for i, (name, data) in enumerate(datas.items()):
        windows = RandomWindows(data, tc.batch_size, model.config.block_size, device, seed + 1000 + i)
        loss = acc = 0.0
        for _ in range(tc.eval_iters):
            x, y = windows.next()
            with ctx:
                logits, l = model(x, y)
            loss += l.item()
            acc += (logits.argmax(-1) == y).float().mean().item()
        out[name] = (loss / tc.eval_iters, acc / tc.eval_iters)
    model.train(was)
    return out


# ----------------------------------------------------------------------------------------
# the run


def save(path, model, global_w, cfg, fc, meta, rnd, base):
    """The global model after round rnd, atomically, in train.py's checkpoint format (so
    sample.py, export.py and train.py --init_from read it), with the round to resume from."""
    from peft import peft_state_dict

    with torch.no_grad():
        for n, p in travelling(model).items():
            p.copy_(global_w[n])
    ckpt = {"model": peft_state_dict(model) if base else model.state_dict(), "model_config": asdict(model.config),
            "config": cfg.as_dict(), "meta": meta, "iter_num": rnd, "round": rnd,
            "fed": asdict(fc)}
    if base:
        ckpt["peft_base"] = base
    save_checkpoint(ckpt, path)


def run(explicit, argv, log=print):
    """Train the rounds that explicit (the --fed_* settings) and argv (train.py's keys) ask
    for, or with --init_from=resume continue out_dir's run after its last saved round (its
    settings, but for fed_rounds and what argv sets). Returns the global weights that travel,
    by name. Under torchrun process 0 is the server and every process trains its share of
    each round's clients."""
    resume = "--init_from=resume" in argv
    if resume:  # the model is built as the run first built it, then given the saved weights
        out_dir = load_config([a for a in argv if a != "--init_from=resume"]).train.out_dir
        ckpt = read_checkpoint(os.path.join(out_dir, "ckpt.pt"), "--init_from=resume")
        if "round" not in ckpt:
            raise UserError(f"{out_dir}/ckpt.pt is not a federated.py run's checkpoint: nothing to resume")
        argv = [f"--init_from={ckpt['config']['init_from']}"] + [a for a in argv if a != "--init_from=resume"]
        explicit = {**ckpt["fed"], **explicit}
    fc, cfg = fed_config(explicit), load_config(argv)
    tc = cfg.train
    rank, world, device = setup_distributed(resolve_system(tc.device, tc.dtype)[0])
    device, dtype = resolve_system(device, tc.dtype)
    ctx = autocast_context(device, dtype)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, _, meta = load_dataset(os.path.join(clients_root(fc.fed_clients), "pooled"))  # every client's tokenizer
    torch.manual_seed(tc.seed)  # the initial weights: the same in every process
    model, _, base = init_model(cfg, meta)
    start = 0
    if resume:
        from checkpoint import load_weights

        load_weights(model, ckpt)
        start = ckpt["round"]
    model.to(device).train()
    clients, root = load_clients(fc.fed_clients, meta, model.config.block_size)
    sizes = [len(c[1]) for c in clients]
    global_w = {n: p.detach().clone() for n, p in travelling(model).items()}
    sent = compress(global_w, fc.fed_update_bits)[1]  # the same for every update: it counts shapes
    full = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    if rank == 0:
        os.makedirs(tc.out_dir, exist_ok=True)
        log(f"{len(clients)} clients ({root}); {fc.fed_rounds} rounds of {max(1, round(fc.fed_client_frac * len(clients)))}"
            f" clients x {fc.fed_local_steps} local steps; each sends {sent:,} bytes per round "
            f"({100 * sent / full:.2f}% of the model's {full:,})" + (f"; resuming after round {start}" if resume else ""))
    metrics = open_metrics(os.path.join(tc.out_dir, "metrics.jsonl"), start) if rank == 0 else None
    pooled_val = {"val": np.concatenate([c[2] for c in clients])}
    t0 = time.perf_counter()
    for rnd in range(start + 1, fc.fed_rounds + 1):
        chosen = sample_clients(len(clients), fc.fed_client_frac, tc.seed, rnd)
        mine = chosen[rank::world]  # torchrun: each process its share, in order
        results = {k: local_update(model, global_w, clients[k][1], tc, fc, derived_seed(tc.seed, rnd, k), device,
                                   ctx, scaler) for k in mine}
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(results, gathered, dst=0)
            if rank == 0:
                results = {k: v for part in gathered for k, v in part.items()}
        if rank == 0:
            updates, losses = [results[k][0] for k in chosen], [results[k][1] for k in chosen]
            chosen_sizes = [sizes[k] for k in chosen]
            row = {"round": rnd, "train_loss": sum(losses) / len(losses), "clients": len(chosen),
                   "bytes_up_per_client": sent, "time": round(time.perf_counter() - t0, 3)}
            if base:
                row["lora_product_gap"] = lora_product_gap(model, global_w, updates, chosen_sizes)
            global_w = aggregate(global_w, updates, chosen_sizes, fc.fed_server_lr)
        if world > 1:
            box = [global_w]
            dist.broadcast_object_list(box, src=0)
            global_w = box[0]
        if rank == 0:
            if not math.isfinite(row["train_loss"]):
                raise UserError(f"round {rnd}: a client's loss is not finite; lower learning_rate "
                                f"({tc.learning_rate}) or fed_local_steps")
            if rnd % fc.fed_eval_interval == 0 or rnd == fc.fed_rounds:
                with torch.no_grad():
                    for n, p in travelling(model).items():
                        p.copy_(global_w[n])
                loss, acc = evaluate(model, pooled_val, tc, ctx, device, tc.seed)["val"]
                row.update(val_loss=loss, val_acc=acc)
                log(f"round {rnd}: train loss {row['train_loss']:.4f}, val loss {loss:.4f}, accuracy {acc:.4f}")
                save(os.path.join(tc.out_dir, "ckpt.pt"), model, global_w, cfg, fc, meta, rnd, base)
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
    if metrics:
        metrics.close()
    if world > 1:
        dist.destroy_process_group()
    return global_w


def open_metrics(path, start):
    """metrics.jsonl for appending, without the rows of rounds after `start` (a run stopped
    between two saves logged rounds that its resume trains again)."""
    rows = []
    if start and os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["round"] <= start]
    f = open(path, "w")
    f.writelines(rows)
    return f


# ----------------------------------------------------------------------------------------
# personalization: each client's own LoRA on the global model


def personalize(run_dir, steps, lr, r=8, targets="c_attn[q,v]", clients=None, log=print):
    """For each client (all, or the names in clients): the global model of run_dir (None: a
    fresh model of the same shape, trained on that client alone), a LoRA (r, targets; none
    for a fresh model: all of it trains) trained `steps` AdamW steps at lr on the client's
    own training text; the client's val loss before and after. Returns [{client, before,
    after}], the clients in clients.json's order."""
    from checkpoint import restore_model
    from peft import PEFTConfig, apply_peft
    from step import make_optimizer

    ckpt = read_checkpoint(os.path.join(run_dir, "ckpt.pt"), "federated.py personalize")
    cfg, fc = load_config([f"--out_dir={run_dir}"]), FedConfig(**ckpt["fed"])
    tc = cfg.train.__class__(**{**asdict(cfg.train), "learning_rate": lr, "batch_size": ckpt["config"]["batch_size"],
                                "eval_iters": ckpt["config"]["eval_iters"], "weight_decay": 0.0})
    ctx, scaler = autocast_context("cpu", "float32"), torch.amp.GradScaler("cpu", enabled=False)
    out = []
    for name, train, val in load_clients(fc.fed_clients, ckpt["meta"], ckpt["model_config"]["block_size"])[0]:
        if clients and name not in clients:
            continue
        torch.manual_seed(derived_seed(ckpt["config"]["seed"], "personalize", name))
        model = restore_model(ckpt, "federated.py personalize")
        if r:
            apply_peft(model, PEFTConfig(peft="lora", lora_r=r, lora_targets=targets))
        else:  # alone: a fresh model of the global one's shape
            model = type(model)(model.config)
        before = evaluate(model, {"val": val}, tc, ctx, "cpu", 0)["val"][0]
        model.train()
        opt = make_optimizer(model, tc)
        windows = RandomWindows(train, tc.batch_size, model.config.block_size, "cpu", derived_seed(name, steps))
        for _ in range(steps):
            forward_backward(model, windows, ctx, scaler, 1)
            optimizer_step(model, opt, scaler, tc.grad_clip)
        after = evaluate(model, {"val": val}, tc, ctx, "cpu", 0)["val"][0]
        out.append({"client": name, "train_tokens": len(train), "before": before, "after": after})
        log(f"{name}: val loss {before:.4f} -> {after:.4f}")
    return out


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare"]:
        import argparse

        p = argparse.ArgumentParser(prog="federated.py prepare", description="tiny shakespeare as one client per speaker")
        p.add_argument("--input", required=True, help="tiny shakespeare's input.txt")
        p.add_argument("--out", default=CLIENTS_ROOT)
        p.add_argument("--min_chars", type=int, default=2000, help="speakers with fewer characters are left out")
        a = p.parse_args(argv[1:])
        if not os.path.isfile(a.input):
            raise UserError(f"--input={a.input}: no such file (tiny shakespeare's input.txt)")
        with open(a.input, encoding="utf-8") as f:
            text = f.read()
        try:
            info = prepare_clients(text, a.out, a.min_chars)
        except ValueError as e:
            raise UserError(str(e)) from None
        print(f"wrote {a.out}: {leaf_stats(info)}")
        return
    if argv[:1] == ["personalize"]:
        import argparse

        p = argparse.ArgumentParser(prog="federated.py personalize",
                                    description="each client's own LoRA on a federated run's global model")
        p.add_argument("--out_dir", required=True, help="the federated run")
        p.add_argument("--steps", type=int, default=50)
        p.add_argument("--learning_rate", type=float, default=3e-3)
        p.add_argument("--lora_r", type=int, default=8, help="0: train a fresh model on each client alone instead")
        p.add_argument("--clients", default="", help="comma-separated client names (default: all)")
        p.add_argument("--out", default=None, help="default: <out_dir>/personalize-r<lora_r>.json")
        a = p.parse_args(argv[1:])
        if a.steps < 1 or not a.learning_rate > 0 or a.lora_r < 0:
            raise UserError("--steps must be >= 1, --learning_rate > 0, --lora_r >= 0")
        res = personalize(a.out_dir, a.steps, a.learning_rate, a.lora_r,
                          clients=[c for c in a.clients.split(",") if c] or None)
        path = a.out or os.path.join(a.out_dir, f"personalize-r{a.lora_r}.json")
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
        gains = sorted(x["before"] - x["after"] for x in res)
        print(f"wrote {path}: {len(res)} clients, val loss gain median {gains[len(gains) // 2]:+.4f} "
              f"(min {gains[0]:+.4f}, max {gains[-1]:+.4f})")
        return
    run(*split_argv(argv))


if __name__ == "__main__":
    main()
