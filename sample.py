r"""
Generate text from a trained checkpoint: a pretrained or fully fine-tuned run, a PEFT run
(its base is loaded and its PEFT tensors put on top, transparently), or several PEFT runs
that share one base, switched without reading the base again.

    python sample.py --out_dir=out-quickstart
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --temperature=0.8 --top_k=200 --seed=7
    python sample.py --adapters=out-peft/lora-gloucester,out-peft/lora-juliet --num_samples=1

A checkpoint carries its tokenizer (the dataset's meta.json), so nothing but out_dir/ckpt.pt
(and, for a PEFT run, the base checkpoint it names) is read. Same --seed, same output.

Each sample is printed with its prompt. The default prompt is a newline, as nanoGPT's, and
an empty one (--start="") is that newline too: same seed, same output, each sample
beginning with a blank line. (In bash, --start="\n" is a backslash and an n; a newline is
--start=$'\n'.) Every vocabulary trained on lines of text has the newline; a char
vocabulary without one asks for a --start. Bad flags (--top_k < 0, --num_samples < 1,
--max_new_tokens < 1, a --temperature that is negative, nan or inf, a --kv_cache other than
True or False) are one-line errors, found before any checkpoint is read.

--kv_cache (on by default) keeps each layer's keys and values, so each new token runs alone
through the model (model.py's GPT.generate, attention.KVCache); --kv_cache=False
recomputes the whole context for every token, for comparison (bench_attention.py --generate times
both). Both give the same tokens: same --seed, same text.
"""

import argparse
import copy
import math
import os
from dataclasses import asdict

import torch

from checkpoint import PEFT_KEYS, read_base_checkpoint, read_checkpoint, restore_model
from errors import UserError, cli
from peft import PEFTConfig, apply_peft, load_peft_state_dict
from distill import teacher_log_likelihood
from tokenizer import same_tokenizer, tokenizer_from_meta


def load_model(out_dir, device="cpu"):
    """(model in eval mode, tokenizer) from out_dir/ckpt.pt; a PEFT run comes with its base."""
    ckpt = read_checkpoint(os.path.join(out_dir, "ckpt.pt"), why="sample.py")
    model = restore_model(ckpt, "sample.py", dropout=0.0)
    model.eval().to(device)
    return model, tokenizer_from_meta(ckpt["meta"])


def load_adapters(run_dirs, device="cpu"):
    """Yield (run_dir, model, tokenizer) for PEFT runs trained on one base, one run at a time.
    The base checkpoint is read once. Runs with the same PEFT settings share one wrapped
    model, and switching between them loads only their PEFT tensors (a few KB to MB);
    each distinct setting gets its own in-memory copy of the base."""
    ckpts = {}
    for d in run_dirs:
        ckpts[d] = read_checkpoint(os.path.join(d, "ckpt.pt"), why="sample.py --adapters")
        if "peft_base" not in ckpts[d]:
            raise UserError(f"--adapters: {d} is not a PEFT run (no base recorded); sample it with --out_dir={d}")
    first = ckpts[run_dirs[0]]
    for d, c in ckpts.items():
        if c["peft_base"]["sha256"] != first["peft_base"]["sha256"]:
            raise UserError(f"--adapters: {d} was trained on another base ({c['peft_base']['path']}) than "
                            f"{run_dirs[0]} ({first['peft_base']['path']}); sample them in separate calls")
    base = restore_model(read_base_checkpoint(first["peft_base"], "sample.py --adapters"), "sample.py", dropout=0.0)
    settings = {d: PEFTConfig(**{k: c["config"][k] for k in PEFT_KEYS}) for d, c in ckpts.items()}
    keys = {d: (tuple(asdict(settings[d]).items()), c["model_config"]["block_size"]) for d, c in ckpts.items()}
    wrapped = {}  # (PEFT settings, block_size) -> the base with that surgery
    for d, c in ckpts.items():
        if keys[d] not in wrapped:
            model = base if len(set(keys.values())) == 1 else copy.deepcopy(base)
            if c["model_config"]["block_size"] < model.config.block_size:
                model.crop_block_size(c["model_config"]["block_size"])
            wrapped[keys[d]] = apply_peft(model, settings[d]).eval().to(device)
        model = load_peft_state_dict(wrapped[keys[d]], c["model"])  # the switch: these tensors only
        yield d, model, tokenizer_from_meta(c["meta"])


EMPTY_PROMPT = "\n"  # what an empty prompt starts from: a line break, nanoGPT's default prompt


