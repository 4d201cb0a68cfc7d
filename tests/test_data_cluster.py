"""Data preparation on a real two-node Ray cluster on this machine (conftest.ray_cluster): a prepare script
joins it with --ray_address, its tasks run there, and the bins are byte-identical to the in-process
result. slurm/prepare_ray.sbatch itself runs on the two-host SLURM cluster, in tests/test_cluster.py."""
import gzip
import os
import re
import subprocess
import sys

import pytest
from conftest import SHARED_DATA, run_prepare

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.is_dir(), reason='../shared/data (real corpora) not present')]
BINS = ('train.bin', 'val.bin', 'meta.json')


def tasks_per_node(stdout):
    """{node id prefix: tasks} from the line "ray: 34 tasks on 2 nodes (1a2b3c4d 17, 5e6f7a8b 17)"."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith('ray: ')), None)
    assert line, f"no tasks-per-node line in:\n{stdout}"
    return {node: int(n) for node, n in re.findall(r'([0-9a-f]{8}) (\d+)', line)}


def test_prepare_on_two_nodes_matches_in_process_bytes(tmp_path, ray_cluster):
    address, cluster_env = ray_cluster
    c4 = tmp_path / 'c4.jsonl'
    c4.write_bytes(gzip.decompress((SHARED_DATA / 'c4_sample_1000docs.jsonl.gz').read_bytes()))
    tiktoken = {'TIKTOKEN_CACHE_DIR': str(SHARED_DATA / 'tiktoken_cache')}
    for name, corpus in (('tinystories_char', SHARED_DATA / 'tinystories_train_head2MiB.txt'), ('openwebtext', c4)):
        local, cluster = tmp_path / name / 'local', tmp_path / name / 'cluster'
        r = run_prepare(name, '--input', corpus, '--out_dir', local, '--num_workers', '1', env=tiktoken)
        assert r.returncode == 0 and 'workers: 1 in this process' in r.stdout, r.stderr
        r = run_prepare(name, '--input', corpus, '--out_dir', cluster, '--ray_address', address, '--chunk_size', '64K',
                        env={**tiktoken, **cluster_env})
        assert r.returncode == 0, r.stdout + r.stderr
        assert f'workers: 2 Ray workers on the cluster at {address}' in r.stdout, r.stdout  # every CPU of both nodes
        counts = tasks_per_node(r.stdout)
        print(f"{name}: tasks per node {counts}")
        # the work ran as the cluster's tasks; Ray's SPREAD does not promise both nodes a share of a job this
        # small (once in a CI run, all 8 tasks ran on one): tests/test_cluster.py counts tasks per host
        assert sum(counts.values()) > 0, r.stdout
        assert [(cluster / f).read_bytes() for f in BINS] == [(local / f).read_bytes() for f in BINS]


def test_joining_without_token_auth_is_a_one_line_error(tmp_path, ray_cluster):
    address, _ = ray_cluster
    corpus = SHARED_DATA / 'tinystories_train_head2MiB.txt'
    r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', tmp_path, '--ray_address', address,
                    # the default: forgotten; Ray tries 3 times, not 20 (a second each), before it gives up
                    env={'RAY_AUTH_MODE': 'disabled', 'RAY_NUM_REDIS_GET_RETRIES': '3'})
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'RAY_AUTH' in r.stderr, r.stderr
    assert not (tmp_path / 'train.bin').exists()


def test_driver_killed_on_the_cluster_keeps_the_previous_bins(tmp_path, ray_cluster):
    """The prepare script itself SIGKILLed in the middle of pass 2 on the cluster (by one of its own tasks, so
    that it happens mid-run every time): the bins of the previous run are untouched."""
    from conftest import REPO
    address, cluster_env = ray_cluster
    corpus = SHARED_DATA / 'tinystories_train_head2MiB.txt'
    out = tmp_path / 'out'
    r = run_prepare('tinystories_char', '--input', corpus, '--out_dir', out, '--num_workers', '1', '--seed', '1')
    assert r.returncode == 0, r.stderr
    before = [(out / f).read_bytes() for f in BINS]
    code = f"""
import os, signal, sys
from nanogpt.data import char
from nanogpt.data.sources import Corpus


def kill_driver(fn, driver):
    def call(chunk, *args):
        if chunk[2] > 0:  # a chunk after the first: pass 2 is under way
            os.kill(driver, signal.SIGKILL)
        return fn(chunk, *args)
    return call


char.encode_chunk = kill_driver(char.encode_chunk, os.getpid())
char.prepare(Corpus([{str(corpus)!r}]), {str(out)!r}, stories=True, val_fraction=0.01, seed=2,
             ray_address={address!r}, chunk_size=64 << 10)
"""
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO, env={**os.environ, **cluster_env}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -9 and 'pass 2/2' in r.stderr, r.stdout + r.stderr  # killed, in pass 2
    assert [(out / f).read_bytes() for f in BINS] == before
