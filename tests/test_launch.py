"""Devices and processes (launch.py), each decision checked on the CPU with the device facts given as inputs: -gpu /
-npu ids against the machine, torchrun's device per process, torch_npu in every spawned process, pinned memory,
cuBLAS determinism, the loader workers a machine gets, and the RNG state a checkpoint keeps."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import launch
from checkpoints import capture_rng, restore_rng
from config import UsageError
from conftest import REPO


def counts(cuda=0, npu=0):
    return lambda kind: {"cuda": cuda, "npu": npu}[kind]


def test_device_ids_are_checked_against_the_machine():
    with pytest.raises(UsageError, match=r"-gpu 0,1: this machine has 1 CUDA device\(s\), numbered 0..0; there is "
                                         r"no device 1"):
        launch.choose_devices("0,1", None, 1, {}, counts(cuda=1))
    with pytest.raises(UsageError, match="listed twice"):
        launch.choose_devices("0,0", None, 1, {}, counts(cuda=2))
    with pytest.raises(UsageError, match="-gpu 0;1: give device numbers separated by commas"):
        launch.choose_devices("0;1", None, 1, {}, counts(cuda=2))
    with pytest.raises(UsageError, match="-gpu 0: CUDA is not available"):
        launch.choose_devices("0", None, 1, {}, counts(cuda=0))
    with pytest.raises(UsageError, match="not both"):
        launch.choose_devices("0", "0", 1, {}, counts(cuda=1))
    devices, notes = launch.choose_devices("1,3", None, 1, {}, counts(cuda=4))
    assert (devices.kind, devices.ids, devices.torchrun, notes) == ("cuda", (1, 3), False, [])
    assert [launch.local_device_index(devices, rank) for rank in (0, 1)] == [1, 3]


def test_npu_ids_are_checked_too(monkeypatch):
    monkeypatch.setattr(launch, "import_backend", lambda kind: None)       # the count stands in for torch_npu
    with pytest.raises(UsageError, match=r"-npu 0,1,2: this machine has 2 Ascend NPU device\(s\)"):
        launch.choose_devices(None, "0,1,2", 1, {}, counts(npu=2))


def torchrun_env(local_rank, local_world):
    return {"LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(local_world), "RANK": str(local_rank),
            "WORLD_SIZE": str(local_world)}


def test_torchrun_processes_take_their_local_ranks_device():
    """ids[local_rank % len(ids)] put two ranks on one GPU for a short list and asked for a missing ordinal where
    each process sees one GPU."""
    for rank in range(4):
        devices, _ = launch.choose_devices("4,5,6,7", None, 1, torchrun_env(rank, 4), counts(cuda=8))
        assert devices.torchrun and launch.local_device_index(devices, rank) == 4 + rank
    with pytest.raises(UsageError, match="lists 2 device\\(s\\) for the 4 processes torchrun starts"):
        launch.choose_devices("0,1", None, 1, torchrun_env(0, 4), counts(cuda=8))
    for rank in range(4):          # a scheduler binds each process to its own GPU: the one it sees
        devices, _ = launch.choose_devices("0,1,2,3", None, 1, torchrun_env(rank, 4), counts(cuda=1))
        assert launch.local_device_index(devices, rank) == 0


def test_a_gpu_machine_never_trains_on_the_cpu_without_saying_so():
    for environ in ({}, torchrun_env(1, 2)):
        devices, notes = launch.choose_devices(None, None, 1, environ, counts(cuda=2))
        assert devices.kind == "cpu" and len(notes) == 1 and "2 CUDA device(s) visible but no -gpu" in notes[0]
    assert launch.choose_devices(None, None, 3, {}, counts())[1] == []
    assert launch.choose_devices(None, None, 3, {}, counts())[0].ids == (0, 1, 2)


def test_every_spawned_process_imports_torch_npu(tmp_path):
    """-npu 0,1 spawns two processes; each imports torch_npu itself (only the parent did: the children then met
    torch.npu and hccl unregistered). A stand-in torch_npu records who imported it and ends a child there."""
    (tmp_path / "torch_npu.py").write_text(
        "import multiprocessing, os, types, torch\n"
        "child = multiprocessing.parent_process() is not None\n"
        "with open(os.environ['NPU_IMPORTS'], 'a') as f:\n"
        "    f.write(f\"{'child' if child else 'parent'} {os.getpid()}\\n\")\n"
        "torch.npu = types.SimpleNamespace(device_count=lambda: 2, is_available=lambda: True)\n"
        "if child:\n"
        "    raise SystemExit(0)\n")
    imports = tmp_path / "imports.txt"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               NPU_IMPORTS=str(imports))
    result = subprocess.run([sys.executable, str(REPO / "train_x3d_kinetics_multigrid.py"), "-npu", "0,1", "--data",
                             str(tmp_path / "unused"), "--output", str(tmp_path / "models"), "--log-dir",
                             str(tmp_path / "logs")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = imports.read_text().split()
    children = {pid for role, pid in zip(lines[::2], lines[1::2]) if role == "child"}
    assert lines.count("parent") == 1 and len(children) == 2, lines


def test_batches_are_pinned_exactly_for_accelerators():
    assert launch.needs_pinned_memory("cuda") and launch.needs_pinned_memory("npu")
    assert not launch.needs_pinned_memory("cpu")


def test_deterministic_runs_fix_the_cublas_workspace_before_cuda_starts(monkeypatch):
    assert launch.deterministic_environment({}) == {"CUBLAS_WORKSPACE_CONFIG": launch.DETERMINISTIC_CUBLAS}
    assert launch.deterministic_environment({"CUBLAS_WORKSPACE_CONFIG": ":16:8"}) == {}      # the user's wins
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        ctx = launch.setup_process(0, SimpleNamespace(deterministic=True), launch.Devices("cpu", (0,), False, 0))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == launch.DETERMINISTIC_CUBLAS and ctx.device.type == "cpu"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_loader_workers_follow_the_machines_cores():
    assert launch.default_workers(cores=2, processes=1) == 2          # a 2-core laptop: no oversubscription warning
    assert launch.default_workers(cores=96, processes=8) == launch.MAX_WORKERS
    assert launch.default_workers(cores=4, processes=8) == 1


class FakeAccelerator:
    """torch.cuda's RNG calls for one device; asking for every device's states fails, as on a process that sees
    fewer devices than the run that saved them."""

    def __init__(self, state):
        self.state, self.set_calls = state, []

    def get_rng_state(self, device):
        return self.state.clone()

    def set_rng_state(self, state, device):
        self.set_calls.append((state.clone(), device))

    def get_rng_state_all(self):
        raise AssertionError("every visible device's generator was asked for")


def test_checkpoints_keep_the_run_devices_generator_only():
    device = torch.device("cuda", 3)
    saved = capture_rng(device, FakeAccelerator(torch.arange(4, dtype=torch.uint8)))
    assert saved["device"]["type"] == "cuda" and torch.equal(saved["device"]["state"], torch.arange(4))
    other = FakeAccelerator(torch.zeros(4, dtype=torch.uint8))
    restore_rng(saved, torch.device("cuda", 0), other)           # resumed where the device has another number
    assert len(other.set_calls) == 1 and torch.equal(other.set_calls[0][0], torch.arange(4))
    torch.manual_seed(7)
    cpu_state = capture_rng(torch.device("cpu"))
    expected = torch.rand(3)
    restore_rng(cpu_state, torch.device("cpu"))
    assert "device" not in cpu_state and torch.equal(torch.rand(3), expected)
    restore_rng(saved, torch.device("cpu"))                     # a CUDA run's checkpoint resumed on the CPU


def test_a_stop_signal_during_the_test_exits_at_once_and_one_pending_before_it_too(capsys):
    """After training a SIGTERM killed the process by default (exit -15) mid-test, or one received during the last
    epoch's evaluation was forgotten and the test ran on past the grace period: now both exit 143, saying why."""
    import signal
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with launch.exit_on_stop_signal(0, "stopped before the test"):
            os.kill(os.getpid(), signal.SIGTERM)             # a real signal, taken by the handler
            raise AssertionError("the signal did not stop the test")
    assert stopped.value.code == 143 and "stopped before the test" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before        # the previous handler is back
    with pytest.raises(SystemExit) as pending:
        with launch.exit_on_stop_signal(signal.SIGINT, None):
            raise AssertionError("a pending signal must stop before the test starts")
    assert pending.value.code == 130
