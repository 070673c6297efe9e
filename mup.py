"""
muP, the maximal-update parameterization (Yang et al. 2022, "Tensor Programs V: Tuning
Large Neural Networks via Zero-Shot Hyperparameter Transfer", TP5 below): how this GPT's
init, multipliers and Adam learning rates change with width, so that the best learning
rate found on a narrow model is the best one for a wide model too. And the coordinate
check that tests it.

    python train.py configs/hparam_char.py --mup=True --mup_base_width=128 --n_embd=512
    python mup.py                          # coordinate check: a table and docs/mup_coord.png (~20 s)

The rules live where they act (model.py and step.make_optimizer); here they are in one
table. width_mult = n_embd / mup_base_width; at width_mult = 1 every rule is the identity,
so a muP model at its base width is the standard (GPT-2) model exactly, bit for bit.

| # | tensor (this GPT)                            | standard (GPT-2)          | muP                                          | TP5           |
|---|----------------------------------------------|---------------------------|----------------------------------------------|---------------|
| 1 | input: wte (tied), wpe; LayerNorm gains, biases | init N(0, 0.02), LR eta | unchanged: init and LR constant in width    | Table 3, 8; "input weights & all biases" |
| 2 | hidden: c_attn, c_proj, c_fc in every block   | init std 0.02 (c_proj 0.02/sqrt(2L)), LR eta | init std x width_mult^-1/2 (variance ~ 1/fan_in), Adam LR eta / width_mult | Table 3 (Adam), "hidden weights" |
| 3 | output: the logits, lm_head = wte (tied)      | logits = W h              | logits = W h / width_mult (init and LR of W constant) | Table 8: the output multiplier form of Table 3's readout rule |
| 4 | attention logits                              | q.k / sqrt(d)             | q.k * sqrt(d_base) / d, i.e. 1/d              | section 4 ("attention logit ... 1/d") |

Why (TP5 section 5 in short): under Adam every entry of a matrix moves by about the
learning rate each step, whatever the width. A hidden matrix's update dW then changes its
output dW x by ~ lr * fan_in (fan_in coordinates of x add up coherently), so a fixed LR
makes the activations' updates grow with width (rule 2 divides the LR by it). The readout
sums n_embd coordinates of h that are themselves correlated with W after training, so its
output grows ~ width (rule 3 divides it back). In attention, q and k become correlated as
they train, so q.k grows ~ d, not sqrt(d) (rule 4). Inputs have a fixed fan_in (a one-hot
token), so their rules do not change (rule 1).

Weight tying fits rule 1 and rule 3 at once: the multiplier form (TP5 Table 8, the one the
`mup` package uses for a shared readout) keeps the output matrix's init and LR constant,
which is what the input embedding asks for too. Decoupled weight decay follows the LR
(AdamW multiplies by 1 - lr * wd), so a hidden matrix decays width_mult times slower, as
with the `mup` package's MuAdam. Not covered: MoE routers and ALBERT's factorized embedding
(each has one side that does not grow with width; GPTConfig refuses them with mup=True).

The coordinate check (TP5 appendix D.1 and the `mup` package's coord check): train models
of several widths for a few steps at one learning rate and watch the mean |x| of each
layer's output coordinates. Under muP it stays flat across widths; under the standard
parameterization it grows with width, first at the logits (tests/test_mup.py asserts both).
"""

import argparse
import os

import torch

from model import GPT, GPTConfig

# ----------------------------------------------------------------------------------------
# the coordinate check


def coord_check(widths, mup, base_width, steps=4, lr=1e-2, n_layer=2, n_head=4, block_size=32, batch_size=8,
                vocab_size=65, seed=0):
    """Train a GPT of each width for `steps` Adam steps (constant lr, no decay, no clip) on
    one fixed batch of random tokens, and return {width: {layer: mean |coordinate| after the
    last step}} for layers "embedding" (token + position), "block i" (the residual stream after
    block i) and "logits". The same batch and seed at every width: only the width differs."""
    from step import make_optimizer
    from config import TrainConfig

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    y = torch.randint(0, vocab_size, (batch_size, block_size), generator=g)
    out = {}
    for width in widths:
        torch.manual_seed(seed)
        config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=width, block_size=block_size,
                           vocab_size=vocab_size, mup=mup, mup_base_width=base_width if mup else 0)
        model = GPT(config)
        opt = make_optimizer(model, TrainConfig(learning_rate=lr, weight_decay=0.0))
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        sizes = {}
        hooks = [model.transformer.h[i].register_forward_hook(_record(sizes, f"block {i}")) for i in range(n_layer)]
        hooks.append(model.lm_head.register_forward_hook(_record(sizes, "logits")))
        hooks.append(model.transformer.h[0].register_forward_pre_hook(
            lambda m, args: sizes.__setitem__("embedding", args[0].abs().mean().item())))
        for _ in range(steps):
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model(x)  # the sizes after the last step
        for h in hooks:
            h.remove()
        out[width] = dict(sizes)
    return out


def _record(sizes, name):
    def hook(module, args, output):
        t = output[0] if isinstance(output, tuple) else output  # a Block returns (x, aux)
        sizes[name] = t.detach().abs().mean().item()
    return hook


def growth(result):
    """{layer: size at the widest model / size at the narrowest}: ~1 under muP."""
    widths = sorted(result)
    return {k: result[widths[-1]][k] / result[widths[0]][k] for k in result[widths[0]]}


# ----------------------------------------------------------------------------------------
# the command: a table and a plot


def main(argv=None):
    ap = argparse.ArgumentParser(description="muP coordinate check: activation sizes across widths, "
                                             "standard vs muP")
    ap.add_argument("--widths", default="64,128,256,512,1024")
    ap.add_argument("--base_width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seeds", type=int, default=3, help="average the sizes over this many seeds")
    ap.add_argument("--plot", default="docs/mup_coord.png")
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    results = {}
    for name in ("standard", "muP"):
        runs = [coord_check(widths, name == "muP", args.base_width, args.steps, args.lr, seed=s)
                for s in range(args.seeds)]
        results[name] = {w: {k: sum(r[w][k] for r in runs) / len(runs) for k in runs[0][w]} for w in widths}
    layers = list(results["standard"][widths[0]])
    print(f"mean |coordinate| after {args.steps} Adam steps at lr={args.lr:g} (base width {args.base_width}; "
          f"mean of {args.seeds} seeds)")
    print(f"| param | layer | " + " | ".join(f"width {w}" for w in widths) + " | widest / narrowest |")
    print("|---|---|" + "---:|" * (len(widths) + 1))
    for name, res in results.items():
        ratio = growth(res)
        for layer in layers:
            print(f"| {name} | {layer} | " + " | ".join(f"{res[w][layer]:.3g}" for w in widths) +
                  f" | {ratio[layer]:.2f}x |")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(the plot needs matplotlib: pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (name, res) in zip(axes, results.items()):
        for layer in layers:
            ax.plot(widths, [res[w][layer] for w in widths], marker="o", label=layer)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{name}: after {args.steps} steps, lr={args.lr:g}")
        ax.set_xlabel("width (n_embd)")
    axes[0].set_ylabel("mean |coordinate|")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
