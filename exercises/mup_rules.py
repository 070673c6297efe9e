"""
Exercise: muP's rules as numbers (the muP lesson in exercises/README.md).

Read mup.py's table first; read model.py (GPT.__init__, GPT._init_weights, GPT.logits,
GPT.lr_scale, CausalSelfAttention's q_mult) only after you have tried.
Grade: python -m exercises check mup_rules

width_mult = width / base_width (n_embd / mup_base_width). At width == base_width every rule
must give the standard (GPT-2) value exactly: muP at its base width is GPT-2, bit for bit.

Parameter names are those of model.GPT's named_parameters(), for example
    "transformer.wte.weight"             token embedding (tied: it is the output head too)
    "transformer.wpe.weight"             position embedding
    "transformer.h.0.ln_1.weight"        a LayerNorm gain inside block 0 (1-D)
    "transformer.h.0.attn.c_attn.weight" q, k, v projection of block 0, shape (3 C, C)
    "transformer.h.1.mlp.c_proj.weight"  MLP output projection of block 1, shape (C, 4 C)
    "transformer.ln_f.weight"            the final LayerNorm gain
`shape` is the parameter's shape (a tuple): its number of dimensions is part of the rule.
"""

import math  # noqa: F401


def lr_scale(name, shape, width, base_width):
    """The factor on Adam's learning rate for parameter `name` under muP (what
    step.make_optimizer puts in each group's "lr_scale"):

        hidden matrices (every tensor of 2 or more dimensions inside a block, transformer.h.*)
                                  -> 1 / width_mult      (mup.py, rule 2)
        everything else (wte, wpe, LayerNorm gains, biases, ln_f)
                                  -> 1.0                 (rule 1: inputs and vectors keep their rate)

    Returns a float."""
    raise NotImplementedError("exercises/mup_rules.py: lr_scale")


def init_std(name, shape, width, base_width, n_layer):
    """The standard deviation a muP GPT initializes matrix `name` with (2-D parameters only;
    the grader asks about nothing else):

        GPT-2: 0.02, but 0.02 / sqrt(2 n_layer) for the residual projections (the c_proj of
               attention and of the MLP: each block adds two of them into the stream)
        muP:   the hidden matrices (inside a block) times width_mult ** -0.5, so that their
               variance goes as 1 / fan_in (rule 2); the embeddings keep GPT-2's (rule 1)

    Returns a float."""
    raise NotImplementedError("exercises/mup_rules.py: init_std")


def attention_scale(head_size, base_head_size):
    """The factor the attention logits q.k are multiplied by, for heads of size d = head_size
    in a muP model whose base width has heads of size d_base = base_head_size (same n_head,
    so head_size / base_head_size = width_mult):

        standard: 1 / sqrt(d)     muP: sqrt(d_base) / d   (rule 4: ~ 1/d, and 1/sqrt(d) at the base)

    model.py writes it as q scaled by q_mult = width_mult ** -0.5 before the usual 1 / sqrt(d).
    Returns a float."""
    raise NotImplementedError("exercises/mup_rules.py: attention_scale")


def readout_multiplier(width, base_width):
    """The factor GPT.logits multiplies the final hidden state h by before the tied head
    (logits = W (h * multiplier)): rule 3. Returns a float."""
    raise NotImplementedError("exercises/mup_rules.py: readout_multiplier")
