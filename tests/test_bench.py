"""bench.py as a user runs it on a CPU: ms/iter, tokens/s and an MFU against the CPU's measured
matmul peak (measured once, then read from the cache), the architecture options, and a profile."""

import json
import re

from conftest import run_script

TINY = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16',
        '--batch_size=2', '--warmup_iters=1', '--bench_iters=2']


def test_bench_reports_mfu_on_a_cpu_against_a_measured_and_cached_peak(tmp_path):
    env = {'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    first = run_script('bench.py', *TINY, cwd=tmp_path, env=env).stdout
    m = re.search(r'([\d.]+) ms/iter, ([\d,]+) tokens/s, MFU ([\d.]+)% \(float32 matmul peak measured on this CPU', first)
    assert m and float(m[1]) > 0 and float(m[3]) > 0, first
    cache = json.loads((tmp_path / 'cache' / 'nanogpt' / 'cpu_peak_flops.json').read_text())
    (key, peak), = cache.items()
    assert key.endswith('|float32') and 1e9 < peak < 1e14
    # the second run reads the cached peak: a planted one shows in the MFU
    (tmp_path / 'cache' / 'nanogpt' / 'cpu_peak_flops.json').write_text(json.dumps({key: 1.0}))
    second = run_script('bench.py', *TINY, cwd=tmp_path, env=env).stdout
    assert float(re.search(r'MFU ([\d.]+)%', second)[1]) > 1e6


def test_bench_takes_a_peak_override_the_architecture_options_and_writes_a_profile(tmp_path):
    out = run_script('bench.py', *TINY, '--peak_flops=1e6', '--pos_enc=rope', '--mlp=swiglu', '--profile=True',
                     cwd=tmp_path).stdout
    assert 'peak_flops from the config' in out and (tmp_path / 'bench_trace.json').stat().st_size > 1000
