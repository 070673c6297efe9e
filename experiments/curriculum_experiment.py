"""
Do curricula help a small model at a fixed budget of tokens? Random windows (the baseline)
against sequence-length warmup (two pacings), easy-to-hard ordering by three scorers, and
hard-to-easy (anti), on configs/hparam_char.py: character-level tiny shakespeare, 2 layers,
128 wide, block 64, 600 steps of 16 x 64 tokens at the tuned rate 8e-3, fp32. Every
curriculum reaches the full windows / the whole pool at step 300, half the run.

    python experiments/curriculum_experiment.py                   # 25 runs, ~8 min on 2 CPU cores
    python experiments/curriculum_experiment.py --rows mixture    # the mixture rows alone
    python experiments/curriculum_experiment.py --rows main       # the main rows at seed 1337 only

Rows:
  random                 uniform random windows (today's training)
  seqlen-linear/-root    sequence-length warmup from 8 tokens, linear or root pacing
  easy-bigram/-zlib      easy first by a bigram model's loss, by zlib's compression ratio,
  easy-model             or by a proxy model's loss (proxy: width 64, 200 steps, trained first)
  anti-bigram            hard first (bigram)
  *-lr4x, *-lr10x        random and seqlen-linear at 4x and 10x the tuned rate: stability (Li et
                         al. 2022 report seqlen warmup stable where the baseline is not)
  *-seed2                the main rows at seed 2
  mix-constant           Shakespeare and Python source 50/50 all along (one shared character
                         vocabulary, data/mix_*), a WSD schedule at half the tuned rate (4e-3)
  mix-anneal             the same, but Shakespeare alone in the decay (the last 20%, from step 480):
                         the Smol Training Playbook's annealing; shakespeare-only: no code at all
                         (each at seeds 1337 and 2)

The table: final val loss and its difference from random (both seeds), the step at which
the run first reaches random's final val loss (evaluated every 50 steps), wall time, and
spikes (harness.spikes). The plot (docs/curriculum.png): val loss against tokens (and at 4x
and 10x the rate), and against wall time.
"""

import os

from harness import REPO, parse_args, pyplot, read_json, read_metrics, run_rows, spikes
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-curriculum")
CONFIG = "configs/hparam_char.py"
PROXY = os.path.join(ROOT, "proxy")
EVAL = ["--eval_interval=50", "--eval_iters=20", "--log_interval=1"]
PACE = ["--curriculum_iters=300"]
MAIN = {
    "random": [],
    "seqlen-linear": ["--curriculum=seqlen", "--curriculum_pacing=linear"] + PACE,
    "seqlen-root": ["--curriculum=seqlen", "--curriculum_pacing=root"] + PACE,
    "easy-bigram": ["--curriculum=difficulty", "--curriculum_scorer=bigram"] + PACE,
    "easy-zlib": ["--curriculum=difficulty", "--curriculum_scorer=zlib"] + PACE,
    "easy-model": ["--curriculum=difficulty", f"--curriculum_scorer={PROXY}"] + PACE,
    "anti-bigram": ["--curriculum=anti", "--curriculum_scorer=bigram"] + PACE,
}
ROWS = {"proxy": ["--n_embd=64", "--max_iters=200", "--eval_interval=200"]}
ROWS.update({k: v + EVAL for k, v in MAIN.items()})
for name in ("random", "seqlen-linear"):
    for mult in (4, 10):
        ROWS[f"{name}-lr{mult}x"] = MAIN[name] + EVAL + [f"--learning_rate={8e-3 * mult:g}"]
ROWS.update({f"{k}-seed2": v + EVAL + ["--seed=2"] for k, v in MAIN.items()})
# the mixture: tiny shakespeare and Python's standard library source, one shared character
# vocabulary (prepare_mixture), a WSD schedule whose decay (the last 20%) is the annealing stage
SHAKE, CODE = "data/mix_shakespeare", "data/mix_stdlib"
# at half the tuned rate: 8e-3 sits at the cliff's edge, where one seed of these runs fell off it
SAFE = ["--lr_schedule=wsd", "--learning_rate=4e-3"]
MIX = [f"--datasets={SHAKE}:0.5,{CODE}:0.5"] + SAFE
MIXTURE = {"mix-constant": MIX, "mix-anneal": MIX + [f"--stages=480:{SHAKE}=1"],
           "shakespeare-only": [f"--datasets={SHAKE}:1"] + SAFE}
ROWS.update({k: v + EVAL for k, v in MIXTURE.items()})
ROWS.update({f"{k}-seed2": v + EVAL + ["--seed=2"] for k, v in MIXTURE.items()})
GROUPS = {"main": ["proxy"] + list(MAIN), "mixture": [r for r in ROWS if r.startswith(("mix-", "shakespeare-"))], "stability": [r for r in ROWS if "-lr" in r],
          "seeds": [r for r in ROWS if r.endswith("-seed2")]}
GROUPS["seeds"] = [r for r in GROUPS["seeds"] if r not in GROUPS["mixture"]]
GROUPS["default"] = GROUPS["main"] + GROUPS["stability"] + GROUPS["seeds"] + GROUPS["mixture"]


