"""benchmarks/bench_multigrid.py --report: the comparison it prints from two finished runs' metrics.jsonl."""
import json
import re
import subprocess
import sys

from conftest import REPO

SCRIPT = str(REPO / "benchmarks" / "bench_multigrid.py")


def write_run(folder, evaluations, step_shapes, test_top1):
    """A metrics.jsonl as the training engine writes it: per evaluation epoch (epoch, wall s, eval s, top-1), its
    steps (batch, frames, crop, s) before it; one test record."""
    folder.mkdir(parents=True)
    lines = []
    for (epoch, elapsed, eval_seconds, top1), steps in zip(evaluations, step_shapes):
        for batch, frames, crop, seconds in steps:
            lines.append({"kind": "step", "epoch": epoch - 1 + 0.5, "batch": batch, "frames": frames, "crop": crop,
                          "step_seconds": seconds, "data_wait": seconds / 100})
        lines.append({"kind": "epoch", "epoch": epoch, "phase": epoch - 1, "elapsed": elapsed,
                      "eval_seconds": eval_seconds, "val_top1": top1})
    lines.append({"kind": "test", "top1": test_top1, "views": "3x1"})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_report_prints_speed_up_steps_and_where_the_time_went(tmp_path):
    # constant: 10 base steps an epoch; final 90.0, 89.5 (within 1 point) at epoch 3: training clock 63 - 3 = 60 s
    write_run(tmp_path / "logs" / "constant", [(1, 21, 1, 50.0), (2, 41, 1, 80.0), (3, 63, 1, 89.5), (4, 84, 1, 90.0)],
              [[(8, 8, 40, 2.0)] * 10] * 4, 91.25)
    # multigrid: 89.0 (within 1 point of 90.0) at epoch 2, clock 30 - 2 * 2 = 26 s; 3 coarse + 2 base steps
    write_run(tmp_path / "logs" / "multigrid", [(1, 12, 2, 60.0), (2, 30, 2, 89.0)],
              [[(64, 2, 20, 3.0)] * 3, [(8, 8, 40, 2.0)] * 2], 90.0)
    result = subprocess.run([sys.executable, SCRIPT, "--report", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^\s+3\s+30\s+63\.0\s+60\.0\s+89\.50$", out, re.M), out      # epoch, steps, wall, clock, top-1
    assert "training-clock seconds to reach it: constant 60.0, multigrid 26.0" in out
    assert "multigrid speed-up to accuracy: 2.31x (target >= 2.0x: met)" in out
    assert "to reach multigrid's final held-out top-1 89.00: constant 60.0 s in 30 steps (2.000 s/step), " \
           "multigrid 26.0 s in 5 steps (5.200 s/step)" in out
    assert re.search(r"^\s+64x2x20\s+3\s+9\.0\s+3\.000\s+1\.0%$", out, re.M), out
    assert "constant shape: final test top-1 91.25 (3x1 views), whole run 84.0 s wall" in out


def test_report_on_a_folder_without_finished_runs_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "--report", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bench_multigrid: {tmp_path / 'logs' / 'constant' / 'metrics.jsonl'}: no finished run there "
        "(--report takes the folder an earlier run's --out named)"]
