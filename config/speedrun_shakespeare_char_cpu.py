# The speedrun recipe for a laptop CPU: the character-level shakespeare model to a val loss of
# 1.88 or less (on the whole val set) in a third of the time nanoGPT's CPU command takes.
#   python data/shakespeare_char/prepare.py
#   python train.py config/speedrun_shakespeare_char_cpu.py
# What it changes from config/train_shakespeare_char_cpu.py: Muon for the hidden matrices at a
# high learning rate, rotary positions, RMSNorm with QK-norm, ReLU², zero-initialised projections,
# an untied head, fewer iterations on larger batches, and one evaluation, at the end, on the
# whole val set instead of periodic estimates.

out_dir = 'out-speedrun-char'
eval_interval = 100000  # no evaluation during the run...
eval_iters = 1
eval_full_val = True  # ...one, at the end, on the whole val set
log_interval = 25
always_save_checkpoint = True

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 24
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
pos_enc = 'rope'
norm = 'rmsnorm'
qk_norm = True
mlp = 'relu2'
zero_init_proj = True
tie_embeddings = False

optimizer = 'muon'
muon_lr = 0.03
learning_rate = 3e-3
max_iters = 215
lr_decay_iters = 215
warmup_iters = 20
min_lr = 3e-4
beta2 = 0.99
weight_decay = 0.0

device = 'cpu'
compile = False
