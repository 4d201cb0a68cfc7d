"""How the prepare scripts choose their workers (--num_workers auto | N; nanogpt.data.workers.choose_workers)
from their speed measured on this CPU (measured_speed, cached), and that they run on the workers they chose."""
import json
import os
import re
import threading
import time

import pytest
from conftest import SHARED_DATA, load_prepared, run_prepare

from nanogpt import files
from nanogpt.data import bpe, char, workers
from nanogpt.data.sources import Corpus
from nanogpt.data.workers import RAY_COST_FILE, RAY_FIXED_S, RAY_SHARE_FILE, Speed, choose_workers, measured_speed

SPEED = Speed(mb_per_s=200.0, ray_efficiency=0.8)
# the pipelines' figures on the 2-core Xeon of docs/data.md ("Choosing the workers"), as examples of real speeds
XEON_CHAR = Speed(mb_per_s=165.0, ray_efficiency=char.RAY_EFFICIENCY)
XEON_BPE = Speed(mb_per_s=12.7, ray_efficiency=bpe.RAY_EFFICIENCY, gil_share=0.2)
# how the 'workers:' line names each kind of worker
WHERE = {'process': 'in this process', 'threads': 'threads in this process', 'ray': 'Ray workers'}


def predicted_seconds(plan, n_bytes, speed):
    """What choose_workers weighs: one worker's time, divided by the plan's speed-up, plus Ray's fixed cost."""
    one = n_bytes / (speed.mb_per_s * 1e6)
    if plan.kind == 'process':
        return one
    if plan.kind == 'threads':
        return one * (speed.gil_share + (1 - speed.gil_share) / plan.workers)
    return speed.ray_fixed_s + one / (speed.ray_efficiency * plan.workers)


def test_auto_picks_the_fastest_by_the_measured_figures():
    threaded = Speed(mb_per_s=10.0, ray_efficiency=0.85, gil_share=0.15)
    slow_ray = SPEED._replace(ray_fixed_s=60.0)  # as measured on a machine where Ray starts slowly
    for speed in (SPEED, threaded, XEON_CHAR, XEON_BPE, slow_ray):
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
    assert choose_workers('auto', 3e10, slow_ray, cpus=2)[:2] == ('process', 1)  # Ray's cost as measured here
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


# the pipelines' speeds on the Xeon: where Ray's start-up pays off, and BPE's threads (tiktoken releases the GIL)
REAL_CHOICES = [
    (XEON_CHAR, 2e6, 2, ('process', 1)),
    (XEON_CHAR, 6e9, 2, ('process', 1)),  # Ray pays off above 6.6 GB on 2 CPUs...
    (XEON_CHAR, 7e9, 2, ('ray', 2)),
    (XEON_CHAR, 1e9, 64, ('process', 1)),  # ...and above 1.1 GB on 64
    (XEON_CHAR, 1.2e9, 64, ('ray', 64)),
    (XEON_CHAR, 1e12, 1, ('process', 1)),  # one CPU: Ray would run at 0.6x
    (XEON_BPE, 1e6, 2, ('threads', 2)),
    (XEON_BPE, 1e12, 2, ('threads', 2)),  # 2 threads (1.67x) beat 2 Ray workers (1.4x) at any size
    (XEON_BPE, 1e12, 1, ('process', 1)),
    (XEON_BPE, 6.5e8, 8, ('threads', 8)),  # Ray pays off above 701 MB on 8 CPUs
    (XEON_BPE, 7.5e8, 8, ('ray', 8)),
    (XEON_BPE, None, 8, ('ray', 8)),  # unknown size (streaming): the fastest rate
]


@pytest.mark.parametrize('speed, n_bytes, cpus, expected', REAL_CHOICES,
                         ids=[f"{'char' if s is XEON_CHAR else 'bpe'}-{b}-{c}cpus" for s, b, c, _ in REAL_CHOICES])
def test_auto_chooses_the_kind_and_number_of_workers(speed, n_bytes, cpus, expected):
    assert choose_workers('auto', n_bytes, speed, cpus=cpus)[:2] == expected


