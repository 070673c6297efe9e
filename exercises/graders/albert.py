"""Grader of exercises/albert.py: against model.GPT with emb_dim (its embedding, wte then
emb_proj, and its tied head GPT.logits) and GPTConfig.stored_block."""

import torch

from exercises.graders import call


def reference():
    from types import SimpleNamespace

    from model import GPT, GPTConfig

    def gpt(table, proj_weight):
        """A one-layer GPT whose factorized embedding holds table and proj_weight."""
        (V, E), H = table.shape, proj_weight.shape[0]
        m = GPT(GPTConfig(block_size=8, vocab_size=V, n_layer=1, n_head=1, n_embd=H, emb_dim=E))
        with torch.no_grad():
            m.transformer.wte.weight.copy_(table)  # tied: the lm_head's weight too
            m.transformer.emb_proj.weight.copy_(proj_weight)
        return m

    def factorized_embedding(idx, table, proj_weight):
        with torch.no_grad():
            m = gpt(table, proj_weight)
            return m.transformer.emb_proj(m.transformer.wte(idx))

    def tied_logits(h, table, proj_weight):
        with torch.no_grad():
            return gpt(table, proj_weight).logits(h)

    def shared_layers(n_layer, share, repeat):
        c = GPTConfig(n_layer=n_layer, share_layers=share, share_repeat=repeat)
        return [c.stored_block(i) for i in range(n_layer)]

    return SimpleNamespace(factorized_embedding=factorized_embedding, tied_logits=tied_logits,
                           shared_layers=shared_layers)


def close(a, b, tol=1e-5):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


def recognise(got, known, fallback):
    for wrong, hint in known:
        if wrong is not None and close(got, wrong, 1e-4):
            return hint
    return fallback


SHAPES = "table is (V, E) and proj_weight (H, E): up is x proj_weight^T (E -> H), back is h proj_weight (H -> E)"
BACK = "the head goes back through the projection's transpose: h proj_weight (H -> E), not h proj_weight^T"


def setup(V, E, H, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (2, 5), generator=g), torch.randn(V, E, generator=g),
            torch.randn(H, E, generator=g) / E ** 0.5, torch.randn(2, 5, H, generator=g))


def cases(impl):
    ref = reference()
    # square first (E = H), where a transposed projection still has the right shape
    for V, E, H in ((11, 6, 6), (11, 4, 12)):
        idx, table, P, h = setup(V, E, H, seed=V * 100 + E * 10 + H)
        size = f"V={V}, E={E}, H={H}"
        square = E == H

        want = ref.factorized_embedding(idx, table, P)
        got, err = call(impl.factorized_embedding, idx.clone(), table.clone(), P.clone())
        ok = err is None and close(got, want)
        hint = None if ok else SHAPES if err else recognise(got, [
            (table[idx] @ P if square else None, "the projection up is x proj_weight^T (nn.Linear's x W^T): " + SHAPES),
            (table[idx] if square else None, "project the table's rows up with proj_weight: x proj_weight^T"),
        ], "compare with the docstring: F.linear(table[idx], proj_weight)")
        yield f"embedding, {size}", ok, want, err or got, hint

        want = ref.tied_logits(h, table, P)
        got, err = call(impl.tied_logits, h.clone(), table.clone(), P.clone())
        ok = err is None and close(got, want)
        hint = None if ok else (BACK + f" ({err})") if err else recognise(got, [
            (h @ P.t() @ table.t() if square else None, BACK),
            (h @ table.t() if square else None, "the head goes back through the projection first (H -> E), then the table"),
        ], "compare with the docstring: F.linear(F.linear(h, proj_weight.t()), table)")
        yield f"tied logits, {size}", ok, want, err or got, hint

        # the tied head undoes the embedding's route: <logits of h, one-hot> = <h, embedding>
        if not err:
            emb, e_err = call(impl.factorized_embedding, idx, table, P)
            if e_err is None and torch.is_tensor(emb) and torch.is_tensor(got) and got.shape[-1] == V:
                lhs = got.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
                rhs = (h * emb).sum(-1)
                ok = close(lhs, rhs, 1e-4)
                yield f"logit of token v = <h, embedding of v>, {size}", ok, rhs, lhs, \
                    None if ok else "the head is the embedding's transpose: logits[v] = h . (proj_weight table[v])"

    for n_layer, share, repeat in (
            (6, "none", 2), (6, "all", 2), (8, "immediate", 2), (6, "immediate", 3), (4, "immediate", 1), (4, "immediate", 4)):
        want = ref.shared_layers(n_layer, share, repeat)
        got, err = call(impl.shared_layers, n_layer, share, repeat)
        got_list = list(got) if isinstance(got, (list, tuple)) else got
        ok = err is None and got_list == want
        hint = None
        if not ok:
            modulo = [i % repeat for i in range(n_layer)]
            hint = ("immediate repetition is i // repeat (blocks run in a row: 0, 0, 1, 1, ...), not i % repeat "
                    "(0, 1, 0, 1, ...: that cycles the stored blocks)" if got_list == modulo else
                    "share='all' is ALBERT's one block: 0 at every layer" if share == "all" else
                    "share='none': layer i runs block i" if share == "none" else
                    "immediate: layers j*repeat .. j*repeat + repeat - 1 run block j, i.e. i // repeat")
        yield f"shared_layers({n_layer}, {share!r}, {repeat})", ok, want, err or got, hint
