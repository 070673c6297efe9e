"""Grader of exercises/grad_checkpointing.py: the output and gradients of a checkpointed
stack equal the plain forward's, and it saves for backward exactly one input per block."""

import torch
import torch.nn as nn


def reference():
    from types import SimpleNamespace

    from torch.utils.checkpoint import checkpoint

    def checkpointed_forward(blocks, x):  # model.GPT._trunk's grad_checkpointing branch, for tensor -> tensor blocks
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    return SimpleNamespace(checkpointed_forward=checkpointed_forward)


class Block(nn.Module):
    """A residual MLP block: x + W2 gelu(W1 x)."""

    def __init__(self, d, hidden):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.proj(torch.nn.functional.gelu(self.fc(x)))


def stack(n=4, d=8, hidden=32, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [Block(d, hidden) for _ in range(n)]


def saved_bytes(fn):
    """(count, bytes) of the tensors autograd saves for backward while fn() runs."""
    n = [0, 0]

    def pack(t):
        n[0] += 1
        n[1] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return tuple(n)


def grads(forward, blocks, x, requires):
    """The loss's gradients: [x's (if it requires grad)] + every parameter's (None where none)."""
    for b in blocks:
        b.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(requires)
    try:
        forward(blocks, x).square().sum().backward()
    except RuntimeError:  # "element 0 of tensors does not require grad": nothing reached a parameter
        pass
    out = [x.grad] if x.requires_grad else []
    return out + [p.grad for b in blocks for p in b.parameters()]


def plain(blocks, x):
    for b in blocks:
        x = b(x)
    return x


def cases(impl):
    blocks = stack()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, generator=g)

    want, got = plain(blocks, x), impl.checkpointed_forward(blocks, x.clone())
    ok = torch.is_tensor(got) and got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    yield "output equals the plain forward", ok, tuple(want.shape), got.shape if torch.is_tensor(got) else got, \
        None if ok else "run every block, in order, feeding each one's output to the next"

    for requires in (True, False):
        want, got = grads(plain, blocks, x, requires), grads(impl.checkpointed_forward, blocks, x, requires)
        missing = sum(g is None for g in got)
        ok = missing == 0 and all(a.shape == b.shape and torch.allclose(a, b, atol=1e-6) for a, b in zip(want, got))
        if ok:
            h = None
        elif missing and not requires:
            h = ("no gradient reached the parameters when the input does not require grad: that is "
                 "use_reentrant=True (it runs the block under no_grad and only tracks its inputs); use use_reentrant=False")
        elif missing:
            h = "some gradients are None: the blocks' outputs must stay in the graph (no .detach(), no torch.no_grad())"
        else:
            h = "the gradients differ from a plain forward's: checkpointing recomputes the same function, it must not change it"
        yield f"gradients equal the plain forward's (input requires grad: {requires})", ok, \
            f"{len(want)} gradients", f"{len(got) - missing} gradients", h

    x = x.detach().clone().requires_grad_(True)
    plain_saved = saved_bytes(lambda: plain(blocks, x))
    want = saved_bytes(lambda: reference().checkpointed_forward(blocks, x))
    got = saved_bytes(lambda: impl.checkpointed_forward(blocks, x))
    ok = got == want
    if ok:
        h = None
    elif got == plain_saved:
        h = "it saves as much for backward as the plain forward: no block is checkpointed (call checkpoint(block, x, use_reentrant=False))"
    elif got[0] < want[0]:
        h = ("it saves fewer tensors than one input per block: one checkpoint around the whole stack? Then backward "
             "recomputes every block at once and holds all their activations together; checkpoint each block")
    else:
        h = "a checkpointed block saves only its input for backward: checkpoint every block, not some"
    yield "saved for backward: one input per block (count, bytes)", ok, want, got, h
    yield "saves less than the plain forward", got[1] < plain_saved[1], f"< {plain_saved[1]} bytes", got[1], \
        None if got[1] < plain_saved[1] else "nothing was saved by checkpointing: checkpoint each block"
