"""benchmarks/bench_gpu.py, the prepared device run, runs every section end to end with --dry (tiny sizes, the CPU),
so the script is known to work before a device arrives: each table is there and filled, the SIGTERM / --resume run
is bit for bit, and nothing failed."""
import re
import subprocess
import sys

from conftest import REPO

SECTIONS = ("Versions", "Training steps", "--memory-format auto", "Data: one loader worker", "SIGTERM and --resume",
            "--compile over the split counts")


def table_rows(report, title):
    block = report.split(f"### {title}")[1].split("### ")[0]
    return [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]


def test_the_dry_run_fills_every_section(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--dry", "--out",
                             str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "bench_gpu.md").read_text()
    assert "failed" not in report and "skipped" not in report, report
    for title in SECTIONS:
        assert table_rows(report, title), f"{title}: no rows in\n{report}"
    steps = table_rows(report, "Training steps")
    layouts = {(row.split(" | ")[4], row.split(" | ")[5]) for row in steps}
    assert layouts == {(layout, path) for layout in ("channels_last", "contiguous") for path in ("function", "fold")}
    assert all(re.search(r"\| [0-9.]+ \| [0-9.]+ \| n/a \| [0-9.]+ \|", row) for row in steps), steps
    (resume,) = table_rows(report, "SIGTERM and --resume")
    stop = re.search(r"\| 143 \| (\d+) of (\d+) \| 0 \| yes \|$", resume)
    assert stop and 0 < int(stop[1]) < int(stop[2]), resume          # stopped mid-training, not after it
    assert all(int(row.split(" | ")[2]) >= 1 for row in table_rows(report, "--compile over the split counts"))
    assert re.search(r"dry run on the CPU, \d+ s in all", report)
