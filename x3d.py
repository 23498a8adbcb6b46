"""X3D video models (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020).

Exact to the authors' released architecture (SlowFast repository): same widths, depths, squeeze-excitation placement,
head and initialization, so the authors' weights load and reproduce their outputs. Differences are additions:
  * SubBatchNorm3d (layers.py) everywhere, head included, so Multigrid training can normalize groups of 8 samples;
  * the head pools globally when the input is smaller than the train shape (Multigrid short cycles);
  * Swish is F.silu (exports to ONNX; the authors' autograd Swish does not);
  * `load_pretrained` reads the SlowFast, PyTorchVideo, x3d-multigrid and this project's checkpoints
    (checkpoints.py).

    from x3d import generate_model
    model = generate_model('S')            # 3,794,322 parameters, 1.96 GFLOPs at 13 x 160 x 160

`python x3d.py` prints parameters and multiply-adds of every version.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import convert_state_dict, detect_format, load_checked, read_state_dict
from layers import SubBatchNorm3d, conv3d, count_multiply_adds, init_weights


@dataclass(frozen=True)
class X3DVersion:
    width: float           # channel expansion factor
    depth: float           # block-count expansion factor
    frames: int            # clip length at the train shape
    rate: int              # temporal sampling stride, in frames at 30 fps
    train_crop: int
    test_crop: int         # short side and crop size of the 3-crop test views
    jitter: tuple          # train-time random short-side range


VERSIONS = {
    "XS": X3DVersion(width=2.0, depth=2.2, frames=4, rate=12, train_crop=160, test_crop=182, jitter=(182, 228)),
    "S": X3DVersion(width=2.0, depth=2.2, frames=13, rate=6, train_crop=160, test_crop=182, jitter=(182, 228)),
    "M": X3DVersion(width=2.0, depth=2.2, frames=16, rate=5, train_crop=224, test_crop=256, jitter=(256, 320)),
    "L": X3DVersion(width=2.0, depth=5.0, frames=16, rate=5, train_crop=312, test_crop=356, jitter=(356, 446)),
    "XL": X3DVersion(width=2.9, depth=5.0, frames=16, rate=5, train_crop=312, test_crop=356, jitter=(356, 446)),
}

STEM_BASE_WIDTH = 12
STAGE_BASE_WIDTHS = (12, 24, 48, 96)     # stages 2..5 (the authors' res2..res5)
STAGE_BASE_DEPTHS = (1, 2, 5, 3)
BOTTLENECK_FACTOR = 2.25                 # inner width of every block = 2.25 x its output width
SE_RATIO = 0.0625
HEAD_WIDTH = 2048                        # lin_5 output
TOTAL_SPATIAL_STRIDE = 32


def get_version(x3d_version):
    key = str(x3d_version).upper()
    if key not in VERSIONS:
        raise ValueError(f"unknown X3D version {x3d_version!r}; valid versions: {', '.join(VERSIONS)}")
    return VERSIONS[key]


def round_width(width, multiplier, min_width=8, divisor=8):
    """The authors' channel rounding: to a multiple of 8, never more than 10% below the exact value."""
    width *= multiplier
    rounded = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * width:
        rounded += divisor
    return int(rounded)



