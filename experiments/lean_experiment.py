"""
The parameter-lean experiment as one ablation table and one plot, in the Smol Training
Playbook's style: on BPE-tokenized tiny shakespeare (4,096 tokens, where the embedding
table is a third of a small model), where the parameters go and what each choice costs.

    python experiments/lean_experiment.py --dtype=float32     # every row, ~17 min on 2 CPU cores
    python experiments/lean_experiment.py --rows baseline,fact64
    python experiments/lean_experiment.py --dtype=float32 --rows seeds    # baseline, gqa, mqa at seed 2 (~4 min)

Rows (configs/lean_shakespeare_bpe.py plus the row's keys: 4 layers, 192 wide, block 128,
batch 8, 500 steps, the same data order; each in its own process):
  baseline          GPT-2's layout: 2.56M parameters, 0.79M of them the embedding table
  fact32, fact64    ALBERT's factorized embedding, emb_dim 32 / 64
  share-all         ALBERT's one block run at all 4 layers (a quarter of the block parameters)
  share-all-wide    the same at the baseline's parameters: 320 wide
  immediate         MobileLLM's repetition: 8 layers run from 4 stored blocks (the baseline's
                    parameters, twice its compute)
  gqa, mqa          3 key/value heads for 6 query heads; 1 (multi-query)
  rope, nope        rotary positions; none at all
  deep-thin         8 layers, 144 wide (the baseline's parameters)
  wide-shallow      2 layers, 256 wide (the same)
  char, char-fact32 the baseline and emb_dim 32 on the character data (65 tokens): where the
                    table is small, factorizing saves almost nothing
  seeds (not in the default run): baseline, gqa, mqa with --seed=2

Columns: stored parameters (what the checkpoint holds) and the embedding's share; val loss
after the same steps and its difference from the baseline; tokens/s; KV-cache bytes per
token in fp32 (layers run x 2 x key/value heads x head size x 4); and for the positional
rows the val loss at twice the training context (block 256), which a learned table
cannot run at. The plot (docs/lean.png) shows val loss against stored parameters.
"""

import os
import statistics

from harness import REPO, parse_args, prepare_data, pyplot, read_metrics, run_rows
from errors import cli  # the repo's, through the root that harness put on sys.path

ROOT = os.path.join(REPO, "out-lean")
CONFIG = "configs/lean_shakespeare_bpe.py"
BPE = os.path.join(REPO, "data", "shakespeare_bpe4096")
CHAR = ["--dataset=shakespeare_char"]
ROWS = {
    "baseline": [],
    "fact32": ["--emb_dim=32"],
    "fact64": ["--emb_dim=64"],
    "share-all": ["--share_layers=all"],
    "share-all-wide": ["--share_layers=all", "--n_embd=320", "--n_head=10"],
    "immediate": ["--share_layers=immediate", "--n_layer=8"],
    "gqa": ["--n_kv_head=3"],
    "mqa": ["--n_kv_head=1"],
    "rope": ["--pos_emb=rope"],
    "nope": ["--pos_emb=none"],
    "deep-thin": ["--n_layer=8", "--n_embd=144", "--n_head=6"],
    "wide-shallow": ["--n_layer=2", "--n_embd=256", "--n_head=8"],
    "char": CHAR,
    "char-fact32": CHAR + ["--emb_dim=32"],
}
GROUPS = {"default": list(ROWS)}
for name in ("baseline", "gqa", "mqa"):  # differences below 0.02 nats: a second seed
    ROWS[f"{name}-seed2"] = ROWS[name] + ["--seed=2"]
GROUPS["seeds"] = [r for r in ROWS if r.endswith("-seed2")]


def summarize(name, out_dir):
    import torch

    from batches import load_dataset
    from checkpoint import read_checkpoint, restore_model
    from step import estimate_loss

    rows = read_metrics(out_dir)
    evals = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    ckpt = read_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    mc = ckpt["model_config"]
    model = restore_model(ckpt, "lean_experiment.py", dropout=0.0).eval()
    stored = sum(p.numel() for p in model.parameters())
    table = model.transformer.wte.weight.numel() + (model.transformer.emb_proj.weight.numel()
                                                      if "emb_proj" in model.transformer else 0)
    hs = mc["n_embd"] // mc["n_head"]
    out = {"row": name, "stored_params": stored, "embedding_params": table,
           "val_loss": evals[-1]["val_loss"], "evals": [(r["iter"], r["val_loss"]) for r in evals],
           "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train_rows[1:]),
           "kv_bytes_per_token": mc["n_layer"] * 2 * (mc.get("n_kv_head") or mc["n_head"]) * hs * 4,
           "pos_emb": mc.get("pos_emb", "learned"), "val_at_2x": None}
    if out["pos_emb"] != "learned":  # no position table: evaluate at twice the training context
        config = ckpt["config"]
        train_data, val_data, _ = load_dataset(config["dataset"])
        model.config.block_size = 2 * mc["block_size"]
        with torch.no_grad():
            out["val_at_2x"] = estimate_loss(model, {"val": val_data}, config["batch_size"], 2 * mc["block_size"],
                                             config["eval_iters"], "cpu", torch.autocast("cpu", enabled=False),
                                             config["seed"])["val"]
    return out


def table(results):
    by = {r["row"]: r for r in results}
    lines = ["| row | stored params | embedding share | val loss | vs baseline | tokens/s | KV bytes/token | "
             "val loss at 2x context |", "|---" * 8 + "|"]
    for r in results:
        base = by.get("char" if r["row"].startswith("char") else
                      "baseline-seed2" if r["row"].endswith("-seed2") else "baseline")
        diff = f"{r['val_loss'] - base['val_loss']:+.4f}" if base and base is not r else "-"
        at2 = f"{r['val_at_2x']:.4f}" if r["val_at_2x"] is not None else ("cannot run (learned table)"
                                                                           if r["row"] == "baseline" else "-")
        lines.append(f"| {r['row']} | {r['stored_params'] / 1e6:.3f}M | {100 * r['embedding_params'] / r['stored_params']:.0f}% | "
                     f"{r['val_loss']:.4f} | {diff} | {r['tokens_per_sec']:,.0f} | {r['kv_bytes_per_token']:,} | {at2} |")
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        if not r["row"].startswith("char"):
            ax.scatter(r["stored_params"] / 1e6, r["val_loss"])
            ax.annotate(r["row"], (r["stored_params"] / 1e6, r["val_loss"]), fontsize=8, xytext=(4, 2),
                        textcoords="offset points")
    ax.set_xlabel("stored parameters (M)")
    ax.set_ylabel("val loss after 500 steps")
    ax.set_title("BPE-4096 tiny shakespeare: where the parameters go")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


@cli
def main(argv=None):
    args, rows = parse_args(argv, __doc__, ROWS, ROOT, plot=os.path.join(REPO, "docs", "lean.png"), groups=GROUPS)
    prepare_data(args.input, bpe_out=BPE)  # data/shakespeare_bpe4096
    run_rows(args, rows, ROWS, ROOT, CONFIG, summarize, table, plot)


if __name__ == "__main__":
    main()
