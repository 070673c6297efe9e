"""
Quantize a trained run's weights after training (weight-only post-training quantization)
into a run folder of its own, which sample.py and train.py's evaluation read like any other.

    python quantize.py --out_dir=out-shakespeare-char-cpu --bits=8 --to=out-q8
    python quantize.py --out_dir=out-shakespeare-char-cpu --bits=4 --group_size=32 --method=gptq --to=out-q4
    python sample.py --out_dir=out-q4
    python train.py --init_from=out-q4 --eval_only=True --out_dir=out-q4-eval

Every Linear of the blocks is converted (quant.quantizable: the output head shares its
weight with the embedding and stays in fp32): int8 per output channel, or int4 in groups of
--group_size input columns (two codes per byte, fp16 scales), rounded to nearest (--method=rtn)
or by GPTQ (--method=gptq, Frantar et al. 2023) on --calib_batches batches of the run's
training data. GPTQ goes through the layers in order, each one rounded against the inputs it
gets from the layers already quantized before it (the paper's sequential scheme, section 4).
The folder's ckpt.pt holds the codes, the scales, the rest of the weights in fp32, the
format ("quant") and the source run's path and sha256; its size on disk is printed beside
the fp32 weights'.
"""

import argparse
import os

import torch

from batches import calibration_batches
from checkpoint import file_sha256, read_checkpoint, restore_model, save_checkpoint
from errors import UserError, cli
from quant import QuantLinear, gptq, input_hessian, quantizable, quantize_rtn, scale_dtype, swap_in


@torch.no_grad()
def layer_inputs(model, name, batches):
    """The inputs the layer at `name` receives on the batches, as the model is now, (n, K)."""
    seen = []
    hook = model.get_submodule(name).register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        for x in batches:
            model(x)
    finally:
        hook.remove()
    return torch.cat(seen)


@torch.no_grad()
def quantize_model(model, bits, group_size, method, batches=None):
    """model (a GPT in eval mode) with every quantizable Linear replaced by a QuantLinear;
    returns the names converted. gptq needs the calibration batches."""
    names = []
    for name, layer in quantizable(model):
        w = layer.weight
        if method == "gptq":
            codes, scale = gptq(w, input_hessian(layer_inputs(model, name, batches)), bits, group_size)
        else:
            codes, scale = quantize_rtn(w, bits, group_size)
        swap_in(model, name, QuantLinear.from_codes(codes, scale, bits, group_size, layer.bias,
                                                    scale_dtype(bits, group_size)))
        names.append(name)
    return names


def quantize_run(run_dir, to_dir, bits, group_size, method, calib_batches):
    """Write to_dir/ckpt.pt: run_dir's model quantized. Returns (path, bytes of the fp32 weights)."""
    src = os.path.join(run_dir, "ckpt.pt")
    ckpt = read_checkpoint(src, why="quantize.py")
    if "peft_base" in ckpt:
        raise UserError(f"{run_dir} is a PEFT run: export it to a plain checkpoint first "
                        f"(python export.py --out_dir={run_dir} --to=DIR) and quantize that")
    if "quant" in ckpt:
        raise UserError(f"{run_dir} is already quantized (int{ckpt['quant']['bits']}); quantize its source run")
    model = restore_model(ckpt, "quantize.py", dropout=0.0).eval()
    fp32_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    k_in = {m.in_features for _, m in quantizable(model)}
    if group_size and any(k % group_size for k in k_in) or group_size % 2:
        raise UserError(f"--group_size={group_size} must be even and divide every layer's inputs ({sorted(k_in)})")
    if bits == 4 and any(k % 2 for k in k_in):
        raise UserError(f"int4 packs two columns per byte: every layer's inputs must be even ({sorted(k_in)})")
    cfg = ckpt["config"]  # GPTQ's calibration: windows of the run's own training data, drawn as it drew them
    batches = calibration_batches(cfg["dataset"], ckpt["meta"], cfg["batch_size"], model.config.block_size,
                                  calib_batches, seed=0) if method == "gptq" else None
    names = quantize_model(model, bits, group_size, method, batches)
    out = {
        "model": model.state_dict(),
        "model_config": ckpt["model_config"],
        "config": {**ckpt["config"], "init_from": "quantized"},
        "meta": ckpt["meta"],
        "iter_num": ckpt["iter_num"],
        "quant": {"bits": bits, "group_size": group_size, "method": method, "layers": names,
                  "scale_dtype": str(scale_dtype(bits, group_size)).removeprefix("torch."),
                  "calib_batches": calib_batches if method == "gptq" else 0},
        "quantized_from": {"run": os.path.abspath(run_dir), "sha256": file_sha256(src)},
    }
    os.makedirs(to_dir, exist_ok=True)
    path = os.path.join(to_dir, "ckpt.pt")
    save_checkpoint(out, path)
    return path, fp32_bytes


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.strip().split("\n\n")[0].split()))
    p.add_argument("--out_dir", required=True, help="the run folder to quantize")
    p.add_argument("--to", required=True, help="folder for the quantized checkpoint (ckpt.pt)")
    p.add_argument("--bits", type=int, default=8, help="8 (per output channel) or 4 (group-wise)")
    p.add_argument("--group_size", type=int, default=None, help="input columns per scale (default: 0 = the whole "
                                                                  "row for int8, 32 for int4)")
    p.add_argument("--method", default="rtn", help="rtn (round to nearest) or gptq")
    p.add_argument("--calib_batches", type=int, default=16, help="gptq: batches of training data (default 16)")
    a = p.parse_args(argv)
    if a.bits not in (4, 8):
        raise UserError(f"--bits={a.bits}: use 8 or 4")
    if a.method not in ("rtn", "gptq"):
        raise UserError(f"--method={a.method}: use rtn or gptq")
    group_size = (0 if a.bits == 8 else 32) if a.group_size is None else a.group_size
    if group_size < 0 or a.calib_batches < 1:
        raise UserError(f"--group_size={group_size} must be >= 0 and --calib_batches={a.calib_batches} >= 1")
    if os.path.abspath(a.to) == os.path.abspath(a.out_dir):
        raise UserError("--to must be another folder than --out_dir: the run's checkpoint stays as it is")
    path, fp32 = quantize_run(a.out_dir, a.to, a.bits, group_size, a.method, a.calib_batches)
    size = os.path.getsize(path)
    print(f"wrote {path}: int{a.bits} ({a.method}, group {group_size or 'row'}), {size / 2**20:.3f} MiB on disk, "
          f"{100 * size / fp32:.1f}% of the fp32 weights' {fp32 / 2**20:.3f} MiB")


if __name__ == "__main__":
    main()
