# GPT-2's architecture, then the GPT-2 speedrun's changes added one at a time (each run keeps the
# ones before it): RMSNorm, RoPE, QK-norm, ReLU², zero-initialised projections, an untied head,
# logit soft-capping.
#   python sweep.py config/sweep_speedrun_options_char.py
base = ['config/study_shakespeare_char_cpu.py']
_steps = [('rmsnorm', {'norm': 'rmsnorm'}), ('rope', {'pos_enc': 'rope'}), ('qk_norm', {'qk_norm': True}),
          ('relu2', {'mlp': 'relu2'}), ('zero_init', {'zero_init_proj': True}),
          ('untied', {'tie_embeddings': False}), ('softcap', {'logit_softcap': 15.0})]
runs = {'gpt2': {}}
_options = {}
for _name, _change in _steps:
    _options = {**_options, **_change}
    runs[f'+{_name}'] = dict(_options)
out_dir = 'sweeps/speedrun_options_char'
