"""Draw a run's training.png (loss, accuracy per epoch, learning rate, input shape) from its metrics.jsonl.

    python training_plot.py logs/<run>          # redraw by hand, e.g. from a copy of a run's logs

The training engine runs this file as a child process at low priority after an epoch: drawing in a thread of the
training process held the GIL the training loop needs (the step after each drawing took about twice as long, in the
demo's per-step log), and a child at a lower priority takes only the CPU time training leaves.
"""
import json
import os
import signal
import sys
import warnings

NICENESS = 10      # below the training process and its data workers
METRICS_FILE = "metrics.jsonl"   # in logs/<run>/: a JSON record per line (kind: step, epoch or test)


def parse_record(line):
    """A metrics.jsonl line -> dict; None for a blank line or one cut short (a process killed while writing it)."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def read_records(folder):
    """The records of logs/<run>/metrics.jsonl, in order ([] where there is none yet)."""
    path = os.path.join(folder, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [record for record in map(parse_record, f) if record is not None]


def draw(folder):
    """training.png in `folder`, written atomically; a failure is a warning (a plot must never stop a run)."""
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot, no display needed
        records = read_records(folder)
        steps = [r for r in records if r.get("kind") == "step"]
        epochs = [r for r in records if r.get("kind") == "epoch"]
        fig = Figure(figsize=(11, 7))
        axes = fig.subplots(2, 2)
        x = [r["step"] for r in steps]
        axes[0, 0].plot(x, [r["loss"] for r in steps], lw=0.6)
        axes[0, 0].set(title="training loss", xlabel="step")
        for key in sorted({k for r in epochs for k in r if k.startswith(("val_", "train_acc"))}):
            points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
            if points:
                axes[0, 1].plot(*zip(*points), marker="o", ms=3, label=key)
        axes[0, 1].set(title="accuracy / metric per epoch", xlabel="epoch")
        axes[0, 1].legend(fontsize=8)
        axes[1, 0].plot(x, [r["lr"] for r in steps])
        axes[1, 0].set(title="learning rate", xlabel="step")
        for key in ("batch", "frames", "crop"):
            axes[1, 1].plot(x, [r[key] for r in steps], label=key, lw=0.8)
        axes[1, 1].set(title="input shape (per-device batch, frames, crop)", xlabel="step", yscale="log")
        axes[1, 1].legend(fontsize=8)
        # fixed margins: tight_layout measured every tick label and was half the drawing time
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.95, wspace=0.22, hspace=0.38)
        tmp = os.path.join(folder, f"training.png.tmp{os.getpid()}")
        fig.savefig(tmp, dpi=90, format="png")
        os.replace(tmp, os.path.join(folder, "training.png"))   # a viewer never sees half a file
    except Exception as error:
        warnings.warn(f"could not draw {folder}/training.png: {type(error).__name__}: {error}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {os.path.basename(__file__)} LOG_FOLDER (the folder holding metrics.jsonl)")
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C is for the training run, which draws once more at its end
    os.nice(NICENESS)
    draw(sys.argv[1])
