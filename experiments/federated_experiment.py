"""
Federated learning over tiny shakespeare's speakers (federated.py), measured: FedSGD,
FedAvg at two numbers of local steps, FedProx, and centralized training on the pooled data
(the ceiling) from scratch; full-weight and LoRA-only FedAvg from a base pretrained on the
"public" speakers (those too small to be clients); then each client's own LoRA on the
global model (personalization) against a model trained on that client alone.

    python experiments/federated_experiment.py --input ../shared/data/tinyshakespeare/input.txt   # ~19 min on 2 CPU cores
    python experiments/federated_experiment.py --rows fedavg-e5,central      # some rows (finished runs are reused)

The rows, as commands (configs/federated_shakespeare.py: 2 layers x 64, block 64, batches of
B = 8 windows; C = 0.1 of the 106 clients, i.e. 11, per round; 60 rounds):
  McMahan et al.'s setting, local SGD at lr 0.5:
  fedsgd        --fed_local_steps=1, 240 rounds                  (one averaged gradient step per round)
  fedsgd-full   the same with every client each round (--fed_client_frac=1)
  fedavg-e5     --fed_local_steps=5
  fedavg-e20    --fed_local_steps=20
  fedprox-e20   --fed_local_steps=20 --fed_mu=0.1
  fedavg-e20-int8   fedavg-e20 with --fed_update_bits=8 (each update as int8 codes + a scale per row)
  central       one client holding every client's data, batch 11 x 8, 5 steps per round: the
                same tokens per round as fedavg-e5's 11 clients, in one place
  The practical setting, a fresh local AdamW each round (lr 3e-3):
  fedavg-e20-adamw  --fed_local_steps=20 --fed_local_opt=adamw
  base          python train.py on data/shakespeare_clients/public (no client's text), 600 AdamW steps
  full-from-base, lora-from-base   FedAvg E = 20 (AdamW) for 30 rounds from the base: every
                weight, or LoRA r = 8 on q, v (lr 1e-2) with the base frozen
  full-from-base-int8   full-from-base with int8 updates
  personalize   python federated.py personalize on fedavg-e20-adamw (LoRA r = 8, 50 steps) and
                --lora_r=0 (a fresh model on the client's text alone, 50 and 300 steps), for
                the 20 largest clients

Columns: the final val loss and next-character accuracy of the global model on the pooled
val text of every client (fixed batches), the rounds to reach a target accuracy (95% of the
final accuracy of central in the SGD table, of full-from-base in the AdamW one), bytes each
client sends per round and in all to the target, wall time.
"""

import json
import os
import sys

from harness import REPO, parse_args, pyplot, read_json, run_logged, train_run
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-fed")
CLIENTS = os.path.join(REPO, "data", "shakespeare_clients")
CENTRAL = os.path.join(ROOT, "central_clients")  # one client: the pooled data
CONFIG = "configs/federated_shakespeare.py"
BASE = os.path.join(ROOT, "base")
ROUNDS = 60
ADAMW = ["--fed_local_opt=adamw", "--learning_rate=3e-3"]  # a fresh AdamW each round, as FedIT's clients
ROWS = {  # row -> (label, federated.py arguments)
    # McMahan et al.'s setting: local SGD
    "fedsgd": ("FedSGD (E=1)", ["--fed_local_steps=1", f"--fed_rounds={4 * ROUNDS}", "--fed_eval_interval=20"]),
    "fedsgd-full": ("FedSGD (E=1), every client each round", [
        "--fed_local_steps=1", "--fed_client_frac=1", f"--fed_rounds={4 * ROUNDS}", "--fed_eval_interval=20"]),
    "fedavg-e5": ("FedAvg E=5", ["--fed_local_steps=5"]),
    "fedavg-e20": ("FedAvg E=20", ["--fed_local_steps=20"]),
    "fedprox-e20": ("FedProx E=20, μ=0.1", ["--fed_local_steps=20", "--fed_mu=0.1"]),
    "fedavg-e20-int8": ("FedAvg E=20, int8 updates", ["--fed_local_steps=20", "--fed_update_bits=8"]),
    "central": ("centralized (pooled data, 5 steps of 11x the batch per round)", [
        f"--fed_clients={CENTRAL}", "--fed_client_frac=1", "--fed_local_steps=5", "--batch_size=88"]),
    # the practical setting: local AdamW; from scratch, and from a base pretrained on public data
    "fedavg-e20-adamw": ("FedAvg E=20, local AdamW", ["--fed_local_steps=20", *ADAMW]),
    "full-from-base": ("FedAvg E=20 AdamW from the public base, every weight", [
        f"--init_from={BASE}", "--fed_local_steps=20", *ADAMW, f"--fed_rounds={ROUNDS // 2}"]),
    "full-from-base-int8": ("FedAvg E=20 AdamW from the public base, every weight, int8 updates", [
        f"--init_from={BASE}", "--fed_local_steps=20", *ADAMW, f"--fed_rounds={ROUNDS // 2}", "--fed_update_bits=8"]),
    "lora-from-base": ("FedAvg E=20 AdamW from the public base, LoRA r=8 on q,v only", [
        f"--init_from={BASE}", "--peft=lora", "--lora_r=8", "--lora_targets=c_attn[q,v]", "--fed_local_opt=adamw",
        "--learning_rate=1e-2", "--fed_local_steps=20", f"--fed_rounds={ROUNDS // 2}"]),
}
SGD_ROWS = ["fedsgd", "fedsgd-full", "fedavg-e5", "fedavg-e20", "fedprox-e20", "fedavg-e20-int8", "central"]
PERSONAL = 20  # the largest clients