def generate_text(model, tok, start, num_samples, max_new_tokens, temperature, top_k, seed, device="cpu",
                  kv_cache=True):
    """A list of num_samples strings, each the prompt followed by its continuation. An empty
    prompt is EMPTY_PROMPT, in the text too: the model needs a token to condition on, and
    token 0 is no choice (in a byte-level BPE it is the NUL byte). kv_cache=False recomputes
    the whole context for every token (the same text, slower)."""
    try:
        ids = tok.encode(start or EMPTY_PROMPT)
    except ValueError:
        if start:
            raise  # a character of the user's prompt; main() names it
        # a char vocabulary from text without line breaks
        raise UserError("this checkpoint's tokenizer cannot encode a newline, the start of an empty prompt; "
                        "give a prompt with --start=TEXT") from None
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                           kv_cache=kv_cache)
        out.append(tok.decode(y[0].tolist()))
    return out


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.strip().split("\n\n")[0].split()))  # 1st paragraph
    p.add_argument("--out_dir", default="out", help="run folder holding ckpt.pt")
    p.add_argument("--adapters", default=None,
                   help="comma-separated PEFT run folders on one base: sample each in turn (instead of --out_dir)")
    p.add_argument("--start", default=EMPTY_PROMPT,
                   help="prompt text, or FILE:path to read it from a file; empty = a newline (the default), "
                        "printed with the sample like any prompt")
    p.add_argument("--num_samples", type=int, default=3, help="samples to print, >= 1")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens added to the prompt, >= 1")
    p.add_argument("--temperature", type=float, default=0.8, help="<1 sharper, >1 more random, 0 greedy")
    p.add_argument("--top_k", type=int, default=200, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score_with", default=None,
                   help="a run folder (a teacher): print its mean log-probability per generated token of each "
                        "sample (distill.teacher_log_likelihood; higher = more like the teacher's own text)")
    p.add_argument("--kv_cache", default="True",
                   help="True (default): keep each layer's keys and values and run only the new token through "
                        "the model; False: recompute the whole context for every token, for comparison. "
                        "Both give the same tokens")
    args = p.parse_args(argv)
    # the flags' domains, checked before any checkpoint is read ("not inside": a nan fails too)
    if args.top_k < 0:
        raise UserError(f"--top_k={args.top_k} must be >= 0 (0 samples from the whole vocabulary)")
    if args.num_samples < 1:
        raise UserError(f"--num_samples={args.num_samples} must be >= 1")
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens={args.max_new_tokens} must be >= 1 "
                        f"(each sample adds at least one token to the prompt)")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature={args.temperature} must be a finite number >= 0 (0 is greedy)")
    if args.kv_cache.lower() not in ("true", "false"):  # train.py's bool keys take the same spellings
        raise UserError(f"--kv_cache={args.kv_cache} must be True or False")
    kv_cache = args.kv_cache.lower() == "true"
    start = args.start
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        try:
            with open(path, encoding="utf-8") as f:
                start = f.read()
        except OSError as e:
            raise UserError(f"--start=FILE:{path}: cannot read it ({e.strerror})") from None
    if args.adapters:
        runs = load_adapters([d for d in args.adapters.split(",") if d], args.device)
    else:
        runs = [(None, *load_model(args.out_dir, args.device))]
    judge = load_model(args.score_with) if args.score_with else None  # (teacher, its tokenizer)
    for run_dir, model, tok in runs:
        if judge is not None and not same_tokenizer(judge[1].to_meta(), tok.to_meta()):
            raise UserError(f"--score_with={args.score_with} has another tokenizer than the sampled model")
        try:
            texts = generate_text(model, tok, start, args.num_samples, args.max_new_tokens, args.temperature,
                                  args.top_k or None, args.seed, args.device, kv_cache)
        except (KeyError, ValueError) as e:  # a prompt character outside the tokenizer's vocabulary
            raise UserError(f"cannot encode the prompt: {e}") from None
        if run_dir is not None:
            print(f"=============== {run_dir}")
        n_prompt = len(tok.encode(start or EMPTY_PROMPT))
        scores = []
        for text in texts:
            print(text)
            if judge is not None:
                score, n = teacher_log_likelihood(judge[0], tok.encode(text), n_prompt)
                scores.append(score)
                print(f"[{args.score_with} log-likelihood per generated token: {score:.4f} over {n} tokens]")
            print("---------------")
        if len(scores) > 1:
            print(f"[mean over {len(scores)} samples: {sum(scores) / len(scores):.4f}]")


if __name__ == "__main__":
    main()