@pytest.fixture
def speed_cache(tmp_path, monkeypatch):
    """An empty cache folder for this test (XDG_CACHE_HOME), a quiet machine as measured_speed sees it, and
    the cache file's path."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setattr(workers, '_others_cpu_seconds', lambda: 0.0)
    return tmp_path / 'cache' / 'nanogpt' / 'worker_speed.json'


_ONE_AT_A_TIME = threading.Lock()


def fake_work(seconds, gil):
    """A per-chunk function that runs `seconds` either as work that holds the GIL (one call at a time, as a
    lock serialises them: a busy machine cannot blur it the way it blurs a timed Python loop) or as work that
    releases it (calls overlap), and counts its calls."""
    def work(chunk):
        work.calls += 1
        assert chunk[0] == 'file' and os.path.getsize(chunk[1]) == chunk[3] > 0  # a chunk of a real .txt file
        if gil:
            with _ONE_AT_A_TIME:
                time.sleep(seconds)
        else:
            time.sleep(seconds)
    work.calls = 0
    return work


def test_speed_is_measured_once_per_cpu_model_then_read_from_the_cache(speed_cache, monkeypatch):
    work = fake_work(0.01, gil=False)
    first = measured_speed('fake', work, 1 << 20, 0.5, threads=True)
    measured = work.calls
    assert measured >= 4 and 'cached in' in first.source
    assert 40 < first.mb_per_s < 110  # 1 MiB in a bit over 10 ms
    assert first.gil_share < 0.3  # sleeping threads overlap
    assert measured_speed('fake', work, 1 << 20, 0.5, threads=True) == first and work.calls == measured  # reused
    (key, entry), = json.loads(speed_cache.read_text()).items()
    assert key.endswith(f"|{files.cpu_model()}|{workers.available_cpus()} cpus|fake|{workers.CALIBRATION}")
    assert entry[3] is True
    # another CPU model, another entry, measured on its own
    monkeypatch.setattr(files, 'cpu_model', lambda: 'Another CPU')
    measured_speed('fake', work, 1 << 20, 0.5, threads=True)
    assert work.calls > measured and len(json.loads(speed_cache.read_text())) == 2


def test_auto_weighs_the_fastest_of_the_last_ray_start_ups_recorded_here(speed_cache):
    """A busy machine's slow start-up must not keep Ray out for good: the fastest of the last few counts, and
    entries that are no number of seconds are left out."""
    work = fake_work(0.002, gil=False)
    key = f"{workers.available_cpus()} workers"
    files.record_measurement(RAY_COST_FILE, key, [30.0, 4.5, True, -1, 'x', 12.0])
    assert measured_speed('fake', work, 1 << 16, 0.5, threads=False).ray_fixed_s == 4.5
    files.record_measurement(RAY_COST_FILE, key, 'not a list')
    assert measured_speed('fake', work, 1 << 16, 0.5, threads=False).ray_fixed_s == RAY_FIXED_S


def test_auto_weighs_the_best_ray_worker_share_recorded_for_the_pipeline(speed_cache):
    work = fake_work(0.002, gil=False)
    cpus = workers.available_cpus()
    files.record_measurement(RAY_SHARE_FILE, f"{cpus} workers|fake", [0.5, 0.8, True, 1.5, 0.7])
    files.record_measurement(RAY_SHARE_FILE, f"{cpus} workers|other", [0.1])
    speed = measured_speed('fake', work, 1 << 16, 0.3, threads=False)
    cores = json.loads(speed_cache.read_text()).popitem()[1][2]  # 2 cores' measured scaling multiplies it
    assert speed.ray_efficiency == pytest.approx(0.8 * min(1.0, cores / 2)) and "share as measured" in speed.source


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason='../shared/data (real corpora) not present')
def test_a_run_on_a_local_ray_records_its_workers_share(tmp_path, speed_cache, monkeypatch):
    """What a run on a local Ray measures for auto besides its cost (test_scripts_say_what_they_chose...):
    the share of its workers' time that went into the pipeline's calls (recorded here for a run of any
    length), which auto then weighs for that pipeline."""
    import ray
    assert not ray.is_initialized()
    monkeypatch.setattr(workers, 'RAY_SHARE_MIN_S', 0.0)
    monkeypatch.setattr(workers, 'available_cpus', lambda: 2)
    corpus = Corpus([str(SHARED_DATA / 'tinystories_train_head2MiB.txt')])
    char.prepare(corpus, tmp_path / 'o', stories=True, val_fraction=0.1, seed=1, num_workers=2, chunk_size=1 << 18)
    assert not ray.is_initialized()  # started and shut down by the run
    (key, shares), = json.loads((speed_cache.parent / RAY_SHARE_FILE).read_text()).items()
    assert key.endswith('|2 workers|char') and len(shares) == 1 and 0 < shares[0] <= 1
    speed = char.speed()
    assert speed.ray_efficiency <= shares[0] and "share as measured here" in speed.source


@pytest.mark.parametrize('content', ['{"truncated', '[1, 2]', 'KEY', 'NEGATIVE', 'SHORT'])
def test_a_corrupt_cache_is_measured_again(speed_cache, content):
    work = fake_work(0.002, gil=False)
    good = measured_speed('fake', work, 1 << 16, 0.5, threads=False)
    (key, _), = json.loads(speed_cache.read_text()).items()
    speed_cache.write_text({'KEY': json.dumps({key: 'fast'}), 'NEGATIVE': json.dumps({key: [-1.0, None, 2.0, True]}),
                            'SHORT': json.dumps({key: [100.0, None]})}.get(content, content))
    calls = work.calls
    again = measured_speed('fake', work, 1 << 16, 0.5, threads=False)
    assert work.calls > calls and again.mb_per_s > 0 and again.gil_share is None
    assert json.loads(speed_cache.read_text())[key][0] > 0 and good.mb_per_s > 0


def test_a_measurement_on_a_busy_machine_is_used_but_not_kept(speed_cache, monkeypatch):
    busy = iter(range(0, 1000, 10))  # other processes take 10 CPU seconds between any two looks
    monkeypatch.setattr(workers, '_others_cpu_seconds', lambda: next(busy))
    work = fake_work(0.002, gil=False)
    speed = measured_speed('fake', work, 1 << 16, 0.5, threads=True)
    assert speed.mb_per_s > 0 and 'not cached' in speed.source
    calls = work.calls
    measured_speed('fake', work, 1 << 16, 0.5, threads=True)
    assert work.calls > calls  # measured again


def test_auto_follows_the_measured_speed(speed_cache, monkeypatch):
    """Work that releases the GIL runs on threads; work that holds it, in one worker: as measured here."""
    monkeypatch.setattr(workers, '_hash', lambda block: time.sleep(0.005))  # cores that run 2 things at once
    released = measured_speed('releases', fake_work(0.01, gil=False), 1 << 16, 0.8, threads=True)
    held = measured_speed('holds', fake_work(0.01, gil=True), 1 << 16, 0.8, threads=True)
    assert released.gil_share < 0.3 and held.gil_share > 0.7
    assert choose_workers('auto', 1e6, released, cpus=2)[:2] == ('threads', 2)  # 0.15 s of work: no Ray
    assert choose_workers('auto', 1e6, held, cpus=2)[:2] == ('process', 1)
    # cores that do not run 2 things at once (2 hyperthreads of one core, or cores that other jobs hold), here
    # a hash that holds the GIL: Ray's workers would not scale either
    def serial_hash(block):
        fake_work(0.005, gil=True)(('file', __file__, 0, os.path.getsize(__file__)))
    monkeypatch.setattr(workers, '_hash', serial_hash)
    no_cores = measured_speed('no cores', fake_work(0.01, gil=False), 1 << 16, 0.8, threads=True)
    assert no_cores.ray_efficiency < 0.5 and released.ray_efficiency > 0.6
    assert choose_workers('auto', 1e12, no_cores._replace(gil_share=None), cpus=2)[:2] == ('process', 1)
    # one worker's measured speed moves the size where Ray's start-up pays off
    slow, fast = (Speed(mb_per_s, 0.8, source='measured') for mb_per_s in (10.0, 1000.0))
    assert choose_workers('auto', 1e9, slow, cpus=8)[:2] == ('ray', 8)
    assert choose_workers('auto', 1e9, fast, cpus=8)[:2] == ('process', 1)
    assert choose_workers('auto', 1e9, fast, cpus=8).reason.endswith('; measured')
    # the speed is measured only where auto needs it
    def unmeasurable():
        raise AssertionError('measured')
    choose_workers(2, 1e9, unmeasurable)
    choose_workers('auto', 1e9, unmeasurable, ray_address='auto')


def test_the_pipelines_measure_their_own_per_chunk_work(speed_cache, monkeypatch):
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(SHARED_DATA / 'tiktoken_cache'))
    c = char.speed()
    assert c.mb_per_s > 10 and 0 <= c.gil_share <= 1 and 0 < c.ray_efficiency <= char.RAY_EFFICIENCY
    b = bpe.speed({'tokenizer': 'gpt2'})
    assert 1 < b.mb_per_s < c.mb_per_s and 0 <= b.gil_share <= 1 and 0 < b.ray_efficiency <= bpe.RAY_EFFICIENCY
    assert sorted(k.split('|')[-2] for k in json.loads(speed_cache.read_text())) == ['bpe', 'char']


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
def test_scripts_say_what_they_chose_and_obey_num_workers(tmp_path, speed_cache, monkeypatch):
    corpus = SHARED_DATA / 'tinystories_train_head2MiB.txt'
    # this machine's CPUs and speed, as the script reads them from the cache measured here
    plan = choose_workers('auto', Corpus([str(corpus)]).text_bytes(), char.speed)
    r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', tmp_path / 'auto')
    assert r.returncode == 0, r.stderr
    # 2 MB: Ray's start-up would cost more than it saves on any machine; one worker or threads, as measured
    assert plan.kind in ('process', 'threads')
    where = 'in this process' if plan.kind == 'process' else 'threads in this process'
    assert workers_line(r.stdout) == f"workers: {plan.workers or 1} {where} ({plan.reason})"
    assert plan.reason.startswith('2 MB; ') and ray_tasks(r.stdout) is None  # Ray not started
    assert char.speed().ray_fixed_s == RAY_FIXED_S  # no local Ray has run here yet: the stand-in figure
    r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', tmp_path / 'two', '--num_workers', '2')
    assert r.returncode == 0, r.stderr
    assert workers_line(r.stdout) == 'workers: 2 Ray workers (--num_workers 2)'
    # the run timed what Ray cost it (import, start, shutdown: seconds), which auto now weighs on 2 CPUs
    (key, ray_costs), = json.loads((speed_cache.parent / RAY_COST_FILE).read_text()).items()
    assert key.endswith('|2 workers') and len(ray_costs) == 1 and 0.5 < ray_costs[0] < 120
    monkeypatch.setattr(workers, 'available_cpus', lambda: 2)
    assert char.speed().ray_fixed_s == ray_costs[0] and "Ray's start-up as measured here" in char.speed().source
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
def test_bpe_default_matches_one_worker(tmp_path, speed_cache, monkeypatch):
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(SHARED_DATA / 'tiktoken_cache'))  # the scripts get this environment
    corpus = SHARED_DATA / 'c4_sample_1000docs.jsonl.gz'
    # what auto picks on this machine for this corpus, by the speed measured here and read from the cache by the script
    plan = choose_workers('auto', Corpus([str(corpus)]).text_bytes(), lambda: bpe.speed({'tokenizer': 'gpt2'}))
    expected = {'auto': f"workers: {plan.workers} {WHERE[plan.kind]} ({plan.reason})",
                'one': 'workers: 1 in this process (--num_workers 1)'}
    for name, extra in (('auto', ['--chunk_size', '100K']), ('one', ['--num_workers', '1'])):
        r = run_prepare('openwebtext', '--input', corpus, '--out_dir', tmp_path / name, *extra)
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
