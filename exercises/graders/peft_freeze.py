"""Grader of exercises/peft_freeze.py: against peft.apply_bitfit (the trainable set it leaves,
counted by peft.trainable_summary) and step.make_optimizer's rule (only requires_grad
parameters, each once), on a tiny GPT with biases."""

import torch


def tiny_gpt(seed=0):
    from model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, bias=True))
    return model.eval()


def reference():
    from types import SimpleNamespace

    import peft

    def apply_bitfit(model):
        peft.apply_bitfit(model)  # returns the trained names; the exercise returns their count
        return peft.trainable_summary(model)["trainable_params"]

    def trainable_parameters(model):
        return [p for p in model.parameters() if p.requires_grad]

    return SimpleNamespace(apply_bitfit=apply_bitfit, trainable_parameters=trainable_parameters)


def trainable_names(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def names_hint(want, got, model):
    extra, missing = set(got) - set(want), set(want) - set(got)
    lm = {n for n in extra if ".ln_" in n and n.endswith(".weight")}
    if lm and lm == {n for n, p in model.named_parameters() if ".ln_" in n and n.endswith(".weight")}:
        return ("the LayerNorm gains (ln_*.weight) are left trainable: BitFit trains the biases only "
                "(the gains train too only with peft's bitfit_layernorm=True)")
    if "transformer.wte.weight" in extra:
        return ("the tied embedding is left trainable: lm_head.weight IS transformer.wte.weight, one tensor, "
                "and it is a weight: freeze it")
    if extra and all(n.endswith(".weight") for n in extra):
        return f"only biases train; these weights are still trainable: {sorted(extra)[:4]}"
    if missing:
        return f"every bias trains, LayerNorm's included; these are frozen: {sorted(missing)[:4]}"
    return "requires_grad: True on each bias, False on every other parameter"


def cases(impl):
    ref = reference()
    idx = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(1))

    want_model = tiny_gpt()
    want_count = ref.apply_bitfit(want_model)
    want = trainable_names(want_model)

    model = tiny_gpt()
    with torch.no_grad():
        before = model(idx)[0]
    got_count = impl.apply_bitfit(model)
    got = trainable_names(model)
    ok = got == want
    yield "the trainable parameters are the biases", ok, want, got, None if ok else names_hint(want, got, model)

    n_tensors = len(got)
    ok = isinstance(got_count, int) and got_count == want_count
    hint = None
    if not ok:
        hint = ("count scalars (sum of p.numel()), not tensors" if got_count == n_tensors else
                "return the number of trainable scalars: sum(p.numel() for p in model.parameters() if p.requires_grad)")
    yield "the count returned", ok, want_count, got_count, hint

    with torch.no_grad():
        after = model(idx)[0]
    ok = torch.equal(before, after)
    yield "the output is unchanged", ok, "logits as before", "unchanged" if ok else \
        f"max change {(after - before).abs().max().item():.3g}", \
        None if ok else "freezing changes requires_grad only: no parameter's value (nor any new parameter)"

    # trainable_parameters, on a model frozen by the reference (so this case does not hang on apply_bitfit)
    frozen = tiny_gpt()
    ref.apply_bitfit(frozen)
    want_ids = [id(p) for p in ref.trainable_parameters(frozen)]
    got_list = impl.trainable_parameters(frozen)
    got_list = list(got_list) if got_list is not None else []
    got_ids = [id(p) for p in got_list]
    n_frozen = sum(1 for p in got_list if not p.requires_grad)
    ok = n_frozen == 0
    yield "the optimizer's list holds no frozen tensor", ok, 0, n_frozen, \
        None if ok else "frozen parameters are still passed to the optimizer: keep only p.requires_grad ones"
    ok = sorted(got_ids) == sorted(want_ids) and len(set(got_ids)) == len(got_ids)
    hint = None
    if not ok:
        hint = ("frozen parameters are still passed to the optimizer: keep only p.requires_grad ones"
                if n_frozen else "a tensor is listed twice (a tied one?): use model.parameters(), which lists each once"
                if len(set(got_ids)) < len(got_ids) else
                "every trainable parameter goes to the optimizer (all the biases)")
    yield "the optimizer's list is every trainable tensor, once", ok, len(want_ids), len(got_ids), hint
    # and on the student's own freeze: the same rule
    ok = {id(p) for p in impl.trainable_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}
    yield "trainable_parameters after your apply_bitfit", ok, "the requires_grad parameters", \
        "the same" if ok else "another set", None if ok else "the list is exactly the parameters with requires_grad"
