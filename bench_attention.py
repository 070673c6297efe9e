"""
Sparse attention and the KV cache, measured: the attention kinds alone (forward + backward
time and peak tensor memory as T grows), and generation with and without the KV cache.

    python bench_attention.py                   # both tables: ~2 minutes on 2 CPU cores
    python bench_attention.py --attention       # the attention kinds alone, T = 256 .. 8192
    python bench_attention.py --attention --attention_T=256,1024 --attn_window=64
    python bench_attention.py --generate        # generation tokens/s with and without the KV cache
    python bench_attention.py --generate --generate_tokens=100,1000 --generate_attention=full

--attention times attention.attend alone (no projections, no model) on q, k, v of one
shape, (B, H, T, hs) = --attention_shape, for full (fused SDPA, is_causal), sliding at each
--attn_window and blocksparse (--attn_block, --attn_summary), and fits each kind's growth
exponent k (time ~ T^k): full's should approach 2, the sparse kinds' 1 (blocksparse turns
quadratic again once T / block * summary passes block; attention.scored_pairs). Its peak
tensor memory counts q, k, v, the output's gradient and all the step allocates.
--generate times GPT.generate on the --n_layer/--n_head/--n_embd/--block_size model (random
weights, eval, fp32, batch 1) with the KV cache and without it (the whole context recomputed
per token), from the same seed, and stops if the two paths' tokens differ.

The timing and memory helpers are bench.py's (step_seconds, step_peak_bytes).
"""

import argparse
import dataclasses
import json
import math
import time

from bench import _threads, ints, step_peak_bytes, step_seconds
from errors import UserError, cli

# ----------------------------------------------------------------------------------------
# the attention kinds alone (--attention)


def attention_columns(windows, block, summary):
    """name -> (kind, window, block, summary): full, sliding at each window, blocksparse."""
    cols = {"full": ("full", 0, 0, 0)}
    cols.update({f"sliding{w}": ("sliding", w, 0, 0) for w in windows})
    cols["blocksparse"] = ("blocksparse", 0, block, summary)
    return cols


def attention_row(T, shape, columns, steps, warmup, device="cpu"):
    """One T: each column's fastest forward+backward seconds (the least disturbed by other
    work on the machine), peak tensor bytes and scored pairs (attention.scored_pairs, per
    sequence and head), on q, k, v of shape (B, H, T, hs)."""
    import torch

    from attention import attend, scored_pairs

    B, H, hs = shape
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hs, generator=g, device=device, requires_grad=True) for _ in range(3))
    dy = torch.randn(B, H, T, hs, generator=g, device=device)  # the output's gradient
    row = {"T": T, "s": {}, "peak_bytes": {}, "pairs": {}}
    for name, (kind, window, block, summary) in columns.items():
        def step():  # the gradients are returned, not kept in .grad: nothing outlives the step
            torch.autograd.grad(attend(q, k, v, kind, window, block, summary), (q, k, v), dy)

        row["s"][name] = step_seconds(step, steps, warmup, device)[0]
        row["peak_bytes"][name] = step_peak_bytes(step, 4 * q.nbytes, device)  # on top of q, k, v, dy
        row["pairs"][name] = scored_pairs(T, kind, window, block, summary)
    return row


