"""
Classroom exercises: each technique as a stub a student completes, and a grader that checks
it with numbers (python -m exercises; the course path: exercises/README.md).

    python -m exercises list                     # the exercises in course order, with their status
    python -m exercises check lr_schedule        # grade one: each case, expected vs got, a hint
    python -m exercises check --all --json       # a class's results, one JSON object
    python -m exercises check kd_loss --reference    # the grader against the repo's own code

An exercise is two files: exercises/<name>.py, the stub a student edits (signatures, the
task in the docstrings, `raise NotImplementedError`), and exercises/graders/<name>.py, its
grader: `reference()` (the same functions, from the repo's modules) and `cases(impl)`,
which yields (case, ok, expected, got, hint) for an implementation. COURSE is the order.
"""

# the course order (the lessons of exercises/README.md)
COURSE = ["causal_attention", "gpt_block", "lr_schedule", "grad_accumulation", "mixed_precision", "grad_checkpointing",
          "lora", "peft_freeze", "topk_router", "switch_capacity", "kd_loss", "topk_soft_labels", "sliding_window",
          "rope_gqa", "albert", "mup_rules", "curriculum_pacing", "spike_guard",
          "int8_quant", "mlp_pruning", "on_policy_kd", "fedavg"]