def prepare_mixture():
    """data/mix_shakespeare and data/mix_stdlib: tiny shakespeare and the first 1.1M characters
    of the standard library's source (data/stdlib_char, prepared here if missing), encoded with
    one character vocabulary, the union of both texts', so that they can be mixed."""
    import subprocess
    import sys

    import numpy as np

    from tokenizer import CharTokenizer, prepare_dataset, tokenizer_from_meta

    if all(os.path.exists(os.path.join(REPO, d, "meta.json")) for d in (SHAKE, CODE)):
        return
    if not os.path.exists(os.path.join(REPO, "data", "stdlib_char", "meta.json")):
        subprocess.run([sys.executable, "data/stdlib_char/prepare.py"], cwd=REPO, check=True)

    def text_of(name):  # a prepared char dataset's whole text, decoded
        folder = os.path.join(REPO, "data", name)
        ids = np.concatenate([np.fromfile(os.path.join(folder, f"{s}.bin"), dtype=np.uint16) for s in ("train", "val")])
        return tokenizer_from_meta(read_json(os.path.join(folder, "meta.json"))).decode(ids.tolist())

    shakespeare, code = text_of("shakespeare_char"), text_of("stdlib_char")[:1_115_394]
    tok = CharTokenizer(sorted(set(shakespeare) | set(code)))
    prepare_dataset(shakespeare, os.path.join(REPO, SHAKE), tokenizer=tok, source="tiny shakespeare (shared vocab)")
    prepare_dataset(code, os.path.join(REPO, CODE), tokenizer=tok, source="stdlib source (shared vocab)")


def summarize(name, out_dir):
    rows = read_metrics(out_dir)
    evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    last = [r for r in rows if "val_loss" in r][-1]
    per = {k[len("val_loss_"):]: v for k, v in last.items() if k.startswith("val_loss_")}  # a mixture's datasets
    return {"row": name, "val_loss": evals[-1][1], "evals": evals, "spikes": spikes(losses), "per_dataset": per,
            "eval_times": [r["time"] for r in rows if "val_loss" in r],
            "wall_s": read_json(os.path.join(out_dir, "run.json"))["wall_s"]}


def table(results):
    by = {r["row"]: r for r in results}
    lines = ["| row | val loss | vs random | seed 2: val loss | vs random | first step at random's final loss | "
             "wall s | spikes |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["row"] == "proxy" or r["row"].endswith("-seed2") or r["row"] in MIXTURE:
            continue
        base = by.get(r["row"].replace("seqlen-linear", "random") if "-lr" in r["row"] else "random")
        target = base["val_loss"] if base else None
        reach = next((it for it, v in r["evals"] if target is not None and v <= target), None)
        s2, b2 = by.get(r["row"] + "-seed2"), by.get("random-seed2")
        seed2 = (f"{s2['val_loss']:.4f} | {s2['val_loss'] - b2['val_loss']:+.4f}" if s2 and b2 else "- | -")
        diff = f"{r['val_loss'] - target:+.4f}" if base and base is not r else "-"
        lines.append(f"| {r['row']} | {r['val_loss']:.4f} | {diff} | {seed2} | {reach if reach is not None else '-'} | "
                     f"{r['wall_s']:.0f} | {r['spikes']} |")
    mixed = [r for r in results if r["row"] in MIXTURE]
    if mixed:
        lines += ["", "| mixture (WSD at 4e-3, 600 steps) | shakespeare val | seed 2 | stdlib val | seed 2 |", "|---|---:|---:|---:|---:|"]
        for r in mixed:
            r2 = by.get(r["row"] + "-seed2")
            cell = lambda x, d: f"{x['per_dataset'][d]:.4f}" if x and d in x["per_dataset"] else "-"
            lines.append(f"| {r['row']} | {cell(r, SHAKE)} | {cell(r2, SHAKE)} | {cell(r, CODE)} | {cell(r2, CODE)} |")
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    for r in results:
        if r["row"] == "proxy" or r["row"].endswith("-seed2") or r["row"] in MIXTURE:
            continue
        ax = axes[1] if "-lr" in r["row"] else axes[0]
        its, vals = zip(*r["evals"])
        ax.plot([i * 16 * 64 / 1e3 for i in its], vals, marker=".", label=r["row"])
        if "-lr" not in r["row"]:
            axes[2].plot(r["eval_times"], vals, marker=".", label=r["row"])
    for ax, title in zip(axes, ("curricula at the tuned rate", "at 4x and 10x the rate", "against wall time")):
        ax.set_xlabel("training tokens (thousands)" if ax is not axes[2] else "wall time (s, evaluations included)")
        ax.set_ylabel("val loss")
        ax.set_ylim(1.9, 3.0)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "curriculum.png"),
                            groups=GROUPS)
    if any(r.startswith("easy-model") for r in rows) and "proxy" not in rows:
        rows = ["proxy"] + rows  # the model scorer's run comes first
    if any(r in GROUPS["mixture"] for r in rows):
        prepare_mixture()
    run_rows(args, rows, ROWS, ROOT, CONFIG, summarize, table, plot)


if __name__ == "__main__":
    main()
