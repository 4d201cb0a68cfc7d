"""How the prepare scripts choose their workers (--num_workers auto | N; nanogpt.data.workers.choose_workers),
and that they run on the workers they chose."""
import os
import re

import pytest
from conftest import SHARED_DATA, load_prepared, run_prepare

from nanogpt.data import bpe, char
from nanogpt.data.sources import Corpus
from nanogpt.data.workers import RAY_FIXED_S, Speed, choose_workers

SPEED = Speed(mb_per_s=200.0, ray_efficiency=0.8)
# how the 'workers:' line names each kind of worker
WHERE = {'process': 'in this process', 'threads': 'threads in this process', 'ray': 'Ray workers'}


def predicted_seconds(plan, n_bytes, speed):
    """What choose_workers weighs: one worker's time, divided by the plan's speed-up, plus Ray's fixed cost."""
    one = n_bytes / (speed.mb_per_s * 1e6)
    if plan.kind == 'process':
        return one
    if plan.kind == 'threads':
        return one * (speed.gil_share + (1 - speed.gil_share) / plan.workers)
    return RAY_FIXED_S + one / (speed.ray_efficiency * plan.workers)


def test_auto_picks_the_fastest_by_the_measured_figures():
    threaded = Speed(mb_per_s=10.0, ray_efficiency=0.85, gil_share=0.15)
    for speed in (SPEED, threaded, char.SPEED, bpe.SPEED):
        for cpus in (2, 8, 64):
            for n_bytes in (1e6, 1e8, 3e8, 1e9, 2.5e9, 1e10, 1e11):
                plan = choose_workers('auto', n_bytes, speed, cpus=cpus)
                alternatives = [choose_workers('auto', None, speed, cpus=cpus),  # the best without start-up costs
                                choose_workers(1, n_bytes, speed, cpus=cpus),
                                choose_workers(cpus, n_bytes, speed, cpus=cpus)]
                best = min(predicted_seconds(p, n_bytes, speed) for p in alternatives)
                assert predicted_seconds(plan, n_bytes, speed) <= best * (1 + 1e-9), (speed, cpus, n_bytes, plan)
    # on 2 CPUs 3 GB stays in this process and 30 GB goes to Ray on every CPU; more CPUs, a lower threshold
    assert choose_workers('auto', 3e9, SPEED, cpus=2)[:2] == ('process', 1)
    assert choose_workers('auto', 3e10, SPEED, cpus=2)[:2] == ('ray', 2)
    assert choose_workers('auto', 3e9, SPEED, cpus=64)[:2] == ('ray', 64)
    assert choose_workers('auto', 1e9, SPEED, cpus=1)[:2] == ('process', 1)
    # threads that scale as well as Ray are always preferred on one machine: no start-up to pay
    assert choose_workers('auto', 1e11, Speed(10.0, 0.85, gil_share=0.0), cpus=4)[:2] == ('threads', 4)
    # unknown size (a streamed dataset): the fastest rate
    assert choose_workers('auto', None, SPEED, cpus=2)[:2] == ('ray', 2)


def test_explicit_workers_and_ray_address_are_obeyed():
    assert choose_workers(1, 1e12, SPEED, cpus=64)[:2] == ('process', 1)
    assert choose_workers(3, 1e3, SPEED, cpus=2)[:2] == ('ray', 3)
    assert choose_workers(1, 1e3, SPEED, ray_address='auto') == ('ray', 1, '--num_workers 1', 'auto')
    plan = choose_workers('auto', 1e3, SPEED, ray_address='10.0.0.1:6379')
    assert plan.kind == 'ray' and plan.workers is None and plan.address == '10.0.0.1:6379'  # all the cluster's CPUs


# the pipelines' own measured speeds: where Ray's start-up pays off, and BPE's threads (tiktoken releases the GIL)
REAL_CHOICES = [
    (char.SPEED, 2e6, 2, ('process', 1)),
    (char.SPEED, 6e9, 2, ('process', 1)),  # Ray pays off above 6.6 GB on 2 CPUs...
    (char.SPEED, 7e9, 2, ('ray', 2)),
    (char.SPEED, 1e9, 64, ('process', 1)),  # ...and above 1.1 GB on 64
    (char.SPEED, 1.2e9, 64, ('ray', 64)),
    (char.SPEED, 1e12, 1, ('process', 1)),  # one CPU: Ray would run at 0.6x
    (bpe.SPEED, 1e6, 2, ('threads', 2)),
    (bpe.SPEED, 1e12, 2, ('threads', 2)),  # 2 threads (1.67x) beat 2 Ray workers (1.4x) at any size
    (bpe.SPEED, 1e12, 1, ('process', 1)),
    (bpe.SPEED, 6.5e8, 8, ('threads', 8)),  # Ray pays off above 701 MB on 8 CPUs
    (bpe.SPEED, 7.5e8, 8, ('ray', 8)),
    (bpe.SPEED, None, 8, ('ray', 8)),  # unknown size (streaming): the fastest rate
]


