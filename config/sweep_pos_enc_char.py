# Positional encodings compared: a learned table (GPT-2), fixed sinusoids, rotary (RoPE), none.
#   python sweep.py config/sweep_pos_enc_char.py
base = ['config/study_shakespeare_char_cpu.py']
runs = {
    'learned': {'pos_enc': 'learned'},
    'sinusoidal': {'pos_enc': 'sinusoidal'},
    'rope': {'pos_enc': 'rope'},
    'none': {'pos_enc': 'none'},
}
out_dir = 'sweeps/pos_enc_char'
