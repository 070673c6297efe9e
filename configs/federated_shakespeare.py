# The federated experiment's model and local training (experiments/federated_experiment.py):
# a small character-level GPT trained by federated.py over tiny shakespeare's speakers.
#   python federated.py prepare --input ../shared/data/tinyshakespeare/input.txt
#   python federated.py configs/federated_shakespeare.py --out_dir=out-fed/fedavg   # + --fed_* keys
out_dir = "out-fed/run"
n_layer = 2
n_head = 4
n_embd = 64
block_size = 64
dropout = 0.0
batch_size = 8  # B: each client's local batch
learning_rate = 0.5  # local SGD's step (fed_local_opt=sgd, McMahan et al.); constant
grad_clip = 1.0
eval_iters = 40  # fixed batches of the clients' pooled val text
