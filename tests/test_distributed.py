"""Every fit-time method under tf.distribute: MirroredStrategy over two logical
CPUs, and MultiWorkerMirroredStrategy with two worker processes on localhost.

Each configuration runs in processes of its own (tests/distributed_job.py):
TensorFlow fixes a process's devices when it starts.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from method_cases import CASES

JOB = Path(__file__).with_name("distributed_job.py")
TIMEOUT = 300


def start(mode, out, names, env=None):
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(JOB), mode, str(out), *names],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process):
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0, output[-4000:]


def load(directory, name):
    with np.load(directory / f"{name}.npz") as archive:
        return {key: archive[key] for key in archive.files}


def assert_same_training(single, distributed):
    np.testing.assert_allclose(distributed["loss"], single["loss"], rtol=1e-4)
    for key in single:
        if key not in ("loss", "replicas"):
            # The same weights are pruned: identical zero patterns, and the
            # surviving values agree up to the order of the gradient sums.
            np.testing.assert_array_equal(distributed[key] != 0, single[key] != 0, err_msg=key)
            np.testing.assert_allclose(distributed[key], single[key], rtol=1e-3, atol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def single_and_mirrored(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    names = sorted(CASES)
    processes = [start("single", root / "single", names), start("mirrored", root / "mirrored", names)]
    for process in processes:
        finish(process)
    return root / "single", root / "mirrored"


@pytest.mark.parametrize("name", sorted(CASES))
def test_mirrored_strategy_matches_a_single_device(single_and_mirrored, name):
    single_dir, mirrored_dir = single_and_mirrored
    single, mirrored = load(single_dir, name), load(mirrored_dir, name)
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    assert_same_training(single, mirrored)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_masks_agree_across_workers_and_with_one_device(tmp_path):
    names = ["magnitude", "dst-ee"]
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [
        start("multi_worker", tmp_path / f"worker{index}", names,
              env={"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]
    single = start("single", tmp_path / "single", names)
    for process in (*processes, single):
        finish(process)
    for name in names:
        reference = load(tmp_path / "single", name)
        for index in range(2):
            result = load(tmp_path / f"worker{index}", name)
            assert int(result["replicas"]) == 2
            assert_same_training(reference, result)
