# The distillation experiment's teacher (experiments/distill_experiment.py): 4 layers x 192 wide (1.8M
# parameters), character-level tiny shakespeare. Prepare the data first:
#   python data/shakespeare_char/prepare.py --input ../shared/data/tinyshakespeare/input.txt
#   python train.py configs/distill_teacher.py          # ~4 minutes on 2 CPU cores
out_dir = "out-distill/teacher"
dataset = "shakespeare_char"
n_layer = 4
n_head = 4
n_embd = 192
block_size = 128
dropout = 0.0
batch_size = 12
max_iters = 1500
learning_rate = 2e-3
warmup_iters = 100
min_lr = 1e-4
eval_interval = 250
eval_iters = 50
log_interval = 50
