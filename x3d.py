"""X3D video models (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020).

Exact to the authors' released architecture (SlowFast repository): same widths, depths, squeeze-excitation placement,
head and initialization, so the authors' weights load and reproduce their outputs. Differences are additions:
  * SubBatchNorm3d everywhere (head included) so Multigrid training can normalize groups of 8 samples;
  * the head pools globally when the input is smaller than the train shape (Multigrid short cycles);
  * Swish is F.silu (exports to ONNX; the authors' autograd Swish does not);
  * `load_pretrained` reads the SlowFast, PyTorchVideo, x3d-multigrid and this project's checkpoints.

    from x3d import generate_model
    model = generate_model('S')            # 3,794,322 parameters, 1.96 GFLOPs at 13 x 160 x 160

`python x3d.py` prints parameters and multiply-adds of every version.
"""
import math
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


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
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


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


class SubBatchNorm3d(nn.BatchNorm3d):
    """Batch norm that can normalize a training batch in `num_splits` separate groups (Multigrid's sub-batch norm)
    or across devices (synchronized BN for phases with fewer than 8 samples per device), with one shared affine.

    Sample i belongs to split i mod num_splits. Only whole-batch running statistics are kept, so
      * eval needs nothing but `model.eval()`: the running statistics are the aggregate of the splits
        (mean of split means; mean of split variances plus the variance of split means = whole-batch variance),
      * changing `num_splits` between phases keeps everything learnt so far,
      * `state_dict()` has plain BatchNorm names and loads into a model with any split count.
    `sync_group` (a process group) switches synchronized BN on; it is used only on accelerators, where
    torch supports it. (A plain BatchNorm3d subclass borrowing SyncBatchNorm's forward: DDP refuses CPU models
    that contain SyncBatchNorm modules, and CPU DDP must work.)
    """
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels

    def __init__(self, num_features, num_splits=1, eps=BN_EPS, momentum=BN_MOMENTUM):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.num_splits = num_splits
        self.sync_group = None
        self.process_group = None

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.num_splits > 1:
            return self._forward_splits(x)
        if self.sync_group is not None and x.device.type != "cpu" and dist.is_initialized():
            self.process_group = self.sync_group
            return nn.SyncBatchNorm.forward(self, x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum,
                            self.eps)

    def _forward_splits(self, x):
        batch, splits = x.shape[0], self.num_splits
        if batch % splits:
            raise ValueError(f"SubBatchNorm3d: a training batch of {batch} samples does not divide into "
                             f"{splits} BN splits")
        y, split_mean, split_var = _SplitBatchNormFunction.apply(x, self.weight, self.bias, splits, self.eps)
        with torch.no_grad():  # whole-batch statistics: the aggregate of the splits
            count = x.numel() // x.shape[1]
            batch_mean = split_mean.mean(0)
            batch_var = (split_var.mean(0) + split_mean.var(0, correction=0)) * count / max(count - 1, 1)
            self.running_mean.lerp_(batch_mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(batch_var.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return y


def _split_sum(t, splits):
    """(B, C, ...) -> (k, C) sums: sample i adds into split i mod k."""
    return t.sum(tuple(range(2, t.dim()))).view(t.shape[0] // splits, splits, t.shape[1]).sum(0)


def _per_sample(coefficients, like):
    """(k, C) -> (B, C, 1, ...) : sample i gets split i mod k's row, broadcastable over its positions."""
    batch, channels = like.shape[:2]
    return coefficients.repeat(batch // coefficients.shape[0], 1).view(batch, channels, *(1,) * (like.dim() - 2))


class _SplitBatchNormFunction(torch.autograd.Function):
    """Batch norm of each split (sample i in split i mod k) with one shared affine, forward and backward written
    out with per-sample sums over (T, H, W): the (B, C) sums are cheap in any memory format and fold into (k, C)
    split sums by a view, and the normalization is one multiply-add with per-sample coefficients, so a
    channels_last_3d input and its gradient keep their layout. (Splits folded into the channels, the authors' trick,
    copies channels_last activations to the plain layout, and every later layer then ran 3-4x slower on the CPU;
    autograd through torch.var_mean on a (B/k, k, ...) view cost 2-6x this.) Computes in float32 for half inputs.
    Returns the output and the split means and (biased) variances, (k, C), for the running statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, splits, eps):
        count = x.numel() // x.shape[1] // splits   # elements per split and channel
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        mean = _split_sum(xf, splits) / count
        centered = xf - _per_sample(mean, x)         # two passes (mean, then spread): no cancellation in E[x^2]
        var = _split_sum(centered * centered, splits) / count
        invstd = torch.rsqrt(var + eps)
        y = torch.addcmul(_per_sample(bias.to(invstd.dtype).expand_as(invstd), x), centered,
                          _per_sample(invstd * weight, x))
        ctx.save_for_backward(centered, weight, invstd)
        ctx.splits = splits
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        centered, weight, invstd = ctx.saved_tensors
        splits = ctx.splits
        count = centered.numel() // centered.shape[1] // splits
        dy = grad_y if grad_y.dtype == centered.dtype else grad_y.to(centered.dtype)
        sum_dy = _split_sum(dy, splits)
        sum_dy_centered = _split_sum(dy * centered, splits)
        grad_weight = (sum_dy_centered * invstd).sum(0).to(weight.dtype)
        grad_bias = sum_dy.sum(0).to(weight.dtype)
        # dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = centered * invstd, written as
        # dy * p + centered * q + r with per-(split, channel) p, q, r
        p = weight * invstd
        q = -p * invstd.square() * sum_dy_centered / count
        r = -p * sum_dy / count
        grad_x = torch.addcmul(_per_sample(r, dy), dy, _per_sample(p, dy))
        grad_x = torch.addcmul(grad_x, centered, _per_sample(q, dy))
        return grad_x.to(grad_y.dtype), grad_weight, grad_bias, None, None


def set_bn_splits(model, num_splits):
    """Set the training split count of every SubBatchNorm3d (Multigrid changes it between phases)."""
    for module in model.modules():
        if isinstance(module, SubBatchNorm3d):
            module.num_splits = num_splits


def set_bn_sync_group(model, process_group):
    """Synchronize BN statistics over `process_group` (None: per device)."""
    for module in model.modules():
        if isinstance(module, SubBatchNorm3d):
            module.sync_group = process_group


def conv3d(in_channels, out_channels, kernel, stride=1, padding=0, groups=1, bias=False):
    depthwise = groups > 1 and groups == in_channels == out_channels and not bias
    return (DepthwiseConv3d if depthwise else nn.Conv3d)(in_channels, out_channels, kernel, stride=stride,
                                                         padding=padding, groups=groups, bias=bias)


def _tap_windows(x, kernel, stride, padding):
    """For each kernel tap (i, j, k), in weight order: the output-sized, strided slice of the zero-padded input that
    the tap multiplies. A depthwise convolution is the sum over taps of window * weight[:, 0, i, j, k]."""
    x = F.pad(x, (padding[2], padding[2], padding[1], padding[1], padding[0], padding[0]))
    out = [(size - k) // s + 1 for size, k, s in zip(x.shape[2:], kernel, stride)]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            for k in range(kernel[2]):
                yield (i, j, k), x[:, :, i:i + (out[0] - 1) * stride[0] + 1:stride[0],
                                   j:j + (out[1] - 1) * stride[1] + 1:stride[1],
                                   k:k + (out[2] - 1) * stride[2] + 1:stride[2]]


# torch's CPU depthwise weight gradient costs ~10 ns per output element at large planes but up to ~55 ns at small
# ones (3x3 planes of X3D's last stage), and more at stride 2; one multiply-and-sum per kernel tap costs ~0.5-1 ns
# per element per tap when the batch goes through in chunks that stay in cache. Measured per layer (a timing loop
# over the depthwise layer shapes of X3D-XS at 8-128 x 2-8 x 20-40, X3D-S at 4 x 13 x 160 and X3D-M/L planes,
# 2 threads): taps win for kernels of at most 9 taps, at stride 2 (e.g. 66 vs 142 ms at 4x54x13x80x80 -> 40x40)
# and on output planes up to 40 x 40 (39 vs 53 ms at 4x54x13x40x40); on larger stride-1 planes (56 x 56, 78 x 78)
# the two were even or torch's kernel won.
TAPWISE_MAX_TAPS = 9
TAPWISE_MAX_PLANE = 40 * 40
TAPWISE_CHUNK_BYTES = 16 * 2 ** 20   # half the 32 MiB L3 of the build machine; a chunk per 4-16 MiB measured alike


def _depthwise_weight_grad_tapwise(grad_out, x, kernel, stride, padding):
    """dW[c, i, j, k] = sum over batch and output positions of grad_out times the input under tap (i, j, k). The
    batch goes through in chunks whose input and gradient fit in TAPWISE_CHUNK_BYTES, so that the passes of all
    taps over a chunk read it from cache rather than memory; the products reuse one buffer (a fresh one per tap
    cost up to a third more)."""
    per_sample = (grad_out[0].numel() + x[0].numel()) * x.element_size()
    chunk = max(1, TAPWISE_CHUNK_BYTES // per_sample)
    products = torch.empty_like(grad_out[:chunk])
    total = 0
    for start in range(0, x.shape[0], chunk):
        part_out, part_x = grad_out[start:start + chunk], x[start:start + chunk]
        buffer = products[:part_out.shape[0]]
        total = total + torch.stack([torch.mul(part_out, window, out=buffer).sum((0, 2, 3, 4), dtype=torch.float32)
                                     for _, window in _tap_windows(part_x, kernel, stride, padding)], 1)
    return total.view(-1, 1, *kernel)


class _DepthwiseConv3dFunction(torch.autograd.Function):
    """A depthwise 3D convolution with a faster CPU backward. Input gradient: with 'same' padding it is itself a
    stride-1 depthwise convolution (kernel flipped in every dimension) of grad_out, spread out by zeros at stride 2,
    which torch's forward kernel computes 1.1-7x faster than its backward does. Weight gradient: per kernel tap
    where that is faster (see TAPWISE_MAX_*)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        if torch.is_autocast_enabled("cpu"):
            # compute in autocast's dtype as a plain conv would, and keep it for the backward, which autocast does
            # not cover (mixed bf16 gradients and fp32 weights would not convolve); autograd casts the gradients
            # back to the parameters' dtype
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv3d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        groups, kernel = weight.shape[0], weight.shape[2:]
        grad_x = grad_w = None

        def torch_backward(output_mask):
            return torch.ops.aten.convolution_backward(grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1, 1),
                                                       False, (0, 0, 0), groups, output_mask)

        if ctx.needs_input_grad[0]:
            if all(2 * p + 1 == k for p, k in zip(ctx.padding, kernel)):
                spread = grad_out
                if ctx.stride != (1, 1, 1):  # a strided conv's input gradient sees grad_out spread out by zeros
                    spread = torch.zeros_like(x, dtype=grad_out.dtype)
                    spread[:, :, ::ctx.stride[0], ::ctx.stride[1], ::ctx.stride[2]] = grad_out
                grad_x = F.conv3d(spread, weight.flip(2, 3, 4), None, 1, ctx.padding, 1, groups)
            else:
                grad_x = torch_backward((True, False, False))[0]
        if ctx.needs_input_grad[1]:
            if math.prod(kernel) <= TAPWISE_MAX_TAPS or ctx.stride != (1, 1, 1) \
                    or math.prod(grad_out.shape[3:]) <= TAPWISE_MAX_PLANE:
                grad_w = _depthwise_weight_grad_tapwise(grad_out, x, kernel, ctx.stride, ctx.padding)
                grad_w = grad_w.to(weight.dtype)
            else:
                grad_w = torch_backward((False, True, False))[1]
        return grad_x, grad_w, None, None


class DepthwiseConv3d(nn.Conv3d):
    """nn.Conv3d (same parameters, same state-dict names, same outputs) with a faster backward on the CPU when
    training; elsewhere (CUDA, eval, export) it is exactly nn.Conv3d."""

    def forward(self, x):
        if x.device.type == "cpu" and torch.is_grad_enabled() and self.padding_mode == "zeros" \
                and not isinstance(self.padding, str) and self.dilation == (1, 1, 1) \
                and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export():
            return _DepthwiseConv3dFunction.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, inner):
        super().__init__()
        self.fc1 = conv3d(channels, inner, 1, bias=True)
        self.fc2 = conv3d(inner, channels, 1, bias=True)

    def forward(self, x):
        scale = F.adaptive_avg_pool3d(x, 1)
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


def init_weights(model):
    """MSRA fan-out convs, BN weight 1 / bias 0, linear N(0, 0.01), zero biases (the SlowFast and mmaction2 recipe)."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


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
# Depthwise convolution from ordinary ops, for backends without grouped 3D convolution (Ascend's PyTorch lacked it).

class ShiftedDepthwiseConv3d(nn.Module):
    """Exact equivalent of a depthwise nn.Conv3d (groups == channels, no bias) as a sum of shifted per-channel
    multiply-adds: the same weight tensor, the same outputs, the same multiply-adds."""

    def __init__(self, conv):
        super().__init__()
        if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels or conv.bias is not None:
            raise ValueError("ShiftedDepthwiseConv3d replaces bias-free depthwise convolutions only")
        self.weight = conv.weight                   # shared Parameter: state_dict names stay `<conv>.weight`
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding

    def forward(self, x):
        out = None
        for (i, j, k), window in _tap_windows(x, self.kernel_size, self.stride, self.padding):
            term = window * self.weight[:, 0, i, j, k].view(1, -1, 1, 1, 1)
            out = term if out is None else out + term
        return out


def use_shifted_depthwise(model):
    """Replace every depthwise Conv3d in `model` by ShiftedDepthwiseConv3d, in place (weights shared)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv3d) and child.groups > 1 and child.groups == child.in_channels:
                setattr(parent, name, ShiftedDepthwiseConv3d(child))
    return model


# ---------------------------------------------------------------------------------------------------------------
# Weight porting: the authors' SlowFast .pyth, PyTorchVideo hub .pyth, x3d-multigrid .pt and our own checkpoints.

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")

SLOWFAST_RENAMES = [  # regex on the module path -> our module path
    (r"^s1\.pathway0_stem\.conv_xy$", "stem.conv_xy"),
    (r"^s1\.pathway0_stem\.conv$", "stem.conv_t"),
    (r"^s1\.pathway0_stem\.bn$", "stem.bn"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch1$", r"stages.{s}.\2.shortcut_conv"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch1_bn$", r"stages.{s}.\2.shortcut_bn"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch2\.([abc])$", r"stages.{s}.\2.conv_\3"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch2\.([abc])_bn$", r"stages.{s}.\2.bn_\3"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch2\.se\.(fc[12])$", r"stages.{s}.\2.se.\3"),
    (r"^head\.conv_5$", "head.conv_5"),
    (r"^head\.conv_5_bn$", "head.bn_5"),
    (r"^head\.lin_5$", "head.lin_5"),
    (r"^head\.projection$", "head.fc"),
]
PYTORCHVIDEO_RENAMES = [
    (r"^blocks\.0\.conv\.conv_t$", "stem.conv_xy"),     # PyTorchVideo's names are swapped, the order is right
    (r"^blocks\.0\.conv\.conv_xy$", "stem.conv_t"),
    (r"^blocks\.0\.norm$", "stem.bn"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch1_conv$", r"stages.{s}.\2.shortcut_conv"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch1_norm$", r"stages.{s}.\2.shortcut_bn"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.conv_([abc])$", r"stages.{s}.\2.conv_\3"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_([ac])$", r"stages.{s}.\2.bn_\3"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_b(\.0)?$", r"stages.{s}.\2.bn_b"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_b\.1\.block\.0$", r"stages.{s}.\2.se.fc1"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_b\.1\.block\.2$", r"stages.{s}.\2.se.fc2"),
    (r"^blocks\.5\.pool\.pre_conv$", "head.conv_5"),
    (r"^blocks\.5\.pool\.pre_norm$", "head.bn_5"),
    (r"^blocks\.5\.pool\.post_conv$", "head.lin_5"),
    (r"^blocks\.5\.proj$", "head.fc"),
]
PORT_RENAMES = [  # x3d-multigrid; its sub-BN keeps eval statistics under `<bn>.bn.*` and split ones under `.split_bn.*`
    (r"^conv1_s$", "stem.conv_xy"),
    (r"^conv1_t$", "stem.conv_t"),
    (r"^bn1(\.bn)?$", "stem.bn"),
    (r"^layer(\d)\.(\d+)\.conv([123])$", r"stages.{s}.\2.conv_{abc}"),
    (r"^layer(\d)\.(\d+)\.bn([123])(\.bn)?$", r"stages.{s}.\2.bn_{abc}"),
    (r"^layer(\d)\.(\d+)\.(fc[12])$", r"stages.{s}.\2.se.\3"),
    (r"^layer(\d)\.(\d+)\.downsample\.0$", r"stages.{s}.\2.shortcut_conv"),
    (r"^layer(\d)\.(\d+)\.downsample\.1(\.bn)?$", r"stages.{s}.\2.shortcut_bn"),
    (r"^conv5$", "head.conv_5"),
    (r"^bn5(\.bn)?$", "head.bn_5"),
    (r"^fc1$", "head.lin_5"),
    (r"^fc2$", "head.fc"),
]
FORMATS = {  # name -> (a key prefix that identifies it, renames, index of its first residual stage)
    "slowfast": ("s1.pathway0_stem.", SLOWFAST_RENAMES, 2),
    "pytorchvideo": ("blocks.0.", PYTORCHVIDEO_RENAMES, 1),
    "x3d-multigrid": ("conv1_s.", PORT_RENAMES, 1),
    "x3d-project": ("stem.", None, None),
}


class CheckpointError(RuntimeError):
    pass


def read_checkpoint(path):
    """torch.load with weights_only=True: tensors and plain containers only, no pickled code ever runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as error:  # UnpicklingError for pickled objects, RuntimeError for a corrupt zip, ...
        raise CheckpointError(
            f"{path}: refused or unreadable. Only tensors and plain containers are loaded (weights_only=True); a file "
            f"carrying pickled Python objects is refused and nothing of it runs. Details: {error}") from None


def extract_state_dict(checkpoint):
    for key in ("model_state", "model_state_dict", "model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def detect_format(state_dict):
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    for name, (prefix, _, _) in FORMATS.items():
        if any(k.startswith(prefix) for k in keys):
            return name
    raise CheckpointError("unrecognized checkpoint: none of the SlowFast, PyTorchVideo, x3d-multigrid or X3D project "
                          f"key patterns found (first keys: {keys[:5]})")


def _rename(module_path, renames, first_stage):
    for pattern, target in renames:
        match = re.match(pattern, module_path)
        if match:
            stage = int(match.group(1)) - first_stage if "{s}" in target else None
            name = match.expand(target.replace("{s}", str(stage)))
            if "{abc}" in name:
                name = name.replace("{abc}", "abc"[int(match.group(3)) - 1])
            return name
    return None


def convert_state_dict(state_dict, source_format):
    """Rename `state_dict` from `source_format` to this file's names. Returns (converted, dropped unknown keys)."""
    _, renames, first_stage = FORMATS[source_format]
    converted, unknown = {}, []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if renames is None:
            converted[key] = value
            continue
        module_path, param = key.rsplit(".", 1)
        if ".split_bn" in module_path:         # per-split statistics: shape depends on the split count; not needed
            continue
        target = _rename(module_path, renames, first_stage)
        if target is None:
            unknown.append(key)
        else:
            converted[f"{target}.{param}"] = value
    return converted, unknown


def _identity_bn_state(bn):
    return {"weight": torch.ones_like(bn.weight), "bias": torch.zeros_like(bn.bias),
            "running_mean": torch.zeros_like(bn.running_mean),
            "running_var": torch.full_like(bn.running_var, 1.0 - bn.eps),
            "num_batches_tracked": torch.zeros_like(bn.num_batches_tracked)}


def load_pretrained(model, path_or_state, verbose=True):
    """Load X3D weights in any supported format into `model`. A classifier with another class count is left at its
    fresh initialization (the fine-tune path) and reported; any other mismatch is an error listing the keys.
    Returns a report dict: format, loaded, reinitialized."""
    source = path_or_state if isinstance(path_or_state, str) else "<state dict>"
    checkpoint = read_checkpoint(path_or_state) if isinstance(path_or_state, str) else path_or_state
    state = extract_state_dict(checkpoint)
    source_format = detect_format(state)
    state, unknown = convert_state_dict(state, source_format)

    own = model.state_dict()
    # PyTorchVideo builds stage 2 block 0 without a shortcut BN (24 -> 24): an identity BN reproduces it exactly.
    for key in [k for k in own if k.endswith(".shortcut_bn.weight")]:
        prefix = key[: -len("weight")]
        if not any(k.startswith(prefix) for k in state) and f"{prefix[:-len('shortcut_bn.')]}shortcut_conv.weight" in state:
            bn = model.get_submodule(prefix[:-1])
            state.update({prefix + name: value for name, value in _identity_bn_state(bn).items()})
    for key in own:  # older checkpoints may lack the BN batch counter; it carries no information we need
        if key.endswith("num_batches_tracked") and key not in state and key.replace("num_batches_tracked", "weight") in state:
            state[key] = own[key].clone()

    reinitialized = []
    classifier = [k for k in own if k.startswith("head.fc.")]
    if all(k in state for k in classifier) and any(state[k].shape != own[k].shape for k in classifier):
        reinitialized = classifier
        for k in classifier:
            del state[k]
    missing = [k for k in own if k not in state and k not in reinitialized]
    unexpected = unknown + [k for k in state if k not in own]
    wrong_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)]
        raise CheckpointError(f"{source} ({source_format} format) does not fit this model:\n" + "\n".join(
            f"  {label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for label, keys in problems if keys))
    model.load_state_dict(state, strict=not reinitialized)
    report = {"format": source_format, "loaded": len(state), "reinitialized": reinitialized}
    if verbose:
        note = (f"; classifier re-initialized for {own['head.fc.weight'].shape[0]} classes" if reinitialized else "")
        print(f"loaded {len(state)} tensors from {source} ({source_format} format){note}")
    return report


# ---------------------------------------------------------------------------------------------------------------

def count_multiply_adds(model, input_shape):
    """Multiply-adds of one forward pass (the paper's "FLOPs"): FlopCounterMode's total / 2, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    meta_model = model.to("meta") if next(model.parameters()).device.type != "meta" else model
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model.eval()(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() / 2


def model_table():
    rows = ["version  params      frames x crop  GMACs@train  test crop  GMACs@test",
            "-------  ----------  -------------  -----------  ---------  ----------"]
    for name, spec in VERSIONS.items():
        with torch.device("meta"):
            model = generate_model(name)
        params = sum(p.numel() for p in model.parameters())
        train = count_multiply_adds(model, (1, 3, spec.frames, spec.train_crop, spec.train_crop)) / 1e9
        test = count_multiply_adds(model, (1, 3, spec.frames, spec.test_crop, spec.test_crop)) / 1e9
        rows.append(f"{name:<7}  {params:>10,}  {spec.frames:>4} x {spec.train_crop:<6}  {train:>11.4f}  "
                    f"{spec.test_crop:>9}  {test:>10.4f}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(model_table())