class SqueezeExcitation(nn.Module):
    def __init__(self, channels, inner):
        super().__init__()
        self.fc1 = conv3d(channels, inner, 1, bias=True)
        self.fc2 = conv3d(inner, channels, 1, bias=True)

    def forward(self, x):
        # a mean, not adaptive_avg_pool3d: the same numbers, and a deterministic backward on CUDA
        scale = x.mean((2, 3, 4), keepdim=True)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class Stem(nn.Module):
    """1x3x3 spatial conv (stride 2), then a depthwise 5x1x1 temporal conv; no max-pool."""

    def __init__(self, in_channels, width, bn_splits):
        super().__init__()
        self.conv_xy = conv3d(in_channels, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.conv_t = conv3d(width, width, (5, 1, 1), padding=(2, 0, 0), groups=width)
        self.bn = SubBatchNorm3d(width, bn_splits)

    def forward(self, x):
        return F.relu(self.bn(self.conv_t(self.conv_xy(x))))


class Block(nn.Module):
    """Bottleneck: 1x1x1 -> depthwise 3x3x3 (-> SE) -> Swish -> 1x1x1, plus shortcut, then ReLU."""

    def __init__(self, in_channels, out_channels, inner, stride, use_se, bn_splits):
        super().__init__()
        self.conv_a = conv3d(in_channels, inner, 1)
        self.bn_a = SubBatchNorm3d(inner, bn_splits)
        self.conv_b = conv3d(inner, inner, 3, stride=(1, stride, stride), padding=1, groups=inner)
        self.bn_b = SubBatchNorm3d(inner, bn_splits)
        self.se = SqueezeExcitation(inner, round_width(inner, SE_RATIO)) if use_se else None
        self.conv_c = conv3d(inner, out_channels, 1)
        self.bn_c = SubBatchNorm3d(out_channels, bn_splits)
        # The authors project the shortcut in block 0 of every stage, stage 2 (24 -> 24) included.
        self.has_projection = stride != 1 or in_channels != out_channels
        if self.has_projection:
            self.shortcut_conv = conv3d(in_channels, out_channels, 1, stride=(1, stride, stride))
            self.shortcut_bn = SubBatchNorm3d(out_channels, bn_splits)

    def forward(self, x):
        shortcut = self.shortcut_bn(self.shortcut_conv(x)) if self.has_projection else x
        y = F.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        if self.se is not None:
            y = self.se(y)
        y = self.bn_c(self.conv_c(F.silu(y)))
        return F.relu(shortcut + y)


class Head(nn.Module):
    """conv_5 -> BN -> ReLU -> average pool -> lin_5 -> ReLU -> dropout -> linear.

    The authors pool with a FIXED window (frames, crop/32, crop/32) of the train shape. At the train shape that is
    global pooling; at a larger test crop it leaves several positions, each classified, and eval averages their
    softmax. We return log(mean softmax) then, so softmax(output) is the authors' eval output. A window larger than
    the input (Multigrid's smaller shapes) shrinks to the input: global pooling.
    task='loc' pools space only and returns per-frame logits (B, classes, T).
    """

    def __init__(self, in_channels, conv5_width, n_classes, dropout, pool_window, task, bn_splits):
        super().__init__()
        self.conv_5 = conv3d(in_channels, conv5_width, 1)
        self.bn_5 = SubBatchNorm3d(conv5_width, bn_splits)
        self.lin_5 = conv3d(conv5_width, HEAD_WIDTH, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(HEAD_WIDTH, n_classes)
        self.pool_window = tuple(int(size) for size in pool_window)   # plain ints keep torch.compile happy
        self.task = task
        self.multi_label = False   # set by multi-label tasks: several eval positions give the mean of sigmoids

    def forward(self, x):
        x = F.relu(self.bn_5(self.conv_5(x)))
        if self.task == "loc":
            x = x.mean(dim=(3, 4), keepdim=True)
        else:
            window = tuple(min(w, size) for w, size in zip(self.pool_window, x.shape[2:]))
            if window == tuple(x.shape[2:]) and x.device.type != "cpu":
                # a window over the whole input (always, in training) is a mean, whose CUDA backward is deterministic
                # (avg_pool3d's is not); the CPU keeps avg_pool3d, which rounds its sum differently
                x = x.mean((2, 3, 4), keepdim=True)
            else:
                x = F.avg_pool3d(x, window, stride=1)
        x = F.relu(self.lin_5(x))
        logits = self.fc(self.dropout(x.permute(0, 2, 3, 4, 1)))     # (B, t, h, w, classes)
        if self.task == "loc":
            return logits.flatten(2, 3).squeeze(2).transpose(1, 2)   # (B, classes, T)
        logits = logits.flatten(1, 3)                                # (B, positions, classes)
        if logits.shape[1] == 1:
            return logits[:, 0]
        if self.training:
            return logits.mean(dim=1)
        if self.multi_label:   # sigmoid(output) is the mean of the positions' sigmoids (the authors' Charades eval)
            return torch.logit(torch.sigmoid(logits.float()).mean(dim=1), eps=1e-7)
        return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=1) - math.log(logits.shape[1])


class X3D(nn.Module):
    def __init__(self, version="S", n_classes=400, n_input_channels=3, dropout=0.5, base_bn_splits=1,
                 task="class", frames=None, train_crop=None):
        super().__init__()
        if task not in ("class", "loc"):
            raise ValueError(f"task must be 'class' or 'loc', not {task!r}")
        spec = get_version(version)
        self.version = str(version).upper()
        frames = frames or spec.frames
        train_crop = train_crop or spec.train_crop

        stem_width = round_width(STEM_BASE_WIDTH, spec.width)
        self.stem = Stem(n_input_channels, stem_width, base_bn_splits)
        in_channels = stem_width
        self.stages = nn.ModuleList()
        for base_width, base_depth in zip(STAGE_BASE_WIDTHS, STAGE_BASE_DEPTHS):
            out_channels = round_width(base_width, spec.width)
            inner = int(BOTTLENECK_FACTOR * out_channels)
            blocks = [Block(in_channels if i == 0 else out_channels, out_channels, inner, stride=2 if i == 0 else 1,
                            use_se=i % 2 == 0, bn_splits=base_bn_splits)
                      for i in range(math.ceil(spec.depth * base_depth))]
            # stride 2 in block 0 forces a projection shortcut even where widths match (stage 2, as the authors do)
            self.stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        pool_side = math.ceil(train_crop / TOTAL_SPATIAL_STRIDE)
        self.head = Head(in_channels, inner, n_classes, dropout, (frames, pool_side, pool_side), task, base_bn_splits)
        self._init_weights()

    def _init_weights(self):
        """The authors' recipe (init_weights), with the last BN of each block at 0."""
        init_weights(self)
        for module in self.modules():
            if isinstance(module, Block):
                nn.init.zeros_(module.bn_c.weight)

    def forward(self, x):
        if self.stem.conv_xy.weight.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def generate_model(x3d_version, n_classes=400, n_input_channels=3, dropout=0.5, base_bn_splits=1, task="class",
                   frames=None, train_crop=None, channels_last=True):
    """Build X3D-XS/S/M/L/XL (case-insensitive). `frames` / `train_crop` override the version's train shape, which
    fixes the head's pooling window (give them when training at another shape than the version's recipe).
    channels_last: keep weights in channels_last_3d and convert inputs to it (about 1.5x faster forward+backward on
    CPU, see benchmarks/bench_model.py); the outputs are the same either way."""
    model = X3D(x3d_version, n_classes, n_input_channels, dropout, base_bn_splits, task, frames, train_crop)
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


# ---------------------------------------------------------------------------------------------------------------
# Weights: any format checkpoints.py reads, renamed to this file's modules.

def _identity_bn_state(bn):
    return {"weight": torch.ones_like(bn.weight), "bias": torch.zeros_like(bn.bias),
            "running_mean": torch.zeros_like(bn.running_mean),
            "running_var": torch.full_like(bn.running_var, 1.0 - bn.eps),
            "num_batches_tracked": torch.zeros_like(bn.num_batches_tracked)}


def load_pretrained(model, path_or_state, verbose=True):
    """Load X3D weights in any format checkpoints.py reads into `model`. A classifier with another class count is left
    at its fresh initialization (the fine-tune path) and reported; any other mismatch is an error listing the keys.
    Returns a report dict: format, loaded, reinitialized."""
    source, state = read_state_dict(path_or_state)
    source_format = detect_format(state)
    state, unknown = convert_state_dict(state, source_format)
    # PyTorchVideo builds stage 2 block 0 without a shortcut BN (24 -> 24): an identity BN reproduces it exactly.
    for key in [k for k in model.state_dict() if k.endswith(".shortcut_bn.weight")]:
        prefix = key[: -len("weight")]
        shortcut_conv = f"{prefix[:-len('shortcut_bn.')]}shortcut_conv.weight"
        if not any(k.startswith(prefix) for k in state) and shortcut_conv in state:
            bn = model.get_submodule(prefix[:-1])
            state.update({prefix + name: value for name, value in _identity_bn_state(bn).items()})
    return load_checked(model, state, source, source_format, f"{source_format} format", "head.fc.", unknown,
                        verbose=verbose)


# ---------------------------------------------------------------------------------------------------------------

def model_table():
    """Each version's size and clip recipe (frames x rate, crops, jitter) with its multiply-adds."""
    rows = ["version  params      frames x rate  train crop  test crop  jitter    GMACs@train  GMACs@test",
            "-------  ----------  -------------  ----------  ---------  -------   -----------  ----------"]
    for name, spec in VERSIONS.items():
        with torch.device("meta"):
            model = generate_model(name)
        params = sum(p.numel() for p in model.parameters())
        train = count_multiply_adds(model, (1, 3, spec.frames, spec.train_crop, spec.train_crop)) / 1e9
        test = count_multiply_adds(model, (1, 3, spec.frames, spec.test_crop, spec.test_crop)) / 1e9
        jitter = f"{spec.jitter[0]}-{spec.jitter[1]}"
        rows.append(f"{name:<7}  {params:>10,}  {spec.frames:>6} x {spec.rate:<4}  {spec.train_crop:>10}  "
                    f"{spec.test_crop:>9}  {jitter:<8}  {train:>11.4f}  {test:>10.4f}")
    return "\n".join(rows)

if __name__ == "__main__":
    print(model_table())
