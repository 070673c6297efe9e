"""
Multi-task training of one small model: three tasks in one character vocabulary, each
example starting with its task's prefix token, and three ways to spend a budget of
parameters on them — one shared model on the mixture, one smaller model per task, one
shared base with a LoRA per task — judged by each task's val loss and, on the task whose
answers can be checked, by exact match.

    python data/multitask/prepare.py --input ../shared/data/tinyshakespeare/input.txt
    python train.py configs/multitask.py                                      # one shared model
    python multitask.py --out_dir=out-multitask-run                           # its per-task table
    python multitask.py --task_runs=shakespeare:DIR,python:DIR,sort:DIR       # one run per task
    python sample.py --out_dir=out-multitask-run --start=$'\U0001F522dbca=' --temperature=0 --max_new_tokens=5
    python experiments/multitask_experiment.py                                # the comparison

The tasks (data/multitask/<task>/, written by its prepare.py with one CharTokenizer;
meta.json records "task" and "task_tokens", {task: its prefix character}):

    shakespeare  tiny shakespeare, the prefix before every speech
    python       the standard library's source, the prefix before every block between blank lines
    sort         generated here (sort_examples): "<prefix>dbca=abcd\\n", one example a line

The prefix is T5's task prefix (Raffel et al. 2020, section 2.4: every task as text, one
model, the task named at the start of its input) cut down to one token: training windows
that hold it learn which task follows it, and a prompt that starts with it picks the task
(sample.py above). The shared model is hard parameter sharing (Caruana 1997, "Multitask
Learning"): every weight serves every task, so what the tasks have in common (spelling,
punctuation, brackets) is learnt once, and the tasks compete for the rest.

Why sorting as the checkable task, not arithmetic: a sorted string's answer is as long as
its question and every character of it is checked; a small transformer can compute it by
attention alone (the next answer letter is the smallest question letter not yet written,
counted with its repeats), while addition's carries run right to left, against the order in
which the model writes its answer (Lee et al. 2023, "Teaching Arithmetic to Small
Transformers", reverse the digits for that reason).

Exact match (exact_match): greedy decoding (temperature 0) after each held-out prompt
"<prefix>QUESTION=", right only when the continuation is the answer followed by the newline.
The val loss of every task is measured on the same fixed windows for every model (step.
estimate_loss, seeded per task), so the rows of a comparison differ only by the model.
"""

import argparse
import json
import os
import random
from collections import defaultdict
from contextlib import nullcontext

import numpy as np
import torch

from batches import check_task_tokens, dataset_dir, load_dataset
from checkpoint import file_sha256, read_checkpoint, restore_model
from errors import UserError, cli
from step import estimate_loss
from tokenizer import same_tokenizer, tokenizer_from_meta

# one character each, printable, and found in none of the three texts (prepare.py checks)
TASK_TOKENS = {"shakespeare": "\U0001F3AD", "python": "\U0001F40D", "sort": "\U0001F522"}  # theatre, snake, 1234
SORT_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
CHECKED_TASK = "sort"  # the task with answers that exact_match checks


# ----------------------------------------------------------------------------------------
# the tasks' text


def prefix_chunks(text, token, sep="\n\n"):
    """text with token at the start of every sep-separated chunk that is not blank (a speech
    of a play, a block of code between blank lines)."""
    return sep.join(token + c if c.strip() else c for c in text.split(sep))


def sort_examples(n, seed, min_len=3, max_len=8, alphabet=SORT_ALPHABET, exclude=()):
    """n distinct (question, answer) pairs: a string of min_len..max_len letters drawn from
    alphabet with repeats, and the same letters sorted. Seeded: the same arguments give the
    same list. exclude: questions never to return (the training set's, when drawing a
    held-out set)."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"sort lengths {min_len}..{max_len}: need 1 <= min <= max")
    possible = sum(len(alphabet) ** k for k in range(min_len, max_len + 1))
    if n > possible - len(set(exclude)):
        raise ValueError(f"{n} distinct sort questions asked, but only {possible:,} strings of {min_len}..{max_len} "
                         f"letters exist, {len(set(exclude)):,} of them excluded")
    rng = random.Random(seed)
    seen, out = set(exclude), []
    while len(out) < n:
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        if q not in seen:
            seen.add(q)
            out.append((q, "".join(sorted(q))))
    return out


def sort_text(examples, token):
    """The task's text: one "<token>question=answer" line per example."""
    return "".join(f"{token}{q}={a}\n" for q, a in examples)


