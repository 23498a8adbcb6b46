"""X3D on the CPU: our x3d.py against PyTorchVideo's `create_x3d`, forward and forward+backward, in clips/s.

    python benchmarks/bench_model.py                       # X3D-S, batch 4, 13 x 160 x 160, all variants
    python benchmarks/bench_model.py --batch 8 --repeats 5
    python benchmarks/bench_model.py --version XS --batch 1 --repeats 1 --frames 4 --crop 64 --skip-compile

Both models get the same weights (PyTorchVideo's, loaded into ours with `x3d.load_pretrained`), the same input
tensor, the same thread count. Runs alternate between variants (the order reverses every round so no variant always
follows the same neighbour); the first round is a warm-up; each cell is the median of `--repeats` timed rounds.

Variants:
  theirs as run        create_x3d(...) exactly as its users build it: contiguous fp32 eager
  theirs + CL          the same module moved to channels_last_3d, input converted inside the timed call
  ours default         generate_model(version): channels_last_3d weights, converts its input itself
  ours contiguous      generate_model(version, channels_last=False)
  ours + compile       torch.compile(ours default), forward only (compile time printed, not timed)
  ours + bf16          ours default under torch.autocast('cpu', torch.bfloat16)

PyTorchVideo is a benchmark/test-only dependency (requirements-bench.txt), never the product's.
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a CPU shared with other processes,
# spinning threads fight them for cores and one run can take 3-5x longer than the next; the setting is the same for
# every variant, so ratios stay fair. An OMP_WAIT_POLICY already set in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from x3d import generate_model, get_version, load_pretrained  # noqa: E402

FWD = "forward (eval, no_grad)"
TRAIN = "forward+backward (train)"
THEIRS = "theirs as run (contiguous fp32 eager)"
THEIRS_CL = "theirs + channels_last_3d"
OURS = "ours default (channels_last_3d)"
OURS_CONTIG = "ours contiguous"
OURS_COMPILE = "ours + torch.compile"
OURS_BF16 = "ours + bf16 autocast"
TARGET_AS_RUN = 2.0      # ours default fwd+bwd >= 2x theirs as their users run it
TARGET_SAME_FORMAT = 1.0  # ours default fwd+bwd >= theirs given channels_last_3d too
SLOW_FACTOR = 3.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", default="S", help="X3D version: XS, S, M, L, XL (default S)")
    parser.add_argument("--batch", type=int, default=4, help="clips per batch (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per mode after one warm-up (default 2)")
    parser.add_argument("--frames", type=int, default=None, help="clip length (default: the version's)")
    parser.add_argument("--crop", type=int, default=None, help="crop size (default: the version's train crop)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch.get_num_threads())")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument("--skip-bf16", action="store_true", help="leave out the bf16 autocast variants")
    parser.add_argument("--profile", action="store_true",
                        help="also print a torch.profiler table of one forward+backward of ours default and theirs")
    return parser.parse_args(argv)


def build_theirs(version, frames, crop):
    from pytorchvideo.models.x3d import create_x3d
    spec = get_version(version)
    # create_x3d's defaults are width 2.0 / depth 2.2 (XS, S, M); L and XL only change the factors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_x3d(input_clip_length=frames, input_crop_size=crop, model_num_class=400,
                          width_factor=spec.width, depth_factor=spec.depth)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


class Variant:
    """One model set-up: `call(x)` runs it once (forward, or forward+backward) on the shared input."""

    def __init__(self, name, model, channels_last_input=False, autocast_bf16=False):
        self.name = name
        self.model = model
        self.channels_last_input = channels_last_input
        self.autocast_bf16 = autocast_bf16
        self.error = None

    def _forward(self, x):
        if self.channels_last_input:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.autocast_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.model(x)
        return self.model(x)

    def forward_eval(self, x):
        with torch.no_grad():
            return self._forward(x)

    def forward_backward(self, x, labels):
        out = self._forward(x)
        loss = F.cross_entropy(out.float(), labels)
        loss.backward()
        return loss


def time_call(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_mode(mode, variants, x, labels, repeats):
    """Alternate the variants round by round (order reversed on odd rounds); round 0 is warm-up. Returns
    {name: [seconds of each timed round]}."""
    times, warmup = {v.name: [] for v in variants}, {}
    live = [v for v in variants if v.error is None]
    for v in live:
        v.model.train(mode == TRAIN)
        v.slow = False
    for round_index in range(repeats + 1):
        order = live if round_index % 2 == 0 else live[::-1]
        for v in order:
            if v.error is not None or (v.slow and round_index > 1):
                continue
            if mode == TRAIN:
                v.model.zero_grad(set_to_none=True)
                fn = lambda v=v: v.forward_backward(x, labels)  # noqa: E731
            else:
                fn = lambda v=v: v.forward_eval(x)  # noqa: E731
            try:
                seconds = time_call(fn)
            except Exception as error:  # a variant this torch/CPU cannot run: report it, keep the others going
                v.error = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
                print(f"  [{mode}] {v.name} failed: {v.error}", flush=True)
                continue
            if round_index > 0:
                times[v.name].append(seconds)
            else:
                warmup[v.name] = seconds
            print(f"  [{mode}] round {round_index}{' (warm-up)' if round_index == 0 else ''}: {v.name}: "
                  f"{seconds:.3f} s", flush=True)
        if round_index == 0 and warmup.get(THEIRS):
            # A variant over SLOW_FACTOR x slower than theirs (bf16 without native bf16 units) gets one timed round
            # only, to keep the whole run within a few minutes; the table says so.
            for v in live:
                if v.name in warmup and warmup[v.name] > SLOW_FACTOR * warmup[THEIRS]:
                    v.slow = True
                    print(f"  [{mode}] {v.name}: {warmup[v.name] / warmup[THEIRS]:.1f}x slower than theirs in "
                          f"warm-up, timed in one round only", flush=True)
    for v in live:
        v.model.zero_grad(set_to_none=True)
    return times


def try_compile(model, x):
    """torch.compile `model` for eval forward and trigger the compile; returns (compiled, seconds, error)."""
    try:
        compiled = torch.compile(model)
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            compiled(x)
        return compiled, time.perf_counter() - start, None
    except Exception as error:
        text = str(error).strip().splitlines()
        return None, 0.0, f"{type(error).__name__}: {text[0][:200] if text else ''}"


def profile_train(name, model, x, labels, rows=12):
    from torch.profiler import ProfilerActivity, profile
    variant = Variant(name, model, channels_last_input=name.startswith("theirs +"))
    model.train()
    variant.forward_backward(x, labels)           # warm-up outside the profile
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        variant.forward_backward(x, labels)
    model.zero_grad(set_to_none=True)
    print(f"\nprofile of one forward+backward, {name}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def build_models(version, frames, crop):
    """Theirs as run and in channels_last_3d; ours by default and contiguous: one set of weights, so the four are
    one network (checked in main on the warm-up input)."""
    torch.manual_seed(0)
    theirs = build_theirs(version, frames, crop)
    ours = generate_model(version, frames=frames, train_crop=crop)
    load_pretrained(ours, {"model_state": theirs.state_dict()}, verbose=False)
    ours_contig = generate_model(version, frames=frames, train_crop=crop, channels_last=False)
    ours_contig.load_state_dict(ours.state_dict())
    return theirs, copy.deepcopy(theirs).to(memory_format=torch.channels_last_3d), ours, ours_contig


def clips_per_s(results, batch, mode, name):
    seconds = results[mode][1].get(name) or []
    return batch / statistics.median(seconds) if seconds else None


def print_table(results, batch, repeats, title, compile_note):
    """Clips/s of every variant and its ratio to theirs as run, per mode."""
    print()
    print(title)
    header = f"{'mode':<26}{'variant':<40}{'clips/s':>9}  {'vs theirs as run':>16}"
    print(header)
    print("-" * len(header))
    for mode, (variants, _) in results.items():
        base = clips_per_s(results, batch, mode, THEIRS)
        for v in variants:
            rate = clips_per_s(results, batch, mode, v.name)
            if rate is None:
                print(f"{mode:<26}{v.name:<40}{'failed':>9}  {'-':>16}   ({v.error})")
                continue
            ratio = f"{rate / base:.2f}x" if base else "-"
            rounds = len(results[mode][1][v.name])
            note = f"   (median of {rounds})" if rounds != repeats else ""
            print(f"{mode:<26}{v.name:<40}{rate:>9.2f}  {ratio:>16}{note}")
    if compile_note:
        print(compile_note)


def print_targets(results, batch):
    """The forward+backward targets: ours against theirs as run and against theirs in channels_last_3d."""
    print()
    ours_train = clips_per_s(results, batch, TRAIN, OURS)
    checks = [("ours default vs theirs as run", clips_per_s(results, batch, TRAIN, THEIRS), TARGET_AS_RUN),
              ("ours default vs theirs + channels_last_3d", clips_per_s(results, batch, TRAIN, THEIRS_CL),
               TARGET_SAME_FORMAT)]
    for label, reference, target in checks:
        if ours_train and reference:
            ratio = ours_train / reference
            verdict = "PASS" if ratio >= target else "FAIL"
            print(f"target, forward+backward, {label}: {ratio:.2f}x (target >= {target:.1f}x): {verdict}")
        else:
            print(f"target, forward+backward, {label}: not measured (a variant failed)")


def main(argv=None):
    args = parse_args(argv)
    spec = get_version(args.version)
    version = args.version.upper()
    frames = args.frames or spec.frames
    crop = args.crop or spec.train_crop
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # its import scripts a function with the deprecated jit
            import pytorchvideo
            import pytorchvideo.models.x3d  # noqa: F401
    except ImportError as error:
        sys.exit(f"bench_model.py needs PyTorchVideo (pip install -r requirements-bench.txt): {error}")

    theirs, theirs_cl, ours, ours_contig = build_models(version, frames, crop)

    x = torch.randn(args.batch, 3, frames, crop, crop)
    labels = torch.randint(0, 400, (args.batch,))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"X3D-{version}: batch {args.batch} x 3 x {frames} x {crop} x {crop}, {threads} threads, "
          f"{args.repeats} timed round(s) after 1 warm-up, torch {torch.__version__}, "
          f"PyTorchVideo {getattr(pytorchvideo, '__version__', '?')}, {platform.machine()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"parameters: ours {count_params(ours):,}, theirs {count_params(theirs):,} "
          f"(theirs has no shortcut BN in stage 2 block 0: {count_params(ours) - count_params(theirs)} fewer)")
    if load == load and load > threads:
        print(f"note: 1-minute load average {load:.1f} exceeds {threads} threads: other processes share this CPU, "
              f"so absolute numbers are noisy; alternation keeps the ratios fair")

    with torch.no_grad():
        theirs.eval()
        ours.eval()
        theirs_probs = theirs(x)                        # their eval head ends in softmax
        our_probs = F.softmax(ours(x), dim=-1)
    print(f"same network check (eval, same weights and input): max |prob difference| "
          f"{(theirs_probs - our_probs).abs().max().item():.2e}")

    fwd_variants = [Variant(THEIRS, theirs), Variant(THEIRS_CL, theirs_cl, channels_last_input=True),
                    Variant(OURS, ours), Variant(OURS_CONTIG, ours_contig)]
    train_variants = list(fwd_variants)
    compile_note = None
    if not args.skip_compile:
        compiled, seconds, error = try_compile(ours, x)
        if error is None:
            fwd_variants.append(Variant(OURS_COMPILE, compiled))
            compile_note = f"torch.compile of ours (eval forward) took {seconds:.1f} s (not in the timings)"
        else:
            compile_note = f"torch.compile of ours failed, variant left out: {error}"
        print(compile_note, flush=True)
    if not args.skip_bf16:
        fwd_variants.append(Variant(OURS_BF16, ours, autocast_bf16=True))
        train_variants.append(Variant(OURS_BF16, ours, autocast_bf16=True))

    results = {}
    for mode, variants in ((FWD, fwd_variants), (TRAIN, train_variants)):
        print(f"{mode}:", flush=True)
        results[mode] = (variants, run_mode(mode, variants, x, labels, args.repeats))

    if args.profile:
        profile_train(OURS, ours, x, labels)
        profile_train(THEIRS, theirs, x, labels)

    print_table(results, args.batch, args.repeats, f"X3D-{version}, batch {args.batch}, {frames} x {crop} x {crop}, "
                f"{threads} threads, median of {args.repeats} alternated round(s)", compile_note)
    print_targets(results, args.batch)


if __name__ == "__main__":
    main()
