# The base model of the PEFT experiment (experiments/peft_experiment.py): a small character-level GPT
# pretrained on tiny shakespeare without two characters' speeches (GLOUCESTER, JULIET),
# which are then the fine-tuning targets. Prepare the data first:
#   python data/shakespeare_char/prepare.py --hold_out GLOUCESTER,JULIET
#   python train.py configs/peft_base.py          # ~4 minutes on 2 CPU cores

out_dir = "out-peft/base"
dataset = "shakespeare_voices/base"

# 4 layers x 192 wide (1.8M parameters), a 128-character context
n_layer = 4
n_head = 4
n_embd = 192
block_size = 128
dropout = 0.0

batch_size = 12
max_iters = 1500
learning_rate = 2e-3  # a small model tolerates a large step (nanoGPT's CPU recipe uses 1e-3 at 128 wide)
warmup_iters = 100
min_lr = 1e-4
eval_interval = 500
eval_iters = 50
log_interval = 50