def parse_examples(text, token):
    """(prompt, answer) pairs from a generated task's text (sort_text's lines): the prompt
    is the token, the question and "=", what the model is given; the answer what it must
    write before the newline."""
    out = []
    for line in text.split("\n"):
        if line.startswith(token) and "=" in line:
            q, _, a = line.partition("=")
            out.append((q + "=", a))
    return out


def prefix_coverage(ids, token_id, block_size):
    """The share of the (block_size + 1)-token training windows that hold token_id at least
    once: how often a random window tells the model its task."""
    ids = np.asarray(ids)
    starts = np.arange(len(ids) - block_size)
    hits = np.flatnonzero(ids == token_id)
    if len(hits) == 0 or len(starts) == 0:
        return 0.0
    nxt = np.searchsorted(hits, starts)  # the first prefix at or after each start
    inside = (nxt < len(hits)) & (hits[np.minimum(nxt, len(hits) - 1)] <= starts + block_size)
    return float(inside.mean())


# ----------------------------------------------------------------------------------------
# evaluation


def load_tasks(folder):
    """{task: (dataset path, train, val, meta)} of a multi-task folder's datasets (the
    subfolders whose meta.json names a task), refused as a mixture would be when a prefix is
    missing (batches.check_task_tokens)."""
    root = dataset_dir(folder)
    names = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "meta.json"))) \
        if os.path.isdir(root) else []
    if not names:
        raise UserError(f"--data={folder}: no prepared datasets in it; run: python data/multitask/prepare.py")
    data = {os.path.join(root, n): load_dataset(os.path.join(root, n)) for n in names}
    if not any("task" in m for _, _, m in data.values()):
        raise UserError(f"--data={folder}: no dataset in it names a task; run: python data/multitask/prepare.py")
    check_task_tokens(data)
    order = list(next(iter(data.values()))[2]["task_tokens"])  # TASK_TOKENS' order, not the folders'
    return {m["task"]: (path, tr, va, m) for path, (tr, va, m) in sorted(data.items(), key=lambda d: (
        order.index(d[1][2]["task"]), d[0]))}


@torch.no_grad()
def exact_match(model, tok, examples, batch_size=256):
    """(share of exact matches, the predictions) of greedy answers to (prompt, answer)
    pairs. The prompts are grouped by length, so a batch needs no padding; the model writes
    one token more than the longest answer, and a prediction is what it wrote before its
    first newline (all of it when it wrote none: then it is too long to match)."""
    model.eval()
    prompts = [tok.encode(p) for p, _ in examples]
    steps = max(len(a) for _, a in examples) + 1
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    preds = [None] * len(examples)
    for n, ids in sorted(groups.items()):
        for k in range(0, len(ids), batch_size):
            chunk = ids[k:k + batch_size]
            x = torch.tensor([prompts[i] for i in chunk], dtype=torch.long)
            y = model.generate(x, steps, temperature=0.0)[:, n:]  # (B, steps): the answers
            for i, row in zip(chunk, y.tolist()):
                preds[i] = tok.decode(row).partition("\n")[0]
    right = sum(p == a for p, (_, a) in zip(preds, examples))
    return right / len(examples), preds


def load_run(out_dir):
    """(model in eval mode, its checkpoint) of a run folder; a PEFT run comes with its base.
    The checkpoint gets "sha256", its file's (what a PEFT run records of its base)."""
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = read_checkpoint(path, why="multitask.py")
    ckpt["sha256"] = file_sha256(path)
    return restore_model(ckpt, "multitask.py", dropout=0.0).eval(), ckpt


