# The small model the hyperparameter experiments sweep (README, "Hyperparameters"):
# character-level tiny shakespeare, 2 layers, 128 wide (the experiments vary n_embd),
# 600 steps of 16 x 64 tokens. Minutes on a 2-core CPU per sweep of a dozen runs.
#   python train.py configs/hparam_char.py
#   python sweep.py configs/hparam_char.py --grid learning_rate=1e-3,3e-3,1e-2 --jobs 2 --out sweeps/lr
out_dir = "out-hparam-run"  # (the experiments write under out-hparam/)
dataset = "shakespeare_char"
n_layer = 2
n_head = 4
n_embd = 128
block_size = 64
batch_size = 16
dropout = 0.0
max_iters = 600
learning_rate = 8e-3  # the best of the widths experiment's sweep at width 128 (README, "Hyperparameters")
lr_schedule = "cosine"
warmup_iters = 30  # 5%
min_lr = 0.0  # the decay ends at 0, so a swept learning_rate never falls below it
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 600  # one evaluation, at the end
eval_iters = 50
log_interval = 5
dtype = "float32"
