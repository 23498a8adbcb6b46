"""Layers both models (x3d.py, i3d.py) build from: Multigrid's split batch norm (a CPU function, and the
authors' fold into one batch norm on accelerators), a depthwise convolution with a faster CPU backward, its exact
equivalent from shifted multiply-adds for backends without grouped 3D convolution, the authors' weight
initialization, and the multiply-add count of a model."""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


# ---------------------------------------------------------------------------------------------------------------
# Multigrid's split batch norm.

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
        self.fold_splits = None      # None: the fold on accelerators, _SplitBatchNormFunction on the CPU

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.num_splits > 1:
            fold = self.fold_splits if self.fold_splits is not None else x.device.type != "cpu"
            return self._forward_fold(x) if fold else self._forward_splits(x)
        if self.sync_group is not None and x.device.type != "cpu" and dist.is_initialized():
            self.process_group = self.sync_group
            return nn.SyncBatchNorm.forward(self, x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum,
                            self.eps)

    def _check_splits(self, x):
        if x.shape[0] % self.num_splits:
            raise ValueError(f"SubBatchNorm3d: a training batch of {x.shape[0]} samples does not divide into "
                             f"{self.num_splits} BN splits")

    def _forward_splits(self, x):
        """The CPU path: _SplitBatchNormFunction, which keeps channels_last_3d."""
        self._check_splits(x)
        y, split_mean, split_var = _SplitBatchNormFunction.apply(x, self.weight, self.bias, self.num_splits, self.eps)
        self._update_running_stats(split_mean, split_var, x.numel() // x.shape[1])
        return y

    def _forward_fold(self, x):
        """The accelerator path, the authors' fold: (B, C, ...) viewed as (B/k, k*C, ...) puts sample i's channels in
        block i mod k, so one F.batch_norm (one cuDNN kernel each way) with the affine repeated k times normalizes
        every split. Its running statistics go to scratch buffers at momentum 1, which then hold the split means and
        unbiased variances (fresh zeros each step: a non-finite step must not leave NaN for the next)."""
        self._check_splits(x)
        splits, channels = self.num_splits, x.shape[1]
        folded = x.reshape(x.shape[0] // splits, splits * channels, *x.shape[2:])
        scratch = torch.zeros(2, splits * channels, device=x.device, dtype=self.running_mean.dtype)
        y = F.batch_norm(folded, scratch[0], scratch[1], self.weight.repeat(splits), self.bias.repeat(splits), True,
                         1.0, self.eps)
        per_split = folded.numel() // folded.shape[1]
        with torch.no_grad():
            split_var = scratch[1].view(splits, channels) * ((per_split - 1) / per_split)    # unbiased -> biased
            self._update_running_stats(scratch[0].view(splits, channels), split_var, x.numel() // channels)
        y = y.view(x.shape)
        # a channels_last_3d input was copied to the plain layout by the fold; give the next layers their layout back
        return y.contiguous(memory_format=torch.channels_last_3d) if _is_channels_last(x) else y

    @torch.no_grad()
    def _update_running_stats(self, split_mean, split_var, count):
        """Whole-batch running statistics from the (k, C) split means and biased variances of `count` values per
        channel: the mean of the split means; the mean of the split variances plus the variance of the split means,
        made unbiased as BatchNorm's."""
        batch_mean = split_mean.mean(0)
        batch_var = (split_var.mean(0) + split_mean.var(0, correction=0)) * count / max(count - 1, 1)
        self.running_mean.lerp_(batch_mean.to(self.running_mean.dtype), self.momentum)
        self.running_var.lerp_(batch_var.to(self.running_var.dtype), self.momentum)
        self.num_batches_tracked.add_(1)


def _is_channels_last(x):
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def _grouped(t, splits):
    """(B, C, ...) -> the view (B/k, k, C, ...): sample i at [i // k, i mod k], so a (k, C) tensor viewed as
    (1, k, C, 1, ...) broadcasts each split's row over its samples' positions, in any memory format."""
    return t.view(t.shape[0] // splits, splits, *t.shape[1:])


def _split_sum(t, splits):
    """(B, C, ...) -> (k, C) sums: sample i adds into split i mod k."""
    return t.sum(tuple(range(2, t.dim()))).view(t.shape[0] // splits, splits, t.shape[1]).sum(0)


def _broadcast(coefficients, like):
    """(k, C) -> (1, k, C, 1, ...), to combine with _grouped(like)."""
    return coefficients.view(1, *coefficients.shape, *(1,) * (like.dim() - 2))


class _SplitBatchNormFunction(torch.autograd.Function):
    """Batch norm of each split (sample i in split i mod k) with one shared affine, forward and backward written
    out with per-sample sums over (T, H, W): the (B, C) sums are cheap in any memory format and fold into (k, C)
    split sums by a view, and the normalization is one multiply-add on the (B/k, k, C, ...) view with broadcast
    per-split coefficients, so a channels_last_3d input and its gradient keep their layout (folding the splits into
    the channels, the authors' way, copies to the plain layout and slows every later layer on the CPU). Computes in
    float32 for half inputs, and keeps for the backward the input in its own dtype (a float32 copy would add a
    third to a bf16 run's activation memory). Returns the output and the split means and (biased) variances,
    (k, C), for the running statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, splits, eps):
        count = x.numel() // x.shape[1] // splits   # elements per split and channel
        half = x.dtype not in (torch.float32, torch.float64)
        xf = x.float() if half else x
        # two passes (mean, then spread): no cancellation in E[x^2] - mean^2
        mean = _split_sum(xf, splits).div_(count)
        centered = _centered(xf, mean, splits)
        var = _split_sum(centered * centered, splits).div_(count)
        invstd = torch.rsqrt(var + eps)
        y = torch.addcmul(bias.to(invstd.dtype).view(1, 1, -1, *(1,) * (x.dim() - 2)), _grouped(centered, splits),
                          _broadcast(invstd * weight, x))
        # a full-precision input's centered copy costs nothing extra to keep; a half input is kept as it came
        ctx.save_for_backward(x if half else centered, mean, weight, invstd)
        ctx.splits, ctx.half = splits, half
        return y.reshape(x.shape).to(x.dtype), mean, var

    @staticmethod
    @once_differentiable    # the backward is written out, not differentiable again: a double backward raises
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        saved, mean, weight, invstd = ctx.saved_tensors
        splits = ctx.splits
        centered = _centered(saved.float(), mean, splits) if ctx.half else saved
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
        grad_x = torch.addcmul(_broadcast(r, dy), _grouped(dy, splits), _broadcast(p, dy))
        grad_x.addcmul_(_grouped(centered, splits), _broadcast(q, dy))
        return grad_x.reshape(dy.shape).to(grad_y.dtype), grad_weight, grad_bias, None, None


def _centered(x, mean, splits):
    """x minus its split's mean, (B, C, ...), in x's memory format."""
    return (_grouped(x, splits) - _broadcast(mean, x)).reshape(x.shape)


def set_bn_splits(model, num_splits):
    """Set the training split count of every SubBatchNorm3d (Multigrid changes it between phases)."""
    for module in model.modules():
        if isinstance(module, SubBatchNorm3d):
            module.num_splits = num_splits


def set_bn_fold(model, fold):
    """Force the split path of every SubBatchNorm3d: True the fold, False _SplitBatchNormFunction, None by device
    (benchmarks compare the two; both give the same numbers)."""
    for module in model.modules():
        if isinstance(module, SubBatchNorm3d):
            module.fold_splits = fold


def set_bn_sync_group(model, process_group):
    """Synchronize BN statistics over `process_group` (None: per device)."""
    for module in model.modules():
        if isinstance(module, SubBatchNorm3d):
            module.sync_group = process_group


# ---------------------------------------------------------------------------------------------------------------
# Depthwise convolution with a faster CPU backward.

def conv3d(in_channels, out_channels, kernel, stride=1, padding=0, groups=1, bias=False):
    """nn.Conv3d, or DepthwiseConv3d (same parameters and outputs) for a bias-free depthwise convolution."""
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


# The weight gradient goes per kernel tap where torch's CPU depthwise kernel is slow: small kernels, stride 2 and
# small output planes (chosen per layer shape; benchmarks/bench_model.py times the step, --profile its ops).
TAPWISE_MAX_TAPS = 9
TAPWISE_MAX_PLANE = 40 * 40
TAPWISE_CHUNK_BYTES = 16 * 2 ** 20   # a chunk's input and gradient stay in the last-level cache


def _valid_taps(in_sizes, out_sizes, kernel, stride, padding):
    """For each kernel tap (i, j, k), in weight order: (output slices, input slices) of the positions where the tap
    falls inside the input, or None where it falls wholly in the zero padding. No padded copy of the input is made:
    at multigrid's small planes (1 x 1 .. 3 x 3) most of a padded input is padding."""
    per_dim = []
    for n, o, k, s, p in zip(in_sizes, out_sizes, kernel, stride, padding):
        ranges = []
        for t in range(k):
            first = max(0, -((t - p) // s))                 # ceil((p - t) / s): the first output inside the input
            last = min(o - 1, (n - 1 + p - t) // s)
            ranges.append(None if last < first else
                          (slice(first, last + 1), slice(first * s + t - p, last * s + t - p + 1, s)))
        per_dim.append(ranges)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            for k in range(kernel[2]):
                parts = (per_dim[0][i], per_dim[1][j], per_dim[2][k])
                yield None if None in parts else (tuple(o for o, _ in parts), tuple(x for _, x in parts))


def _depthwise_weight_grad_tapwise(grad_out, x, kernel, stride, padding):
    """dW[c, i, j, k] = sum over batch and output positions of grad_out times the input under tap (i, j, k), over
    the positions where the tap is inside the input (padding adds nothing). The batch goes through in chunks whose
    input and gradient fit in TAPWISE_CHUNK_BYTES, so that the passes of all taps over a chunk read it from cache
    rather than memory."""
    per_sample = (grad_out[0].numel() + x[0].numel()) * x.element_size()
    chunk = max(1, TAPWISE_CHUNK_BYTES // per_sample)
    taps = list(_valid_taps(x.shape[2:], grad_out.shape[2:], kernel, stride, padding))
    total = torch.zeros(x.shape[1], len(taps), dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], chunk):
        part_out, part_x = grad_out[start:start + chunk], x[start:start + chunk]
        for index, tap in enumerate(taps):
            if tap is not None:
                (to, ho, wo), (ti, hi, wi) = tap
                total[:, index] += (part_out[:, :, to, ho, wo] * part_x[:, :, ti, hi, wi]).sum(
                    (0, 2, 3, 4), dtype=torch.float32)
    return total.view(-1, 1, *kernel)


class _DepthwiseConv3dFunction(torch.autograd.Function):
    """A depthwise 3D convolution with a faster CPU backward. Input gradient: with 'same' padding it is itself a
    stride-1 depthwise convolution (kernel flipped in every dimension) of grad_out, spread out by zeros at stride 2,
    which torch's forward kernel computes faster than its backward does. Weight gradient: per kernel tap where
    that is faster (see TAPWISE_MAX_*)."""

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
    @once_differentiable    # the backward is written out, not differentiable again: a double backward raises
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
        weight = self.weight.to(x.dtype)     # under autocast a bf16 window times an fp32 weight would give fp32
        for (i, j, k), window in _tap_windows(x, self.kernel_size, self.stride, self.padding):
            term = window * weight[:, 0, i, j, k].view(1, -1, 1, 1, 1)
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
# The authors' initialization.

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


# ---------------------------------------------------------------------------------------------------------------

def count_multiply_adds(model, input_shape):
    """Multiply-adds of one forward pass (the paper's "FLOPs"): FlopCounterMode's total / 2, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    meta_model = model.to("meta") if next(model.parameters()).device.type != "meta" else model
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model.eval()(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() / 2
