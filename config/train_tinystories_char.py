# a small character-level GPT on TinyStories
# prepare first: python data/tinystories_char/prepare.py   (or --input TinyStoriesV2-GPT4-train.txt offline)
# every story ends with the <|endoftext|> symbol, so the model learns where stories stop

out_dir = 'out-tinystories-char'
eval_interval = 500
eval_iters = 200
log_interval = 10

# ~2 GB of text: no risk of overfitting in a short run, so keep the latest checkpoint
always_save_checkpoint = True

wandb_log = False  # override via command line if you like
wandb_project = 'tinystories-char'
wandb_run_name = 'mini-gpt'

dataset = 'tinystories_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # a quarter of a typical story, in characters

# baby GPT model, as for shakespeare_char
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.1

learning_rate = 1e-3  # with baby networks can afford to go a bit higher
max_iters = 20000
lr_decay_iters = 20000  # make equal to max_iters usually
min_lr = 1e-4  # learning_rate / 10 usually
beta2 = 0.99  # make a bit bigger because number of tokens per iter is small

warmup_iters = 200

# on a laptop also add
# device = 'cpu'  # run on cpu only
# compile = False # do not torch compile the model
