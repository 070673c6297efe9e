"""
The config language of train.py: which keys exist, their types, defaults and domains, and
how a run's settings are put together and checked before any work is done.

    from config import load_config
    cfg = load_config(["configs/quickstart.py", "--max_iters=100"])   # Config(train, model, peft, kd)
    cfg.train.max_iters, cfg.model.n_layer, cfg.peft.peft, cfg.kd.kd_alpha

A config file is Python whose top-level assignments set keys (names starting with "_" are
private helpers); `--key=value` on the command line overrides it. The keys are one flat
space, the fields of four dataclasses, each the single source of its defaults:

    TrainConfig (below)   the loop: I/O, data, AdamW, LR schedule, system, seed
    model.GPTConfig       the architecture (but vocab_size, which comes from the dataset)
    peft.PEFTConfig       LoRA, adapters, BitFit
    distill.KDConfig      knowledge distillation

An unknown key is an error naming the closest known one; a value of the wrong type names
the key, the type and the value; a value outside its key's domain (checked in each
dataclass's __post_init__, a NaN included) or an impossible combination (validate) names
what would be right. train.py prints any of them as one line and exits with code 2.
Precedence: defaults <- [the checkpoint's config, on resume] <- files <- --key=value.
"""

import difflib
import inspect
import math
import os
import typing
from ast import literal_eval
from dataclasses import dataclass, fields
from typing import Literal, NamedTuple

import torch

