# The ablation study: which parts of the transformer matter? Each run removes one.
#   python data/shakespeare_char/prepare.py
#   python sweep.py config/sweep_ablation_char.py
base = ['config/study_shakespeare_char_cpu.py']
runs = {
    'original': {},
    'no_norm': {'norm': 'none'},
    'no_pos_enc': {'pos_enc': 'none'},
    'no_attention': {'attention': False, 'pos_enc': 'none'},  # positions only matter to attention
    'no_residual': {'residual': False},
}
out_dir = 'sweeps/ablation_char'
