"""
Generate text from a trained checkpoint.

    python sample.py --out_dir=out-quickstart
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --temperature=0.8 --top_k=200 --seed=7

The checkpoint carries its tokenizer (the dataset's meta.json), so nothing but out_dir/ckpt.pt
is read. Same --seed, same checkpoint, same output.
"""

import argparse
import sys

import torch

from model import GPT, GPTConfig
from tokenizer import tokenizer_from_meta
from train import UserError, read_checkpoint


def load_model(out_dir, device="cpu"):
    """(model in eval mode, tokenizer) from out_dir/ckpt.pt."""
    ckpt = read_checkpoint(f"{out_dir}/ckpt.pt", why="sample.py")
    model = GPT(GPTConfig(**{**ckpt["model_config"], "dropout": 0.0}))
    model.load_state_dict(ckpt["model"])
    model.eval().to(device)
    return model, tokenizer_from_meta(ckpt["meta"])


def generate_text(model, tok, start, num_samples, max_new_tokens, temperature, top_k, seed, device="cpu"):
    """A list of num_samples strings, each the prompt followed by its continuation."""
    ids = tok.encode(start) if start else [0]  # no prompt: start from token 0, as nanoGPT's "\n"
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
        out.append(tok.decode(y[0].tolist()))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out_dir", default="out", help="run folder holding ckpt.pt")
    p.add_argument("--start", default="\n", help='prompt text, or FILE:path to read it from a file')
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="<1 sharper, >1 more random, 0 greedy")
    p.add_argument("--top_k", type=int, default=200, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        start = args.start
        if start.startswith("FILE:"):
            path = start[len("FILE:"):]
            try:
                with open(path, encoding="utf-8") as f:
                    start = f.read()
            except OSError as e:
                raise UserError(f"--start=FILE:{path}: cannot read it ({e.strerror})") from None
        if args.temperature < 0:
            raise UserError(f"--temperature={args.temperature} must be >= 0")
        model, tok = load_model(args.out_dir, args.device)
        try:
            texts = generate_text(model, tok, start, args.num_samples, args.max_new_tokens, args.temperature,
                                  args.top_k or None, args.seed, args.device)
        except (KeyError, ValueError) as e:  # a prompt character outside the tokenizer's vocabulary
            raise UserError(f"cannot encode the prompt: {e}") from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for text in texts:
        print(text)
        print("---------------")


if __name__ == "__main__":
    main()