def make_central():
    """A clients folder with one client: the pooled data (federated.py prepare's `pooled`)."""
    os.makedirs(CENTRAL, exist_ok=True)
    info = read_json(os.path.join(CLIENTS, "clients.json"))
    for name in ("pooled",):
        link = os.path.join(CENTRAL, name)
        if not os.path.exists(link):
            os.symlink(os.path.join(CLIENTS, name), link)
    with open(os.path.join(CENTRAL, "clients.json"), "w") as f:
        json.dump({"clients": [{"name": "pooled", "speaker": "everyone", "train_tokens": info["pooled_train_tokens"]}]}, f)


def fed_run(name, extra, dtype):
    """python federated.py CONFIG *extra --out_dir=out-fed/<name>, unless finished before."""
    out = os.path.join(ROOT, name)
    cmd = [sys.executable, "federated.py", CONFIG, f"--fed_rounds={ROUNDS}", f"--fed_clients={CLIENTS}",
           "--fed_client_frac=0.1", *extra, f"--out_dir={out}", f"--dtype={dtype}"]
    done = os.path.join(out, "run.json")
    if os.path.exists(done) and read_json(done)["cmd"] == cmd[1:]:
        print(f"{name}: reusing out-fed/{name}")
        return
    print(f"{name}: training -> out-fed/{name}", flush=True)
    os.makedirs(out, exist_ok=True)
    wall, _ = run_logged(cmd, out + ".log")
    with open(done, "w") as f:
        json.dump({"wall_s": wall, "cmd": cmd[1:]}, f)


def personalize(dtype):
    """The personalization runs on fedavg-e5: LoRA, and a model of the client's own."""
    info = read_json(os.path.join(CLIENTS, "clients.json"))
    largest = sorted(info["clients"], key=lambda c: -c["train_tokens"])[:PERSONAL]
    names = ",".join(c["name"] for c in largest)
    out = {}
    for tag, extra in (("lora", ["--lora_r=8", "--steps=50"]), ("alone-50", ["--lora_r=0", "--steps=50"]),
                       ("alone-300", ["--lora_r=0", "--steps=300"])):
        path = os.path.join(ROOT, f"personalize-{tag}.json")
        if not os.path.exists(path):
            print(f"personalize ({tag}) -> {os.path.relpath(path, REPO)}", flush=True)
            run_logged([sys.executable, "federated.py", "personalize", f"--out_dir={os.path.join(ROOT, 'fedavg-e20-adamw')}",
                        f"--clients={names}", f"--out={path}", *extra], path + ".log")
        out[tag] = {r["client"]: r for r in read_json(path)}
    return out


