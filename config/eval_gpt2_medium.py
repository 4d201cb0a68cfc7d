# evaluate the base gpt2-medium on OpenWebText (prepare first: python data/openwebtext/prepare.py)
# n_layer=24, n_head=16, n_embd=1024
# 350M parameters
batch_size = 8
eval_iters = 500  # use more iterations to get good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'
