"""bench.py as a user runs it on a CPU: ms/iter, tokens/s and an MFU against the CPU's measured
matmul peak (measured once, then read from the cache), the architecture options, and a profile;
and the GPU data-sheet table MFU reads on GPUs."""

import json
import re

import pytest
from conftest import run_script

from nanogpt.device import PEAK_FLOPS_16BIT, gpu_peak_flops

TINY = ['--device=cpu', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16',
        '--batch_size=2', '--warmup_iters=1', '--bench_iters=2']


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_takes_a_peak_override_the_architecture_options_and_writes_a_profile(tmp_path):
    out = run_script('bench.py', *TINY, '--peak_flops=1e6', '--pos_enc=rope', '--mlp=swiglu', '--profile=True',
                     cwd=tmp_path).stdout
    assert 'peak_flops from the config' in out and (tmp_path / 'bench_trace.json').stat().st_size > 1000


@pytest.mark.parametrize('name, row', [('NVIDIA GH200 480GB', 'GH200'), ('NVIDIA H200', 'H200'),
                                       ('NVIDIA H100 NVL', 'H100 NVL'), ('NVIDIA H100 80GB HBM3', 'H100'),
                                       ('NVIDIA A100-SXM4-80GB', 'A100'), ('NVIDIA A10', 'A10'), ('NVIDIA L40S', 'L40S')])
def test_a_gpu_is_matched_to_its_own_row_of_the_peak_flops_table(name, row):
    flops, matched = gpu_peak_flops(name, 'bfloat16')
    assert matched == row and flops == PEAK_FLOPS_16BIT[row]
    assert gpu_peak_flops(name, 'float32') == (PEAK_FLOPS_16BIT[row] / 2, row)  # TF32 at half the rate
    assert gpu_peak_flops('Some Future GPU', 'bfloat16') == (None, None)
