"""
Export a PEFT run as a plain checkpoint that loads into a bare GPT, with no PEFT code:
LoRA's updates folded into the weights (W + (alpha/r) B A), BitFit's biases kept (a
bias=False base becomes a bias=True GPT, since BitFit gave it exactly those biases).
Adapters cannot be folded (their bottleneck is nonlinear) and are refused.

    python export.py --out_dir=out-peft/lora-r8-qv --to=out-peft/lora-r8-qv-merged
    python sample.py --out_dir=out-peft/lora-r8-qv-merged     # the same tokens as --out_dir=out-peft/lora-r8-qv

The exported folder works everywhere a run folder does, except resume (it has no optimizer
state): sample.py --out_dir=..., train.py --init_from=... to fine-tune it further.
"""

import argparse
import os

from checkpoint import read_checkpoint, restore_model, save_checkpoint
from errors import UserError, cli
from model import GPT, GPTConfig
from peft import merged_state_dict


def export_merged(run_dir, to_dir):
    """Write to_dir/ckpt.pt: run_dir's PEFT model as a plain GPT checkpoint. Returns its path."""
    ckpt = read_checkpoint(os.path.join(run_dir, "ckpt.pt"), why="export.py")
    if "peft_base" not in ckpt:
        raise UserError(f"{run_dir} is not a PEFT run: its ckpt.pt is already a plain checkpoint")
    model = restore_model(ckpt, "export.py")
    try:
        state = merged_state_dict(model)
    except ValueError as e:
        raise UserError(f"cannot export {run_dir}: {e}") from None
    # a GPT has LayerNorm biases exactly when it was built with bias=True
    model_config = {**ckpt["model_config"], "bias": "transformer.ln_f.bias" in state}
    plain = GPT(GPTConfig(**model_config))
    plain.load_state_dict(state)  # strict: every key of a bare GPT, nothing else
    config = {**ckpt["config"], "peft": "none", "bias": model_config["bias"], "init_from": "exported"}
    out = {
        "model": plain.state_dict(),
        "model_config": model_config,
        "config": config,
        "meta": ckpt["meta"],
        "iter_num": ckpt["iter_num"],
        "exported_from": {"run": os.path.abspath(run_dir), "base": ckpt["peft_base"]},
    }
    os.makedirs(to_dir, exist_ok=True)
    path = os.path.join(to_dir, "ckpt.pt")
    save_checkpoint(out, path)
    return path


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.strip().split("\n\n")[0].split()))  # 1st paragraph
    p.add_argument("--out_dir", required=True, help="the PEFT run folder to export")
    p.add_argument("--to", required=True, help="folder for the plain checkpoint (ckpt.pt)")
    args = p.parse_args(argv)
    if os.path.abspath(args.to) == os.path.abspath(args.out_dir):
        raise UserError("--to must be another folder than --out_dir: the PEFT run's checkpoint stays as it is")
    path = export_merged(args.out_dir, args.to)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.2f} MiB): a plain GPT checkpoint")


if __name__ == "__main__":
    main()
