"""A run's log folder, logs/<run>/: args.json, metrics.jsonl (a JSON record per step, per epoch and for the test),
training.png drawn from it, and with --tensorboard the same numbers as TensorBoard scalars; and the epoch meter
that writes the step records and draws the progress bar.

    python runlog.py logs/<run>          # redraw training.png by hand, e.g. from a copy of a run's logs

The training process draws by starting this file as a child at low priority: drawing in a thread of the training
process held the GIL the loop needs (the step after each drawing took about twice as long), and a child at a lower
priority takes only the CPU time training leaves. The child imports no torch.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
PLOT_INTERVAL_S = 30            # draw training.png at most this often, the first time this long after the start:
                                # a drawing takes CPU from training (most from the short first epochs of multigrid)
NICENESS = 10                   # the drawing child's: below the training process and its data workers


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


class RunLog:
    """logs/<run>/ of one run, written by global rank 0 (`enabled`); training.png is redrawn after an epoch (at
    most every PLOT_INTERVAL_S, and at the end) by a child process. TensorBoard gets, per step, the loss, LR,
    clips/s and the shape schedule, and every number of the epoch and test records."""

    def __init__(self, folder, args, enabled, tensorboard_writer=None):
        self.folder, self.enabled = folder, enabled
        self.path = os.path.join(folder, METRICS_FILE)
        self._drawing, self._drawn_at = None, time.monotonic()
        self.tensorboard = None
        if enabled:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1, default=str)
            if tensorboard_writer is not None:
                self.tensorboard = tensorboard_writer(os.path.join(folder, "tensorboard"))

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            kind = record.get("kind")
            position = {"step": record.get("step"), "epoch": record.get("epoch")}.get(kind, 0)
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, position)

    def rewind(self, global_step, epoch):
        """A resumed run goes on from its checkpoint: the records written after it (steps beyond its global step,
        epochs beyond its epoch, a test) are dropped, so the file reads as one run."""
        if not self.enabled:
            return
        kept = [r for r in read_records(self.folder)
                if r.get("kind") == "step" and r.get("step", math.inf) <= global_step
                or r.get("kind") == "epoch" and r.get("epoch", math.inf) <= epoch]
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(tmp, self.path)

    def plot(self, force=False):
        """Start redrawing training.png in a child process; unless `force`, only if the last drawing (or the run)
        started PLOT_INTERVAL_S ago and is done (short multigrid epochs end every few seconds)."""
        if not self.enabled:
            return
        if not force and (time.monotonic() - self._drawn_at < PLOT_INTERVAL_S
                          or self._drawing is not None and self._drawing.poll() is None):
            return
        self.wait()
        self._drawn_at = time.monotonic()
        self._drawing = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.folder],
                                         stdin=subprocess.DEVNULL)

    def wait(self):
        """Block until the latest drawing (and the TensorBoard events so far) are on disk."""
        if self._drawing is not None:
            self._drawing.wait()
            self._drawing = None
        if self.tensorboard is not None:
            self.tensorboard.flush()


class EpochMeter:
    """An epoch's running sums, its progress bar and its per-step records; `close()` sums them over ranks."""

    def __init__(self, log, epoch, max_epoch, steps, start_step, world, show):
        self.log, self.epoch, self.world = log, epoch, world
        self.loss = self.wait = self.seconds = 0.0
        self.correct = self.seen = self.bad = self.skipped = 0
        self.has_accuracy = False
        self.bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{max_epoch}", disable=not show,
                        dynamic_ncols=True)
        self.tick = time.perf_counter()

    def step(self, global_step, position, lr, shape, loss_value, correct, data_wait):
        """One finished step at `position` (epochs, fractional): sums, a metrics.jsonl line, the bar's postfix."""
        batch_size, frames, crop = shape
        self.loss += loss_value * batch_size
        self.seen += batch_size
        if correct is not None:
            self.correct += correct
            self.has_accuracy = True
        now = time.perf_counter()
        step_seconds = max(now - self.tick, 1e-9)           # data wait included: the step as the clock sees it
        self.tick = now
        self.wait += data_wait
        self.seconds += step_seconds
        clips_per_s = batch_size * self.world / step_seconds
        self.log.write(kind="step", step=global_step, epoch=position, loss=loss_value, lr=lr, batch=batch_size,
                       frames=frames, crop=crop, clips_per_s=clips_per_s, step_seconds=step_seconds,
                       data_wait=data_wait)
        postfix = {"loss": f"{loss_value:.3f}", "lr": f"{lr:.3g}", "shape": f"{batch_size}x{frames}x{crop}",
                   "clips/s": f"{clips_per_s:.1f}", "data wait": f"{100 * self.wait / self.seconds:.0f}%"}
        if correct is not None:
            postfix["acc"] = f"{100 * self.correct / self.seen:.1f}"
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def close(self, device):
        """-> the epoch record's training fields, summed over ranks (a collective)."""
        import torch
        from launch import all_reduce
        self.bar.close()
        sums = torch.tensor([self.loss, self.correct, self.seen, self.bad, self.skipped], dtype=torch.float64,
                            device=device)
        loss, correct, seen, bad, skipped = all_reduce(sums).tolist()
        seen = max(seen, 1)
        return {"train_loss": loss / seen, "train_acc": 100 * correct / seen if self.has_accuracy else None,
                "bad_samples": int(bad), "skipped_steps": int(skipped),
                "data_wait": self.wait / max(self.seconds, 1e-9)}


def draw(folder):
    """training.png in `folder` (loss, accuracy per epoch, learning rate, input shape), written atomically; a
    failure is a warning (a plot must never stop a run)."""
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
