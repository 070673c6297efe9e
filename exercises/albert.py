"""
Exercise: ALBERT's factorized embedding and shared blocks (the parameter-lean lesson in
exercises/README.md).

Read model.GPT.logits, GPT._trunk and GPTConfig.stored_block only after you have tried.
Grade: python -m exercises check albert (or, while it is not in exercises.COURSE:
python -c "from exercises.__main__ import grade, show; show(grade('albert'))")

Shapes, as in model.py with emb_dim = E < n_embd = H (Lan et al. 2019, section 3.1):
    idx: (...) token ids     table: (V, E)     proj_weight: (H, E), the weight of
    nn.Linear(E, H, bias=False) (this exercise passes the weight tensor, not the module)
so the embedding is V*E + E*H parameters instead of V*H.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def factorized_embedding(idx, table, proj_weight):
    """The token embedding, (...) ids -> (..., H): look up the (..., E) rows of `table`, then
    project them up with the Linear whose weight is proj_weight (H, E): x W^T."""
    raise NotImplementedError("exercises/albert.py: factorized_embedding")


def tied_logits(h, table, proj_weight):
    """The tied output head, (..., H) -> (..., V): back through the projection's transpose
    (H -> E: the E x H map, proj_weight^T, as a Linear with weight proj_weight^T), then
    through the table as the head's weight (E -> V). No new parameters: the head reuses the
    embedding's two tensors."""
    raise NotImplementedError("exercises/albert.py: tied_logits")


def shared_layers(n_layer, share, repeat):
    """The stored block that runs at each of the n_layer layers, a list of n_layer ints:

        share = "none"       every layer its own block: 0, 1, ..., n_layer - 1
        share = "all"        ALBERT: one block at every layer: 0, 0, ..., 0
        share = "immediate"  MobileLLM (Liu et al. 2024): each stored block runs `repeat`
                             times in a row, layers j*repeat .. j*repeat + repeat - 1 run
                             block j (n_layer a multiple of repeat)
    """
    raise NotImplementedError("exercises/albert.py: shared_layers")