def bench_attention(Ts, shape, windows, block, summary, steps, warmup, device="cpu"):
    """The table of attention_row over Ts, then each column's growth exponents."""
    cols = attention_columns(windows, block, summary)
    B, H, hs = shape
    print(f"attention alone: q, k, v of shape (B={B}, H={H}, T, hs={hs}), fp32, {device}, forward + backward "
          f"(fastest of {steps} after {warmup} warm-up), torch threads: {_threads()}")
    print(f"full: fused SDPA, is_causal; sliding: window {', '.join(map(str, windows))}; "
          f"blocksparse: block {block}, summary {summary}")
    print("| T | full ms | " + " | ".join(f"{c} ms (x full)" for c in list(cols)[1:]) + " | "
          + " | ".join(f"{c} peak MiB" for c in cols) + " |")
    print("|---" * (2 * len(cols) + 1) + "|")
    rows = []
    for T in Ts:
        r = attention_row(T, shape, cols, steps, warmup, device)
        full = r["s"]["full"]
        times = [f"{1000 * full:.1f}"] + [f"{1000 * t:.1f} ({t / full:.2f}x)" for c, t in r["s"].items() if c != "full"]
        mem = [f"{b / 2**20:,.1f}" for b in r["peak_bytes"].values()]
        print(f"| {T:,} | " + " | ".join(times + mem) + " |", flush=True)
        rows.append(r)
    last = rows[-1]
    print(f"\nscored pairs per sequence and head at T={last['T']:,}, relative to full: "
          + ", ".join(f"{c} {p / last['pairs']['full']:.3f}" for c, p in last["pairs"].items() if c != "full"))
    if len(rows) > 1:
        print("growth exponent k (time or peak memory ~ T^k): between the two largest T, and the "
              "least-squares slope of log-log over all T")
        print("| | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        Ts, two = [r["T"] for r in rows], rows[-2:]
        for what, key in (("time", "s"), ("peak memory", "peak_bytes")):
            spans = [(f"T={two[0]['T']:,}..{two[1]['T']:,}", two)]
            if len(rows) > 2:
                spans.append((f"T={Ts[0]:,}..{Ts[-1]:,}, fitted", rows))
            for span, rs in spans:
                ks = [growth_exponent([r["T"] for r in rs], [r[key][c] for r in rs]) for c in cols]
                print(f"| {what}, {span} | " + " | ".join(f"{k:.2f}" for k in ks) + " |")
    return rows


# ----------------------------------------------------------------------------------------
# generation with and without the KV cache (--generate)


def generate_row(model, n, seed=0, device="cpu"):
    """Seconds to sample n tokens after a one-token prompt with the KV cache and with the
    context recomputed per token (same seed), and whether both gave the same tokens."""
    import torch

    idx = torch.zeros(1, 1, dtype=torch.long, device=device)
    out = {}
    for kv_cache in (True, False):
        g = torch.Generator(device=device).manual_seed(seed)
        t0 = time.perf_counter()
        y = model.generate(idx, n, temperature=1.0, generator=g, kv_cache=kv_cache)
        if device != "cpu":
            torch.cuda.synchronize()
        out[kv_cache] = (time.perf_counter() - t0, y)
    return {"tokens": n, "s_cache": out[True][0], "s_recompute": out[False][0],
            "identical": torch.equal(out[True][1], out[False][1])}


def bench_generate(mc, token_counts, kinds, device="cpu"):
    """The table of generate_row for each attention kind (mc with that kind, the same
    weights: a kind has none of its own) and token count."""
    import torch

    from model import GPT

    torch.manual_seed(0)
    base = GPT(mc)
    print(f"generation: {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, block {mc.block_size}, "
          f"vocab {mc.vocab_size}, random weights, eval, fp32, batch 1, one-token prompt, sampled at "
          f"temperature 1 from a seeded generator, {device}, torch threads: {_threads()}")
    print("| attention | new tokens | KV cache tokens/s | recomputed tokens/s | speedup | same tokens |")
    print("|---" * 6 + "|")
    rows = []
    for kind in kinds:
        model = GPT(dataclasses.replace(mc, attention=kind))
        model.load_state_dict(base.state_dict())
        model.eval().to(device)
        name = {"full": "full", "sliding": f"sliding (window {mc.attn_window})",
                "blocksparse": f"blocksparse (block {mc.attn_block}, summary {mc.attn_summary})"}[kind]
        generate_row(model, 4, device=device)  # warm-up
        for n in token_counts:
            r = {"attention": kind, **generate_row(model, n, device=device)}
            assert r["identical"], f"attention={kind}, {n} tokens: the KV cache and the recomputed context differ"
            print(f"| {name} | {n:,} | {n / r['s_cache']:,.1f} | {n / r['s_recompute']:,.1f} | "
                  f"{r['s_recompute'] / r['s_cache']:.1f}x | yes |", flush=True)
            rows.append(r)
    print("both paths gave identical tokens in every row (same seed)")
    return rows


def growth_exponent(Ts, values):
    """k in value ~ T^k: the least-squares slope of log(value) on log(T); for two points
    exactly log(v2 / v1) / log(T2 / T1)."""
    x, y = [math.log(t) for t in Ts], [math.log(v) for v in values]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)




# ----------------------------------------------------------------------------------------
# the command


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="time the attention kinds alone and generation with the KV cache")
    p.add_argument("--attention", action="store_true",
                   help="only the attention kinds alone (forward + backward, peak tensor memory)")
    p.add_argument("--attention_T", default="256,512,1024,2048,4096,8192", help="--attention: sequence lengths")
    p.add_argument("--attention_shape", default="4,4,32",
                   help="--attention: batch, heads, head size of q, k, v (4,4,32: the 128-wide model's heads)")
    p.add_argument("--attn_window", default="128,256",
                   help="sliding windows: --attention times each, --generate the first")
    p.add_argument("--attn_block", default="128", help="blocksparse block length")
    p.add_argument("--attn_summary", default="8", help="blocksparse: summary positions per block, 0..attn_block")
    p.add_argument("--generate", action="store_true",
                   help="only generation with and without the KV cache, on the --n_layer.. model")
    p.add_argument("--generate_tokens", default="100,500,1000", help="--generate: new-token counts")
    p.add_argument("--generate_attention", default="full,sliding",
                   help="--generate: attention kinds, from full, sliding, blocksparse")
    p.add_argument("--n_layer", type=int, default=6, help="--generate: the model (nanoGPT's Shakespeare size)")
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="--attention: timed steps (the fastest reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if not (args.attention or args.generate):
        args.attention = args.generate = True
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps={args.steps} must be >= 1 and --warmup={args.warmup} >= 0")
    out = {"args": vars(args)}
    windows = ints("--attn_window", args.attn_window)
    block = ints("--attn_block", args.attn_block, count=1)[0]
    summary = ints("--attn_summary", args.attn_summary, low=0, count=1)[0]
    if summary > block:
        raise UserError(f"--attn_summary={summary} must be in [0, --attn_block={block}]")
    if args.attention:
        Ts = sorted(set(ints("--attention_T", args.attention_T)))
        shape = ints("--attention_shape", args.attention_shape, count=3)
    if args.generate:  # every value checked before either table starts
        from attention import KINDS
        from model import GPTConfig

        counts = ints("--generate_tokens", args.generate_tokens)
        kinds = [k.strip() for k in args.generate_attention.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise UserError(f"--generate_attention={args.generate_attention}: choose from {', '.join(KINDS)}")
        try:
            mc = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                           block_size=args.block_size, vocab_size=65, attn_window=windows[0],
                           attn_block=block, attn_summary=summary)
        except ValueError as e:  # e.g. n_embd not a multiple of n_head
            raise UserError(str(e)) from None
    if args.attention:
        out["attention_rows"] = bench_attention(Ts, shape, list(dict.fromkeys(windows)), block, summary,
                                                args.steps, args.warmup, args.device)
    if args.generate:
        if args.attention:
            print()
        out["generate_rows"] = bench_generate(mc, counts, list(dict.fromkeys(kinds)), args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
