# One model on three tasks at once (README, "Multi-task training"): tiny shakespeare, Python
# source and sorting strings, in equal shares, one character vocabulary with a prefix per task
# (data/multitask/prepare.py). 4 layers, 128 wide, block 64; experiments/multitask_experiment.py
# trains it beside one smaller model per task and a LoRA per task on it.
#   python data/multitask/prepare.py --input ../shared/data/tinyshakespeare/input.txt
#   python train.py configs/multitask.py
#   python multitask.py --out_dir=out-multitask-run
out_dir = "out-multitask-run"
datasets = "multitask/shakespeare:1,multitask/python:1,multitask/sort:1"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 16
dropout = 0.0
max_iters = 1500
learning_rate = 4e-3  # half the 2-layer model's tuned 8e-3 (README, "Hyperparameters"): 4 layers, off the cliff
lr_schedule = "cosine"
warmup_iters = 75  # 5%
min_lr = 0.0
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 250
eval_iters = 50
log_interval = 10
dtype = "float32"
