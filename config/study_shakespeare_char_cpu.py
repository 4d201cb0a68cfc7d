# The base of the shipped studies (config/sweep_*_char.py): a small character-level model that
# trains in under a minute on a 2-core CPU, so that a study of five variants takes minutes.
#   python train.py config/study_shakespeare_char_cpu.py --pos_enc=rope

out_dir = 'out-study'
eval_interval = 200
eval_iters = 20
log_interval = 20
eval_full_val = True  # the comparison uses the loss on the whole val set

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 32

n_layer = 4
n_head = 4
n_embd = 64
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