def curves(name):
    with open(os.path.join(ROOT, name, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "val_loss" in r]


def summarize(rows):
    res = []
    for name in rows:
        ev = curves(name)
        with open(os.path.join(ROOT, name, "metrics.jsonl")) as f:
            first = json.loads(f.readline())
        res.append({"row": name, "label": ROWS[name][0], "val_loss": ev[-1]["val_loss"], "val_acc": ev[-1]["val_acc"],
                    "rounds": ev[-1]["round"], "bytes_per_round": first["bytes_up_per_client"],
                    "wall_s": read_json(os.path.join(ROOT, name, "run.json"))["wall_s"],
                    "curve": [(r["round"], r["val_loss"], r["val_acc"]) for r in ev]})
    return res


def table(results, target_row):
    """The rows, with the rounds (and bytes one client sends) to reach 95% of target_row's
    final accuracy; None where target_row is not among them."""
    by = {r["row"]: r for r in results}
    if target_row not in by:
        return None
    target = 0.95 * by[target_row]["val_acc"]
    lines = [f"| row | rounds | val loss | accuracy | rounds to {100 * target:.1f}% | sent per client per round | "
             "sent by one client to the target | wall time |", "|---" * 8 + "|"]
    for r in results:
        hit = next((rnd for rnd, _, acc in r["curve"] if acc >= target), None)
        r.setdefault("rounds_to_target", {})[target_row] = hit
        to_target = f"{hit * r['bytes_per_round'] / 1e6:.1f} MB" if hit else "-"
        lines.append(f"| {r['label']} | {r['rounds']} | {r['val_loss']:.4f} | {100 * r['val_acc']:.1f}% | "
                     f"{hit or 'not reached'} | {r['bytes_per_round'] / 1e3:.0f} kB | {to_target} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def personal_table(p):
    lines = ["| client | training chars | global model | + its own LoRA (50 steps) | alone, 50 steps | alone, 300 steps |",
             "|---" * 6 + "|"]
    for name, r in p["lora"].items():
        lines.append(f"| {name} | {r['train_tokens']:,} | {r['before']:.4f} | {r['after']:.4f} | "
                     f"{p['alone-50'][name]['after']:.4f} | {p['alone-300'][name]['after']:.4f} |")
    return "\n".join(lines)


def plot(results, p, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in results:
        a.plot([x[0] for x in r["curve"]], [x[2] for x in r["curve"]], label=r["label"])
        b.plot([x[0] for x in r["curve"]], [x[1] for x in r["curve"]], label=r["label"])
    a.set_xscale("log")
    a.set_xlabel("communication rounds")
    a.set_ylabel("next-character accuracy (pooled val)")
    b.set_xscale("log")
    b.set_xlabel("communication rounds")
    b.set_ylabel("val loss")
    b.legend(fontsize=6)
    if p:
        gains = [r["before"] - r["after"] for r in p["lora"].values()]
        c.hist(gains, bins=10)
        c.set_xlabel("val loss gain from the client's own LoRA (global - personalized)")
        c.set_ylabel("clients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, {**ROWS, "personalize": None}, ROOT,
                            plot=os.path.join(REPO, "docs", "federated.png"))
    if not os.path.exists(os.path.join(CLIENTS, "clients.json")):
        import subprocess

        import tempfile

        from harness import prepared_text

        with tempfile.TemporaryDirectory() as tmp:  # the text: --input, beside prepare.py, or rebuilt from the prepared data
            text = args.input or (os.path.join(REPO, "data", "shakespeare_char", "input.txt")
                                  if os.path.exists(os.path.join(REPO, "data", "shakespeare_char", "input.txt"))
                                  else prepared_text(tmp))
            subprocess.run([sys.executable, "federated.py", "prepare", f"--input={text}"], cwd=REPO, check=True)
    make_central()
    if any(r.endswith("from-base") for r in rows):
        train_run("base", BASE, ["--dataset=shakespeare_clients/public", "--max_iters=600", "--eval_interval=200",
                                 "--eval_iters=40", "--learning_rate=3e-3", "--warmup_iters=50", "--batch_size=16"],
                  CONFIG, args.dtype)
    for name in rows:
        if name != "personalize":
            fed_run(name, ROWS[name][1], args.dtype)
    results = summarize([r for r in rows if r != "personalize"])
    sgd = table([r for r in results if r["row"] in SGD_ROWS], "central")
    adamw = table([r for r in results if r["row"] not in SGD_ROWS], "full-from-base")
    for md in (sgd, adamw):
        if md:
            print()
            print(md)
    p = personalize(args.dtype) if "personalize" in rows else None
    if p:
        print()
        print(personal_table(p))
    if args.plot and sgd:
        plot(results, p, args.plot)
    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump({"rows": results, "sgd_table": sgd, "adamw_table": adamw, "personalize": p}, f, indent=1)


if __name__ == "__main__":
    main()
