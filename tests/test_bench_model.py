"""benchmarks/bench_model.py runs end to end in a tiny shape and prints its comparison table and target ratios.

PyTorchVideo is an optional benchmark dependency (requirements-bench.txt): without it this test skips."""
import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytorchvideo") is None,
    reason="PyTorchVideo is not installed (optional: pip install -r requirements-bench.txt)")


def test_bench_model_tiny_run_prints_table_and_targets():
    # One thread: on a shared 2-core machine a second OpenMP thread competing with other processes makes even this
    # tiny run take minutes; the thread count does not change what the script prints.
    command = [sys.executable, str(REPO / "benchmarks" / "bench_model.py"), "--version", "XS", "--batch", "1",
               "--repeats", "1", "--frames", "4", "--crop", "64", "--skip-compile", "--threads", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "parameters: ours 3,794,322, theirs 3,794,274" in out
    same = re.search(r"max \|prob difference\| ([0-9.e+-]+)", out)
    assert same and float(same.group(1)) < 1e-5, out
    for mode in ("forward (eval, no_grad)", "forward+backward (train)"):
        for variant in ("theirs as run", "theirs + channels_last_3d", "ours default", "ours contiguous",
                        "ours + bf16 autocast"):
            row = re.search(rf"^{re.escape(mode)}\s+{re.escape(variant)}.*?\s([0-9.]+|failed)\s+([0-9.]+x|-)",
                            out, re.M)
            assert row, f"no row for {mode} / {variant} in:\n{out}"
        assert re.search(rf"^{re.escape(mode)}\s+theirs as run.*\s1\.00x$", out, re.M)
    assert "ours + torch.compile" not in out          # --skip-compile
    targets = re.findall(r"^target, forward\+backward, (.+): ([0-9.]+)x \(target >= ([0-9.]+)x\): (PASS|FAIL)$",
                         out, re.M)
    assert [t[2] for t in targets] == ["2.0", "1.0"], out