@pytest.mark.parametrize('speed, n_bytes, cpus, expected', REAL_CHOICES,
                         ids=[f"{'char' if s is char.SPEED else 'bpe'}-{b}-{c}cpus" for s, b, c, _ in REAL_CHOICES])
def test_auto_chooses_the_kind_and_number_of_workers(speed, n_bytes, cpus, expected):
    assert choose_workers('auto', n_bytes, speed, cpus=cpus)[:2] == expected


def workers_line(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith('workers:')]
    assert len(lines) == 1, stdout
    return lines[0]


def ray_tasks(stdout):
    """The tasks that came back from Ray workers, by its closing line 'ray: N tasks on M node(s) (...)'; None without one."""
    found = re.findall(r'^ray: (\d+) tasks on (\d+) nodes? \(', stdout, re.M)
    assert len(found) <= 1, stdout
    return tuple(map(int, found[0])) if found else None


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason='../shared/data (real corpora) not present')
def test_scripts_say_what_they_chose_and_obey_num_workers(tmp_path):
    corpus = SHARED_DATA / 'tinystories_train_head2MiB.txt'
    r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', tmp_path / 'auto')
    assert r.returncode == 0, r.stderr
    plan = choose_workers('auto', Corpus([str(corpus)]).text_bytes(), char.SPEED)  # this machine's CPUs, as the script
    assert plan[:2] == ('process', 1)  # 2 MB: Ray's start-up would cost more than it saves on any machine
    assert workers_line(r.stdout) == f"workers: 1 in this process ({plan.reason})"
    assert plan.reason.startswith('2 MB; ') and ray_tasks(r.stdout) is None  # Ray not started
    r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', tmp_path / 'two', '--num_workers', '2')
    assert r.returncode == 0, r.stderr
    assert workers_line(r.stdout) == 'workers: 2 Ray workers (--num_workers 2)'
    tasks, nodes = ray_tasks(r.stdout)  # the work came back from Ray's tasks
    assert tasks >= 2 and nodes == 1, r.stdout
    assert [(tmp_path / 'auto' / f).read_bytes() for f in ('train.bin', 'val.bin')] == \
        [(tmp_path / 'two' / f).read_bytes() for f in ('train.bin', 'val.bin')]
    for bad in ('0', 'many'):
        r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', tmp_path / 'bad', '--num_workers', bad)
        assert r.returncode == 2 and r.stderr.startswith('error: argument --num_workers: '), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason='../shared/data (real corpora) not present')
def test_bpe_default_matches_one_worker(tmp_path):
    env = {'TIKTOKEN_CACHE_DIR': str(SHARED_DATA / 'tiktoken_cache')}
    corpus = SHARED_DATA / 'c4_sample_1000docs.jsonl.gz'
    # what auto picks on this machine for this corpus (threads wherever there are 2 CPUs or more)
    plan = choose_workers('auto', Corpus([str(corpus)]).text_bytes(), bpe.SPEED)
    expected = {'auto': f"workers: {plan.workers} {WHERE[plan.kind]} ({plan.reason})",
                'one': 'workers: 1 in this process (--num_workers 1)'}
    for name, extra in (('auto', ['--chunk_size', '100K']), ('one', ['--num_workers', '1'])):
        r = run_prepare('openwebtext', '--input', corpus, '--out_dir', tmp_path / name, *extra, env=env)
        assert r.returncode == 0, r.stderr
        assert workers_line(r.stdout) == expected[name]
        assert (ray_tasks(r.stdout) is not None) == (name == 'auto' and plan.kind == 'ray'), r.stdout
    assert load_prepared(tmp_path / 'auto')[0] == load_prepared(tmp_path / 'one')[0]
    assert [(tmp_path / 'auto' / f).read_bytes() for f in ('train.bin', 'val.bin')] == \
        [(tmp_path / 'one' / f).read_bytes() for f in ('train.bin', 'val.bin')]


def test_auto_counts_the_cpus_a_container_allows(tmp_path):
    """A container's CPU quota (cgroup v2 cpu.max, or v1's cfs quota) caps the workers below the host's CPU
    count; no quota leaves the CPUs of the process's affinity."""
    from nanogpt.data.workers import available_cpus
    mine = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / 'none') == mine
    (tmp_path / 'v2').mkdir()
    (tmp_path / 'v2' / 'cpu.max').write_text('max 100000\n')
    assert available_cpus(tmp_path / 'v2') == mine
    (tmp_path / 'v2' / 'cpu.max').write_text('50000 100000\n')  # half a CPU: one worker
    assert available_cpus(tmp_path / 'v2') == 1
    (tmp_path / 'v1' / 'cpu').mkdir(parents=True)
    (tmp_path / 'v1' / 'cpu' / 'cpu.cfs_quota_us').write_text('100000\n')
    (tmp_path / 'v1' / 'cpu' / 'cpu.cfs_period_us').write_text('100000\n')
    assert available_cpus(tmp_path / 'v1') == 1