def parameter_counts(runs):
    """({task: parameters of the model that serves it}, parameters of all of them together)
    for {task: (model, ckpt)} (load_run's): every checkpoint file counts once, by its sha256,
    however many tasks it serves; a PEFT run counts its own tensors, and its base counts once
    however many runs stand on it (the base's sha256), even where the base serves a task
    itself."""
    per_task, parts = {}, {}  # parts: sha256 of a checkpoint file -> the parameters it adds
    for task, (model, ckpt) in runs.items():
        n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
        per_task[task] = n
        if "peft_base" in ckpt:
            mine = sum(v.numel() for v in ckpt["model"].values())  # a PEFT run's ckpt holds only its tensors
            parts[ckpt["peft_base"]["sha256"]] = n - mine
            parts[ckpt["sha256"]] = mine
        else:
            parts[ckpt["sha256"]] = n
    return per_task, sum(parts.values())


def evaluate(runs, tasks, batch_size=16, eval_iters=50, max_examples=1000, seed=1337):
    """One row per task: {task, val_loss, exact_match (the checked task only), params} of
    {task: (model, ckpt)} on load_tasks' datasets, every model on the same windows. Returns
    (rows, total parameters)."""
    block = min(m.config.block_size for m, _ in runs.values())
    per_task, total = parameter_counts(runs)
    rows = []
    for task, (path, _, val, meta) in tasks.items():
        if task not in runs:
            continue
        model, ckpt = runs[task]
        if not same_tokenizer(ckpt["meta"], meta):
            raise UserError(f"the run for task '{task}' has another tokenizer than {path}; train it on "
                            f"data/multitask (python data/multitask/prepare.py)")
        loss = estimate_loss(model, {"val": val}, batch_size, block, eval_iters, "cpu", nullcontext(), seed)["val"]
        row = {"task": task, "val_loss": loss, "params": per_task[task]}
        if task == CHECKED_TASK:
            tok = tokenizer_from_meta(meta)
            examples = parse_examples(tok.decode(np.asarray(val).tolist()), meta["task_tokens"][task])[:max_examples]
            row["exact_match"], _ = exact_match(model, tok, examples)
            row["examples"] = len(examples)
        rows.append(row)
    return rows, total


def table(rows, total):
    lines = ["| task | val loss | exact match | parameters |", "|---|---:|---:|---:|"]
    for r in rows:
        em = f"{100 * r['exact_match']:.1f}% of {r['examples']}" if "exact_match" in r else "-"
        lines.append(f"| {r['task']} | {r['val_loss']:.4f} | {em} | {r['params']:,} |")
    return "\n".join(lines + [f"\nparameters in all: {total:,}"])


def parse_task_runs(text, tasks):
    """'shakespeare:DIR,python:DIR' -> {task: DIR}, each task one of the prepared ones."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, sep, run = part.partition(":")
        if not sep or not run or task not in tasks or task in out:
            raise UserError(f"--task_runs='{text}': write TASK:RUN_DIR,... with each task once, among "
                            f"{', '.join(tasks)}")
        out[task] = run
    return out


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="Per-task val loss and exact match of a multi-task model, or of a run per "
                                            "task (see multitask.py's docstring).")
    p.add_argument("--out_dir", default=None, help="one run folder that serves every task")
    p.add_argument("--task_runs", default=None,
                   help="TASK:RUN_DIR,...: a run per task (a PEFT run is loaded with its base, counted once)")
    p.add_argument("--data", default="multitask", help="the folder of task datasets (data/multitask)")
    p.add_argument("--batch_size", type=int, default=16, help="windows per val batch")
    p.add_argument("--eval_iters", type=int, default=50, help="val batches per task")
    p.add_argument("--max_examples", type=int, default=1000, help="held-out examples decoded for exact match")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if (args.out_dir is None) == (args.task_runs is None):
        raise UserError("give one of --out_dir=RUN (one model for every task) or --task_runs=TASK:RUN,...")
    if min(args.batch_size, args.eval_iters, args.max_examples) < 1:
        raise UserError("--batch_size, --eval_iters and --max_examples must be >= 1")
    tasks = load_tasks(args.data)
    dirs = parse_task_runs(args.task_runs, tasks) if args.task_runs else dict.fromkeys(tasks, args.out_dir)
    loaded = {d: load_run(d) for d in dict.fromkeys(dirs.values())}  # a folder serving several tasks: read once
    rows, total = evaluate({t: loaded[d] for t, d in dirs.items()}, tasks, args.batch_size, args.eval_iters,
                           args.max_examples)
    print(table(rows, total))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "total_params": total, "runs": dirs}, f, indent=1)
    return rows, total


if __name__ == "__main__":
    main()
