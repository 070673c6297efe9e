# The MoE experiment's model (experiments/moe_experiment.py): nanoGPT's CPU recipe for character-level
# tiny shakespeare (configs/shakespeare_char_cpu.py) with every feed-forward an MoE of 8
# experts, top-2, each expert half the dense MLP's width: the same active parameters per
# token as the dense model, 4x its feed-forward parameters. Prepare the data first:
#   python data/shakespeare_char/prepare.py --input ../shared/data/tinyshakespeare/input.txt
#   python train.py configs/moe_shakespeare.py                          # top-2 MoE
#   python train.py configs/moe_shakespeare.py --moe_num_experts=0      # the dense model
out_dir = "out-moe/top2"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 50
log_interval = 10

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

moe_num_experts = 8
moe_top_k = 2
moe_router = "topk"
moe_aux_loss_coef = 1e-2  # Switch's default
moe_z_loss_coef = 1e-3  # ST-MoE's default