from batches import parse_mixture, parse_stages
from checkpoint import find_checkpoint, read_checkpoint
from distill import KDConfig
from errors import UserError
from model import GPTConfig
from peft import PEFTConfig


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"  # where config.json, metrics.jsonl and ckpt.pt go
    init_from: str = "scratch"  # 'scratch', 'resume' (out_dir's ckpt.pt), or a run folder to fine-tune from
    eval_interval: int = 250  # evaluate and checkpoint every this many optimizer steps (and at the end)
    eval_iters: int = 200  # batches per split in each evaluation
    log_interval: int = 10  # a metrics.jsonl training row every this many steps
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # False: save at an eval only when val loss improves
    progress: bool = True  # tqdm progress bar (off: a printed line per eval)
    # data
    dataset: str = "shakespeare_char"  # a folder under data/, or a path, with train.bin, val.bin, meta.json
    batch_size: int = 12  # sequences per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (under torchrun: over all processes)
    # AdamW
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 5000  # optimizer steps in total
    weight_decay: float = 0.1  # on matrices only (see step.make_optimizer)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = off
    # learning-rate schedule (see step.get_lr)
    lr_schedule: Literal["cosine", "linear", "wsd", "constant", "exponential"] = "cosine"  # exponential: LR range test
    warmup_iters: int = 100  # linear warmup from ~0 to learning_rate
    lr_decay_iters: int = 0  # the schedule ends (at min_lr) here; 0 = max_iters
    min_lr: float = 6e-5  # learning rate at the end of the decay
    decay_frac: float = 0.2  # wsd: the decay takes this last fraction of the schedule
    # curriculum (batches.py): off at curriculum = 'none'
    curriculum: Literal["none", "seqlen", "difficulty", "anti"] = "none"  # seqlen: shorter windows first;
    # difficulty / anti: windows ordered by curriculum_scorer, easiest / hardest first (batches.py, curriculum.py)
    curriculum_start_len: int = 8  # seqlen: the first windows' length (a multiple of 8)
    curriculum_iters: int = 1000  # steps until the windows reach block_size, or the pool reaches all windows
    curriculum_pacing: Literal["linear", "root", "step"] = "linear"  # how it gets there (batches.pace)
    curriculum_scorer: str = "bigram"  # difficulty/anti: bigram, zlib, or a reference run's folder (curriculum.py)
    curriculum_start_frac: float = 0.1  # difficulty/anti: the first pool, a fraction of all windows
    # a mixture of datasets (batches.MixtureWindows): off when empty
    datasets: str = ""  # 'name:weight,name:weight' (one tokenizer); replaces dataset; the first is val_loss's
    stages: str = ""  # datasets' weights from given steps on: 'ITER:name=w,name=w;ITER:...'
    # quantization-aware training (quant.fake_quantize; README, "Compact models"): off at qat_bits = 0
    qat_bits: int = 0  # train the blocks' Linear weights toward their int8 or int4 form (4 or 8; 0 = off)
    qat_group_size: int = 32  # qat_bits=4: input columns per scale, as quantize.py --group_size (0: one per row)
    # fault tolerance (faults.py, checkpoint.py's rotation; README, "Long runs and preemption")
    keep_last: int = 2  # checkpoints kept: ckpt.pt (the newest) and ckpt-<iter>.pt for the ones before it
    ckpt_interval: int = 0  # also save every this many steps between evals (0: at evals only)
    on_save_error: Literal["stop", "continue"] = "stop"  # a save that fails (disk full): stop, or warn and train on
    on_spike: Literal["stop", "rewind"] = "stop"  # stop at a non-finite loss; rewind: back to the last checkpoint,
    # past the batches that led to the spike (a non-finite loss or one above spike_factor x the recent mean)
    spike_factor: float = 3.0  # rewind: a loss above this x the mean of the last spike_window steps (0: non-finite only)
    spike_window: int = 50  # rewind: the steps of that mean
    max_rewinds: int = 5  # rewind: then stop
    # system
    device: str = "auto"  # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast dtype; auto: see system.py
    compile: bool = False  # torch.compile the model (for CUDA; on CPU compiling takes minutes)
    seed: int = 1337  # seeds weights, dropout and the batch sampler

    def __post_init__(self):
        # each check reads "not (inside the domain)", so that a NaN fails it too
        for key in ("out_dir", "init_from", "dataset"):
            if not getattr(self, key):
                raise ValueError(f"{key} is empty; give a folder")
        for key in ("eval_interval", "eval_iters", "log_interval", "batch_size", "gradient_accumulation_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "grad_clip", "weight_decay", "min_lr"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr={self.min_lr} is above learning_rate={self.learning_rate}")
        if not self.learning_rate * self.weight_decay < 1:
            # AdamW's decoupled decay multiplies every matrix by (1 - lr * wd) each step
            raise ValueError(f"learning_rate * weight_decay = {self.learning_rate * self.weight_decay:g} must be < 1: "
                             f"each step multiplies the weights by 1 - learning_rate * weight_decay; lower either")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}={getattr(self, key)} must be in [0, 1)")
        if self.lr_schedule != "constant" and 0 < self.lr_decay_iters <= self.warmup_iters:
            # get_lr would climb to ~learning_rate and then jump straight down to min_lr
            raise ValueError(f"lr_decay_iters={self.lr_decay_iters} ends the schedule before warmup_iters="
                             f"{self.warmup_iters} does; use lr_decay_iters > warmup_iters (or 0: max_iters)")
        if self.lr_schedule == "exponential" and not (self.min_lr > 0 and self.warmup_iters == 0):
            # the LR range test (sweep.py --lr_range) grows the rate geometrically from min_lr: no warmup before it
            raise ValueError(f"lr_schedule='exponential' grows the rate from min_lr to learning_rate: it needs "
                             f"min_lr > 0 (got {self.min_lr}) and warmup_iters=0 (got {self.warmup_iters})")
        if not 0.0 < self.decay_frac <= 1.0:
            raise ValueError(f"decay_frac={self.decay_frac} must be in (0, 1]")
        if not (self.curriculum_start_len >= 8 and self.curriculum_start_len % 8 == 0):
            raise ValueError(f"curriculum_start_len={self.curriculum_start_len} must be a multiple of 8 (>= 8)")
        if not 0.0 < self.curriculum_start_frac <= 1.0:
            raise ValueError(f"curriculum_start_frac={self.curriculum_start_frac} must be in (0, 1]")
        if self.curriculum_iters < 1:
            raise ValueError(f"curriculum_iters={self.curriculum_iters} must be >= 1")
        if self.qat_bits not in (0, 4, 8):
            raise ValueError(f"qat_bits={self.qat_bits}: use 8 or 4 (0: no quantization-aware training)")
        if not (self.qat_group_size >= 0 and self.qat_group_size % 2 == 0):
            raise ValueError(f"qat_group_size={self.qat_group_size} must be even and >= 0 (0: one scale per row)")
        for key in ("keep_last", "spike_window"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        for key in ("ckpt_interval", "max_rewinds"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0")
        if not (self.spike_factor == 0 or 1 < self.spike_factor < math.inf):
            raise ValueError(f"spike_factor={self.spike_factor} must be > 1 (a loss that many times its recent mean), "
                             f"or 0 (non-finite losses only)")
        if not -(2**63) <= self.seed < 2**63:
            raise ValueError(f"seed={self.seed} must be in [-2**63, 2**63) (torch's generators take 64 bits)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device='{self.device}': use 'auto', 'cpu', 'cuda' or 'cuda:N'")


class Config(NamedTuple):
    """A run's settings, one dataclass per concern."""

    train: TrainConfig
    model: GPTConfig
    peft: PEFTConfig
    kd: KDConfig

    def as_dict(self):
        """The flat key space as one dict (what config.json and a checkpoint's "config" hold)."""
        out = {}
        for section in (self.train, self.kd, self.model, self.peft):
            out.update({f.name: getattr(section, f.name) for f in fields(section)})
        return out


# ----------------------------------------------------------------------------------------
# the key space: defaults (the dataclasses) <- [the checkpoint's config on resume] <- files <- CLI

# section -> its dataclass and its keys; vocab_size is not a key: it comes from the dataset
SECTION_CLASSES = {"train": TrainConfig, "model": GPTConfig, "peft": PEFTConfig, "kd": KDConfig}
SECTION_KEYS = {name: [f.name for f in fields(SECTION_CLASSES[name]) if f.name != "vocab_size"] for name in SECTION_CLASSES}
FIELD_TYPES = {f.name: f.type for cls in (TrainConfig, KDConfig, PEFTConfig, GPTConfig) for f in fields(cls)
               if f.name != "vocab_size"}
PEFT_KEYS = SECTION_KEYS["peft"]
# keys that must equal the checkpoint's when resuming or fine-tuning: they give the weights
# their shapes, or (n_head, the MoE routing) decide what the weights compute
MOE_ARCH_KEYS = ["moe_num_experts", "moe_top_k", "moe_router", "moe_hidden", "moe_every", "moe_shared_expert",
                 "moe_noisy"]
ATTENTION_KEYS = ["attention", "attn_window", "attn_block", "attn_summary", "n_kv_head", "pos_emb", "rope_theta"]
LEAN_KEYS = ["emb_dim", "share_layers", "share_repeat"]  # factorized embedding, shared blocks
PRUNED_KEYS = ["mlp_hidden", "head_dim"]  # the widths prune.py leaves (0: GPT-2's)
MUP_KEYS = ["mup", "mup_base_width"]  # muP's multipliers are part of what the weights compute
ARCH_KEYS = ["n_layer", "n_head", "n_embd", "bias"] + PRUNED_KEYS + ATTENTION_KEYS + LEAN_KEYS + MUP_KEYS + MOE_ARCH_KEYS
# a fine-tune takes these from its base: the architecture, and the MoE training settings
# (capacity, loss weights), which it may change
INHERITED_KEYS = ARCH_KEYS + ["block_size", "moe_capacity_factor", "moe_eval_capacity_factor", "moe_aux_loss_coef",
                              "moe_z_loss_coef", "moe_init_scale"]
# PEFT keys that give a PEFT run's tensors their shapes or their meaning (lora_alpha and
# lora_rslora set the scale B A is multiplied by): fixed once the run has started
PEFT_SHAPE_KEYS = ["peft", "lora_r", "lora_alpha", "lora_rslora", "lora_targets", "adapter_size", "adapter_targets",
                   "bitfit_layernorm"]
# the keys that only matter to one PEFT method
PEFT_METHOD_KEYS = {"lora": "lora_", "adapter": "adapter_", "bitfit": "bitfit_"}
# model keys that only matter under one value of another: key -> (that key, its value)
# train keys that only matter under one value of another, as MODEL_SETTING_OF
TRAIN_SETTING_OF = {"curriculum_start_len": ("curriculum", ("seqlen",)),
                    "curriculum_iters": ("curriculum", ("seqlen", "difficulty", "anti")),
                    "curriculum_pacing": ("curriculum", ("seqlen", "difficulty", "anti")),
                    "curriculum_scorer": ("curriculum", ("difficulty", "anti")),
                    "curriculum_start_frac": ("curriculum", ("difficulty", "anti")),
                    "spike_factor": ("on_spike", ("rewind",)), "spike_window": ("on_spike", ("rewind",)),
                    "max_rewinds": ("on_spike", ("rewind",)), "qat_group_size": ("qat_bits", (4,))}
MODEL_SETTING_OF = {"attn_window": ("attention", "sliding"), "attn_block": ("attention", "blocksparse"),
                    "attn_summary": ("attention", "blocksparse"), "share_repeat": ("share_layers", "immediate"),
                    "rope_theta": ("pos_emb", "rope"), "mup_base_width": ("mup", True)}
# keys that describe this machine, never carried over from a checkpoint's config
SYSTEM_KEYS = ["device", "dtype", "compile"]


def _type_name(tp):
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return "a finite float" if tp is float else tp.__name__


def check_value(key, value, from_cli=False, types=None):
    """Return value converted to key's declared type, or raise UserError naming the key,
    the expected type and the value given. From the CLI, value is the raw string. types:
    another key space ({key: type}, e.g. federated.py's), instead of train.py's."""
    types = FIELD_TYPES if types is None else types
    if key not in types:
        close = difflib.get_close_matches(key, types, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{key}'{hint}")
    tp = types[key]
    if from_cli:
        if tp is str or typing.get_origin(tp) is Literal:
            given = value  # strings are taken as typed: --out_dir=123 is the folder "123"
        else:
            try:
                given = literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                given = value
            if tp is bool and isinstance(given, str) and given.lower() in ("true", "false"):
                given = given.lower() == "true"
    else:
        given = value
    ok = False
    if typing.get_origin(tp) is Literal:
        ok = given in typing.get_args(tp)
    elif tp is bool:
        ok = isinstance(given, bool)
    elif tp is int:
        ok = isinstance(given, int) and not isinstance(given, bool)
    elif tp is float:
        ok = isinstance(given, (int, float)) and not isinstance(given, bool)
        try:
            given = float(given) if ok else given
        except OverflowError:  # an int beyond the float range
            ok = False
        ok = ok and math.isfinite(given)  # NaN and inf are no setting of any key
    elif tp is str:
        ok = isinstance(given, str)
    if not ok:
        raise UserError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    return given


def read_config_file(path):
    """The key = value assignments of a config file, checked; names starting with '_'
    and imported modules are ignored."""
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found (arguments are CONFIG.py and --key=value)")
    namespace = {}
    with open(path) as f:
        source = f.read()
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise UserError(f"{path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # a NameError, an import that fails, ...: name the file's line that raised it
        tb = e.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                line = tb.tb_lineno
            tb = tb.tb_next
        raise UserError(f"{path}, line {line}: {type(e).__name__}: {e}") from None
    out = {}
    for key, value in namespace.items():
        if key.startswith("_") or inspect.ismodule(value):
            continue
        try:
            out[key] = check_value(key, value)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return out


def parse_args(argv):
    """argv (without the program name) -> {key: value} of explicit settings, in order."""
    overrides = {}
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise UserError(f"'{arg}': write options as --key=value")
            key, value = arg[2:].split("=", 1)
            overrides[key] = check_value(key, value, from_cli=True)
        else:
            overrides.update(read_config_file(arg))
    return overrides


def load_config(argv):
    """Build a Config from defaults, a resumed checkpoint's config, config files and
    --key=value arguments, and check every value and the combination."""
    overrides = parse_args(argv)
    values = {}
    init_from = overrides.get("init_from", TrainConfig.init_from)
    out_dir = overrides.get("out_dir", TrainConfig.out_dir)
    if init_from not in ("scratch", "") and out_dir:
        values.update(saved_config(init_from, out_dir, overrides))
    values.update(overrides)
    values["init_from"], values["out_dir"] = init_from, out_dir
    try:
        cfg = Config(**{name: cls(**{k: v for k, v in values.items() if k in SECTION_KEYS[name]})
                        for name, cls in SECTION_CLASSES.items()})
    except ValueError as e:
        raise UserError(str(e)) from None
    validate(cfg, overrides)
    return cfg


def saved_config(init_from, out_dir, overrides):
    """The keys a run takes from a checkpoint. On resume its whole config is the base, so
    `--init_from=resume` alone continues it; a fine-tune takes the architecture of its base
    model (and its MoE settings). Overrides that contradict what the saved tensors are (their
    shapes, or how they are used: n_head, the routing, a PEFT run's scale) are errors."""
    src = out_dir if init_from == "resume" else init_from
    why = f"--init_from={init_from}"
    # resume: the newest checkpoint that loads (checkpoint.py's rotation; train.py says which)
    saved = (find_checkpoint(src, why, mmap=True)[1] if init_from == "resume"
             else read_checkpoint(os.path.join(src, "ckpt.pt"), why=why, mmap=True))["config"]
    keep = FIELD_TYPES if init_from == "resume" else INHERITED_KEYS
    fixed = ARCH_KEYS + (PEFT_SHAPE_KEYS if init_from == "resume" else [])
    # a checkpoint older than a key holds that key's default
    was = {k: saved.get(k, getattr(PEFTConfig if k in PEFT_KEYS else GPTConfig, k)) for k in fixed}
    differ = [k for k in fixed if k in overrides and overrides[k] != was[k]]
    if differ:
        tensors = "PEFT tensors" if all(k in PEFT_KEYS for k in differ) else "weights"
        raise UserError(", ".join(f"{k}={overrides[k]} differs from the checkpoint's {k}={was[k]}" for k in differ)
                        + f" in {src}; the {tensors} were trained with "
                        + ("it" if len(differ) == 1 else "them") + " (drop " + " ".join(f"--{k}" for k in differ) + ")")
    if overrides.get("block_size", 0) > saved["block_size"] and saved.get("pos_emb", "learned") == "learned":
        # RoPE and NoPE have no position table: they may run at a longer context than they trained on
        raise UserError(
            f"block_size={overrides['block_size']} is larger than the checkpoint's "
            f"{saved['block_size']} learned positions; use block_size <= {saved['block_size']}"
        )
    return {k: v for k, v in saved.items() if k in keep and k not in SYSTEM_KEYS}


# ----------------------------------------------------------------------------------------
# combinations: what each dataclass cannot check alone


def validate(cfg, overrides):
    """Impossible combinations across sections and with this machine, found before any
    work is done (each key's own domain is its dataclass's __post_init__)."""
    tc, mc, pc = cfg.train, cfg.model, cfg.peft
    if tc.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device='{tc.device}' but this PyTorch sees no CUDA GPU; use --device=cpu")
    if tc.dtype == "float16" and not tc.device.startswith("cuda") and not (
        tc.device == "auto" and torch.cuda.is_available()
    ):
        raise UserError("dtype='float16' needs a CUDA GPU (fp16 with a GradScaler); on CPU use bfloat16 or float32")
    if cfg.kd.kd_on_policy and cfg.kd.kd_rollout_len > mc.block_size:
        raise UserError(f"kd_rollout_len={cfg.kd.kd_rollout_len} leaves no prompt in a window of "
                        f"block_size={mc.block_size}: use kd_rollout_len <= {mc.block_size}")
    if tc.qat_bits and (pc.peft != "none" or mc.moe_num_experts):
        raise UserError(f"qat_bits={tc.qat_bits} fake-quantizes the blocks' plain Linear layers: not with "
                        f"{'peft=' + pc.peft if pc.peft != 'none' else 'MoE experts'} (QLoRA is not built yet)")
    if tc.init_from not in ("scratch", "resume") and os.path.realpath(tc.init_from) == os.path.realpath(tc.out_dir):
        # the run's first checkpoint would replace the weights it starts from (and that a PEFT run's hash names)
        raise UserError(f"out_dir={tc.out_dir} is the folder of init_from={tc.init_from}: the run would overwrite "
                        f"the checkpoint it starts from; give the fine-tune its own --out_dir")
    if cfg.kd.teacher and os.path.realpath(cfg.kd.teacher) == os.path.realpath(tc.out_dir):
        raise UserError(f"out_dir={tc.out_dir} is the teacher's folder: the student's checkpoints would overwrite "
                        f"the teacher's; give the student its own --out_dir")
    if pc.peft != "none" and tc.init_from == "scratch":
        raise UserError(f"peft='{pc.peft}' adapts a trained model: set init_from to its run folder "
                        f"(e.g. --init_from=out-peft-base), not 'scratch'")
    for key in overrides:
        for method, prefix in PEFT_METHOD_KEYS.items():
            if key.startswith(prefix) and pc.peft != method:
                raise UserError(f"{key} is a setting of peft='{method}' but peft='{pc.peft}'; "
                                f"add --peft={method} or drop --{key}")
    for table, section in ((MODEL_SETTING_OF, mc), (TRAIN_SETTING_OF, tc)):
        for key, (option, values) in table.items():
            values = values if isinstance(values, tuple) else (values,)
            if key in overrides and getattr(section, option) not in values:
                raise UserError(f"{key} is a setting of {option}={' or '.join(map(repr, values))} but "
                                f"{option}={getattr(section, option)!r}; add --{option}={values[0]} or drop --{key}")
    if tc.curriculum == "seqlen":
        tokens = tc.batch_size * mc.block_size
        if mc.block_size % 8 or tokens % tc.curriculum_start_len or tc.curriculum_start_len > mc.block_size:
            raise UserError(f"curriculum='seqlen' grows windows from curriculum_start_len={tc.curriculum_start_len} to "
                            f"block_size={mc.block_size} in multiples of 8 that divide batch_size * block_size = "
                            f"{tokens}: use a block_size that is a multiple of 8 and a start length dividing {tokens}")
    if tc.datasets:
        names = list(parse_mixture(tc.datasets))
        parse_stages(tc.stages, names)
        if tc.curriculum != "none" or cfg.kd.teacher or cfg.kd.soft_labels:
            raise UserError("datasets (a mixture) draws windows of its own: it does not combine with a curriculum "
                            "or distillation yet; drop one of them")
    elif tc.stages:
        raise UserError("stages change the weights of datasets: give --datasets=name:weight,... too")
    if tc.curriculum != "none" and cfg.kd.soft_labels:
        raise UserError(f"curriculum='{tc.curriculum}' draws windows of its own, but a soft-label cache fixes the "
                        f"windows; drop --soft_labels or the curriculum")
    if pc.peft == "lora" and pc.lora_r > mc.n_embd:
        raise UserError(f"lora_r={pc.lora_r} is above n_embd={mc.n_embd}: B A cannot have a higher rank than "
                        f"the layer's smaller side; use lora_r <= {mc.n_embd}")
    if pc.peft == "adapter" and pc.adapter_size > mc.n_embd:
        raise UserError(f"adapter_size={pc.adapter_size} is above n_embd={mc.n_embd}: an adapter is a bottleneck "
                        f"narrower than the stream; use adapter_size <= {mc.n_embd}")


def check_memory(cfg, vocab_size, device):
    """Refuse a run that cannot fit in this device's memory, by a lower bound on what it
    needs: fp32 weights (and, unless PEFT freezes them, their gradients and AdamW's two
    moments: 16 bytes per parameter), each block's input kept for the backward pass and
    the logits of one micro-batch. Counts only the large matrices, so it never refuses a
    run that fits; it turns a huge key (n_layer=10**9) into one line instead of an
    allocation failure or the kernel's OOM killer."""
    tc, mc = cfg.train, cfg.model
    C, L, T, B, V = mc.n_embd, mc.n_layer, mc.block_size, tc.batch_size, vocab_size
    Ls, E = mc.n_stored_blocks(), mc.emb_dim  # shared blocks are stored once; a factorized table is V x E
    n_moe = Ls // mc.moe_every if mc.moe_num_experts > 0 else 0  # GPTConfig.is_moe_block, counted without a loop
    q, kv = mc.n_head * mc.head_size(), mc.kv_heads() * mc.head_size()  # q, and GQA's narrower k and v
    params = (V * E + E * C if E else V * C) + (T * C if mc.pos_emb == "learned" else 0)
    params += Ls * (2 * C * q + 2 * C * kv) + (Ls - n_moe) * 2 * C * (mc.mlp_hidden or 4 * C)
    params += n_moe * mc.moe_num_experts * 2 * C * mc.expert_hidden()
    per_param = 16 if cfg.peft.peft == "none" else 4
    activations = 4 * B * T * (C * L + V)
    need = per_param * params + activations
    if device.startswith("cuda"):
        have = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        widths = "".join(f", {k}={getattr(mc, k)}" for k in PRUNED_KEYS if getattr(mc, k))  # a pruned model's
        moe = f", moe_num_experts={mc.moe_num_experts}, moe_hidden={mc.moe_hidden}" if n_moe else ""
        raise UserError(
            f"this run needs at least {_readable(need / 2**30, ',.1f')} GiB ({_readable(params, ',')} parameters "
            f"at {per_param} bytes each for n_layer={L}, n_embd={C}{widths}, block_size={T}{moe}; activations of "
            f"batch_size={B} x block_size={T}) but {device} has {have / 2**30:,.1f} GiB; make them smaller"
        )


def _readable(x, fmt):
    """x formatted with fmt, or as 1e+30 when it is astronomically large (a typo'd key)."""
    return format(x, fmt) if x < 10**15 else f"{x:.3g}"
