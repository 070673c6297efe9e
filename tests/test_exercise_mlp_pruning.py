"""The mlp_pruning exercise: its grader passes prune.py, finds the untouched stub not
started, and names each planted mistake in its hints."""

from types import SimpleNamespace


from exercises.__main__ import grade
from exercises.graders import mlp_pruning as grader

REF = grader.reference()


def hints(**overrides):
    impl = SimpleNamespace(**{**vars(REF), **overrides})
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def written_out():
    def magnitude_scores(fc, b, proj):
        return (fc.pow(2).sum(1) + (b.pow(2) if b is not None else 0) + proj.pow(2).sum(0)).sqrt()

    def keep_indices(scores, keep):
        k = max(1, int(keep * len(scores) + 0.5))
        return scores.argsort(descending=True, stable=True)[:k].sort().values

    def prune_mlp(fc, b, proj, kept):
        return fc[kept], None if b is None else b[kept], proj[:, kept]

    return dict(magnitude_scores=magnitude_scores, keep_indices=keep_indices, prune_mlp=prune_mlp)


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("mlp_pruning", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) == 12, ref
    stub = grade("mlp_pruning")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_functions_pass():
    assert hints(**written_out()) == []


def test_each_mistake_gets_its_hint():
    w = written_out()
    for overrides, words in [
        (dict(magnitude_scores=lambda fc, b, proj: (fc.pow(2).sum(1) + (b.pow(2) if b is not None else 0)).sqrt()),
         "what leaves the neuron too"),
        (dict(magnitude_scores=lambda fc, b, proj: (fc.pow(2).sum(1) + proj.pow(2).sum(0)).sqrt()), "bias feeds it"),
        (dict(keep_indices=lambda s, keep: s.argsort(descending=True, stable=True)[:max(1, int(keep * len(s) + 0.5))]),
         "increasing order"),
        (dict(keep_indices=lambda s, keep: s.argsort(descending=True, stable=True)[:max(1, int(keep * len(s)))]
              .sort().values), "floor(keep * H + 0.5)"),
        (dict(prune_mlp=lambda fc, b, proj, kept: (fc[kept], None if b is None else b[kept], proj[:, :len(kept)])),
         "not the first H'"),
        (dict(prune_mlp=lambda fc, b, proj, kept: (fc[kept], b, proj[:, kept])), "fc_bias[kept]"),
    ]:
        got = hints(**{**w, **overrides})
        assert got and all(words in h for h in got), (overrides, got)
