"""Grader of exercises/gpt_block.py: against model.Block's forward (a dense block of a tiny
GPTConfig), and the properties that define it: causal, input left unchanged. The usual
mistakes recognised: post-LN, a residual missing, ln_2 on the pre-attention x."""

import torch
from exercises.graders import call

CONFIG = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)


def reference():
    from types import SimpleNamespace

    from model import Block, GPTConfig

    def block_forward(x, ln_1, attn, ln_2, mlp):
        block = Block(GPTConfig(**CONFIG))
        block.ln_1, block.attn, block.ln_2, block.mlp = ln_1, attn, ln_2, mlp
        y, aux = block(x)  # a dense block: aux is None
        assert aux is None
        return y

    return SimpleNamespace(block_forward=block_forward)


def parts(seed):
    """A model.Block's parts, seeded, with LayerNorm gains (and biases) made non-trivial so
    that each mistake gives a different number."""
    from model import Block, GPTConfig

    torch.manual_seed(seed)
    block = Block(GPTConfig(**CONFIG, bias=True)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ln in (block.ln_1, block.ln_2):
            ln.weight.copy_(1 + 0.5 * torch.randn(ln.weight.shape, generator=g))
            ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=g))
    return block.ln_1, block.attn, block.ln_2, block.mlp


def close(a, b, tol=1e-5):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


def wrong_answers(x, ln_1, attn, ln_2, mlp):
    """(wrong output, hint) for the usual mistakes."""
    with torch.no_grad():
        a = attn(ln_1(x))
        h = x + a
        post_h = ln_1(x + attn(x))
        return [
            (ln_2(post_h + mlp(post_h)), "that is post-LN (the original Transformer, GPT-1): LayerNorm after the "
                                        "residual add. GPT-2's block is pre-LN: x + attn(ln_1(x)), the stream itself "
                                        "is never normalised"),
            (h + mlp(ln_2(x)), "ln_2 reads the x from before the attention: the MLP must see the updated stream, "
                               "ln_2(x + attn(ln_1(x))) (adding both branches to the old x is GPT-J's parallel "
                               "block, not GPT-2's)"),
            (mlp(ln_2(a)), "both residuals are missing: each sublayer adds to x (x = x + ...), it does not replace it"),
            (a + mlp(ln_2(a)), "the residual around the attention is missing: x = x + attn(ln_1(x))"),
            (mlp(ln_2(h)), "the residual around the MLP is missing: return x + mlp(ln_2(x))"),
            (x + mlp(ln_2(x)), "the attention sublayer is missing: x = x + attn(ln_1(x)) comes first"),
            (h, "the MLP sublayer is missing: then x = x + mlp(ln_2(x))"),
        ]


def cases(impl):
    ref = reference()
    for seed, (B, T) in ((0, (2, 8)), (1, (3, 5))):
        ln_1, attn, ln_2, mlp = parts(seed)
        x = torch.randn(B, T, CONFIG["n_embd"], generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            want = ref.block_forward(x, ln_1, attn, ln_2, mlp)
        x_in = x.clone()
        got, err = call(impl.block_forward, x_in, ln_1, attn, ln_2, mlp)
        ok = err is None and close(got, want)
        hint = None
        if not ok:
            hint = "block_forward takes (B, T, C) and returns (B, T, C); call the modules as functions" if err else \
                "compare with the docstring: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))"
            if not err:
                for wrong, h in wrong_answers(x, ln_1, attn, ln_2, mlp):
                    if close(got, wrong, 1e-4):
                        hint = h
                        break
        yield f"block output, B={B}, T={T}", ok, want, err or got, hint
        if err is None:
            ok = torch.equal(x_in, x)
            yield f"the input x is left unchanged, B={B}, T={T}", ok, "x unchanged", \
                "unchanged" if ok else "x modified in place", \
                None if ok else "return a new tensor (x = x + ...), not x += ... (that adds in place into the caller's tensor)"
    # causal: changing the last position changes no earlier output
    ln_1, attn, ln_2, mlp = parts(2)
    x = torch.randn(2, 8, CONFIG["n_embd"], generator=torch.Generator().manual_seed(7))
    x2 = x.clone()
    x2[:, -1] += 1.0
    a, err_a = call(impl.block_forward, x.clone(), ln_1, attn, ln_2, mlp)
    b, err_b = call(impl.block_forward, x2, ln_1, attn, ln_2, mlp)
    if err_a is None and err_b is None and torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape:
        ok = torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
        yield "causal: the last position changes no earlier output", ok, "positions 0..T-2 unchanged", \
            "unchanged" if ok else "changed", \
            None if ok else "the block mixes positions only through attn (causal); ln_1, ln_2 and mlp act per " \
                            "position: normalise over the last dimension C, never over T"
