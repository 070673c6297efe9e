"""Grader of exercises/switch_capacity.py: against moe.MoE with router="switch" (capacity,
lines 110-114; first-come dispatch and drops, lines 139-153), on small known examples and
seeded routings, and the common mistakes simulated to name them."""

import math

import torch


def reference():
    from types import SimpleNamespace

    from moe import MoE

    def switch_dispatch(expert_index, n_experts, capacity_factor):
        """The repo's MoE forward on logits that pick expert_index: an identity router, and
        experts of all-ones weights, so a token's output row is 0 exactly when it is dropped."""
        m = MoE(n_embd=n_experts, hidden=1, n_experts=n_experts, top_k=1, router="switch",
                capacity_factor=capacity_factor).train()  # training: capacity_factor (moe.py 113)
        with torch.no_grad():
            m.router.weight.copy_(torch.eye(n_experts))
            m.w_fc.fill_(1.0)
            m.w_proj.fill_(1.0)
            x = torch.nn.functional.one_hot(expert_index.long(), n_experts).float() * 10.0
            y, aux = m(x.reshape(1, -1, n_experts))
        return y.reshape(-1, n_experts).abs().sum(-1) > 0, float(aux["dropped"])

    return SimpleNamespace(switch_dispatch=switch_dispatch)


def simulate(idx, n_experts, cap, latest=False, per_expert=True):
    """Keep masks of the mistakes: keep the latest instead of the earliest, or count the
    batch's tokens instead of each expert's."""
    keep = torch.zeros(len(idx), dtype=torch.bool)
    seen = [0] * n_experts
    order = range(len(idx) - 1, -1, -1) if latest else range(len(idx))
    total = 0
    for t in order:
        e = int(idx[t])
        n = seen[e] if per_expert else total
        keep[t] = n < cap
        seen[e] += 1
        total += 1
    return keep


def hint(idx, E, cf, keep, dropped, want_keep, want_dropped):
    N = len(idx)
    cap = math.ceil(cf * N / E)
    if torch.is_tensor(keep) and keep.shape == want_keep.shape:
        keep = keep.bool()
        same = lambda m: torch.equal(keep, m) and not torch.equal(m, want_keep)
        if same(simulate(idx, E, math.floor(cf * N / E))):
            return "capacity computed with floor: Switch rounds up, ceil(capacity_factor * N / n_experts)"
        if same(simulate(idx, E, cap, latest=True)):
            return "the earliest tokens were dropped: first come, first served keeps the first `capacity` of each expert"
        if same(simulate(idx, E, math.ceil(cf * N))) or same(simulate(idx, E, cap, per_expert=False)) or \
                same(simulate(idx, E, math.ceil(cf * N), per_expert=False)):
            return "capacity is per expert: each expert takes ceil(capacity_factor * N / n_experts), counting its own tokens"
        if torch.equal(keep, want_keep):
            d = float(dropped)
            if math.isclose(d, want_dropped * N, rel_tol=1e-5):
                return "dropped is a fraction of the N tokens, not a count"
            if math.isclose(d, 1 - want_dropped, rel_tol=1e-5):
                return "dropped is the share of tokens not kept: 1 - (the kept share)"
            return "the mask is right: dropped = (number of False in keep) / N"
    return "compare with the docstring: capacity = ceil(capacity_factor * N / n_experts), first come first served"


KNOWN = [  # (name, expert_index, n_experts, capacity_factor): small enough to work by hand
    ("expert 0 over by one", [0, 0, 0, 1, 0, 1], 2, 1.0),                     # capacity 3: token 4 dropped
    ("ceil, not floor", [1, 1, 1, 1, 0, 2, 1, 2], 3, 1.0),                    # capacity ceil(8/3) = 3
    ("every token on one expert", [2] * 8, 4, 1.25),                          # capacity ceil(2.5) = 3
    ("balanced: nothing dropped", [0, 1, 2, 3] * 3, 4, 1.0),                  # capacity 3 each
    ("factor 2: capacity 4", [0, 0, 0, 0, 1, 0, 0, 1], 4, 2.0),               # capacity 4
]


def cases(impl):
    ref = reference()
    examples = [(n, torch.tensor(i), E, cf) for n, i, E, cf in KNOWN]
    g = torch.Generator().manual_seed(0)
    for cf in (1.0, 1.25, 2.0):
        # skewed routing, so that some experts overflow: expert 0 twice as likely
        probs = torch.tensor([2.0, 1, 1, 1, 1, 1, 1, 0.5])
        examples.append((f"seeded N=61, 8 experts, factor {cf:g}", torch.multinomial(probs, 61, True, generator=g), 8, cf))
    for name, idx, E, cf in examples:
        want_keep, want_dropped = ref.switch_dispatch(idx, E, cf)
        got = impl.switch_dispatch(idx.clone(), E, cf)
        keep, dropped = got if isinstance(got, tuple) and len(got) == 2 else (got, None)
        ok_keep = torch.is_tensor(keep) and keep.shape == want_keep.shape and torch.equal(keep.bool(), want_keep)
        ok_drop = dropped is not None and math.isclose(float(dropped), want_dropped, abs_tol=1e-6)
        ok = ok_keep and ok_drop and (keep.dtype == torch.bool)
        show = lambda m: "".join("1" if v else "0" for v in m.tolist()) if torch.is_tensor(m) else m
        h = None
        if not ok:
            h = hint(idx, E, cf, keep, dropped, want_keep, want_dropped)
            if ok_keep and ok_drop:
                h = "return keep as a bool tensor (keep.dtype == torch.bool)"
        yield name, ok, (show(want_keep), round(want_dropped, 6)), (show(keep), dropped), h
