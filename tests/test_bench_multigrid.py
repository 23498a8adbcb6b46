"""benchmarks/bench_multigrid.py: the training clock of a snapshot, and the comparison --report prints from two
finished runs (their metrics.jsonl and the multi-view held-out evaluations of their snapshots)."""
import json
import re
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_multigrid  # noqa: E402

SCRIPT = str(REPO / "benchmarks" / "bench_multigrid.py")


def write_run(folder, epochs, test_top1):
    """A metrics.jsonl as the training engine writes it: per epoch (wall s, phase, its steps as (batch, frames, crop,
    s)), then one test record."""
    folder.mkdir(parents=True)
    lines, step = [], 0
    for epoch, (elapsed, phase, steps) in enumerate(epochs, start=1):
        for batch, frames, crop, seconds in steps:
            step += 1
            lines.append({"kind": "step", "step": step, "epoch": epoch - 0.5, "batch": batch, "frames": frames,
                          "crop": crop, "step_seconds": seconds, "data_wait": seconds / 100})
        lines.append({"kind": "epoch", "epoch": epoch, "phase": phase, "elapsed": elapsed})
    lines.append({"kind": "test", "top1": test_top1, "views": "3x1"})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_snapshots_training_clock_is_the_seconds_of_its_steps(tmp_path):
    write_run(tmp_path / "run", [(10, 0, [(8, 8, 40, 2.0)] * 3), (20, 0, [(8, 8, 40, 3.0)] * 2)], 50.0)
    records = bench_multigrid.read_records(tmp_path / "run")
    assert bench_multigrid.training_clock(records, 4) == 9.0 and bench_multigrid.training_clock(records, 5) == 12.0


def test_report_prints_speed_up_steps_and_where_the_time_went(tmp_path):
    # constant: 10 base steps of 2 s an epoch; final 90.0, and 89.5 (within 1 point) at 60 s of clock (30 steps)
    write_run(tmp_path / "logs" / "constant", [(21 * e, 0, [(8, 8, 40, 2.0)] * 10) for e in (1, 2, 3, 4)], 90.0)
    # multigrid: 3 coarse steps of 3 s, then 2 base steps of 2 s; 89.0 (within 1 point of 90.0) at 13 s, 5 steps
    write_run(tmp_path / "logs" / "multigrid", [(12, 0, [(64, 2, 20, 3.0)] * 3), (30, 1, [(8, 8, 40, 2.0)] * 2)],
              89.0)
    curves = {"constant": [[20.0, 10, 50.0], [40.0, 20, 80.0], [60.0, 30, 89.5], [80.0, 40, 90.0]],
              "multigrid": [[9.0, 3, 60.0], [13.0, 5, 89.0]]}
    (tmp_path / bench_multigrid.RESULTS).write_text(json.dumps(curves))
    result = subprocess.run([sys.executable, SCRIPT, "--report", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^\s+60\.0\s+30\s+89\.50$", out, re.M), out            # clock, steps, top-1
    assert "constant: training-clock s, optimizer steps, held-out top-1 (3x1 views)" in out
    assert "training-clock seconds to reach it: constant 60.0, multigrid 13.0" in out
    assert "multigrid speed-up to accuracy: 4.62x (target >= 2.0x: met)" in out
    assert "to reach multigrid's final held-out top-1 89.00: constant 60.0 s in 30 steps (2.000 s/step), " \
           "multigrid 13.0 s in 5 steps (2.600 s/step)" in out
    assert re.search(r"^\s+64x2x20\s+3\s+9\.0\s+3\.000\s+1\.0%$", out, re.M), out
    assert "per long-cycle phase (step s): 0: 9, 1: 4" in out
    assert "whole run 84.0 s wall, 80.0 s training clock" in out


def test_report_on_a_folder_without_finished_runs_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "--report", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bench_multigrid: {tmp_path / bench_multigrid.RESULTS}: no finished comparison there "
        "(--report takes the folder an earlier run's --out named)"]
