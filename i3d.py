"""I3D ResNet-50 (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017; the ResNet-50 form of
Wang et al., "Non-local Neural Networks", CVPR 2018), laid out as mmaction2's `ResNet3d` I3D R50.

Architecture (verified against open-mmlab/mmaction2 `configs/_base_/models/i3d_r50.py` and
`mmaction/models/backbones/resnet3d.py`, read through a code search of the public repository):
  * conv1 5x7x7, stride (1, 2, 2), padding (2, 3, 3), BN, ReLU; max-pool 1x3x3, stride (1, 2, 2), padding (0, 1, 1);
  * bottleneck stages of (3, 4, 6, 3) blocks, widths 64/128/256/512 (x4 out), spatial stride 2 in block 0 of
    layer2-4, on the 3x3 conv (torchvision's "v1.5"), 1x1x1 projection shortcut with the same stride in block 0;
  * inflation pattern inflate=((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0)) with mmaction2's default
    inflate_style '3x1x1': in an inflated block conv1 (the first 1x1 conv) becomes 3x1x1 with temporal padding 1
    and conv2 stays 1x3x3; in the other blocks every conv is 1 frame deep (the temporal kernel sits on the first
    1x1 conv, as in Wang et al.'s I3D ResNet-50 and mmaction2);
  * pool2: max-pool 2x1x1, stride (2, 1, 1) after layer1 (mmaction2's with_pool2=True);
  * head (mmaction2's I3DHead): global average pool, dropout, linear. task='loc' pools space only.

Temporal size: 32 frames stay 32 through conv1 and the max-pool, and pool2 halves them: layer2-4 and the
per-frame logits of task='loc' run at T' = T // 2 (32 -> 16; T >= 2). The engine upsamples those logits by 2.

Deliberate difference from mmaction2's config: mmaction2's i3d_r50 sets conv1_stride_t=2 and pool1_stride_t=2
(32 -> 16 -> 8, then pool2 -> 4), which is where its ~33 GFLOPs for 32x2 at 224 come from. This project's issue
asks for stride (1, 2, 2) in conv1 and the max-pool (T' = T // 2, 3.4x the compute). `stem_temporal_stride=2`
builds mmaction2's exact layout (same parameters, T' = T // 8 for T a multiple of 8); `python i3d.py` prints both.
Same parameter names as torchvision's ResNet-50, so 2D weights map key by key.

    import i3d
    model = i3d.generate_model(n_classes=400)          # 28,043,472 parameters, 113.63 GMACs at 32 x 224 x 224
    i3d.inflate_from_2d(model, 'resnet50-0676ba61.pth')  # a torchvision ResNet-50 state dict on local disk

`python i3d.py` prints parameters and multiply-adds.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import fill_batch_counters, load_checked, raise_unless_fits, read_state_dict, strip_module_prefix
from layers import SubBatchNorm3d, conv3d, count_multiply_adds, init_weights
from recipe import ClipRecipe

RECIPE = ClipRecipe(frames=32, rate=2, train_crop=224, test_crop=256, jitter=(256, 320))

STEM_WIDTH = 64
CONV1_KERNEL = (5, 7, 7)
STAGE_WIDTHS = (64, 128, 256, 512)          # inner width of the bottlenecks of layer1..layer4
STAGE_DEPTHS = (3, 4, 6, 3)
EXPANSION = 4                               # block output width = 4 x inner width
INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))   # 1: conv1 of that block is 3x1x1
FEATURE_WIDTH = STAGE_WIDTHS[-1] * EXPANSION   # 2048


class Bottleneck(nn.Module):
    """1x1x1 (3x1x1 when inflated) -> 1x3x3 (spatial stride) -> 1x1x1, plus shortcut, then ReLU."""

    def __init__(self, in_channels, inner, stride, inflate, bn_splits):
        super().__init__()
        out_channels = inner * EXPANSION
        if inflate:
            self.conv1 = conv3d(in_channels, inner, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.conv1 = conv3d(in_channels, inner, 1)
        self.bn1 = SubBatchNorm3d(inner, bn_splits)
        self.conv2 = conv3d(inner, inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))
        self.bn2 = SubBatchNorm3d(inner, bn_splits)
        self.conv3 = conv3d(inner, out_channels, 1)
        self.bn3 = SubBatchNorm3d(out_channels, bn_splits)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv3d(in_channels, out_channels, 1, stride=(1, stride, stride)),
                                            SubBatchNorm3d(out_channels, bn_splits))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(shortcut + y)


class I3D(nn.Module):
    def __init__(self, n_classes=400, n_input_channels=3, dropout=0.5, base_bn_splits=1, task="class",
                 stem_temporal_stride=1):
        super().__init__()
        if task not in ("class", "loc"):
            raise ValueError(f"task must be 'class' or 'loc', not {task!r}")
        if stem_temporal_stride not in (1, 2):
            raise ValueError(f"stem_temporal_stride must be 1 (this project) or 2 (mmaction2's config), "
                             f"not {stem_temporal_stride!r}")
        self.task = task
        st = stem_temporal_stride
        self.conv1 = conv3d(n_input_channels, STEM_WIDTH, CONV1_KERNEL, stride=(st, 2, 2),
                            padding=tuple(k // 2 for k in CONV1_KERNEL))
        self.bn1 = SubBatchNorm3d(STEM_WIDTH, base_bn_splits)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(st, 2, 2), padding=(0, 1, 1))
        self.pool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        in_channels = STEM_WIDTH
        for index, (inner, depth, inflate) in enumerate(zip(STAGE_WIDTHS, STAGE_DEPTHS, INFLATE)):
            blocks = [Bottleneck(in_channels if i == 0 else inner * EXPANSION, inner,
                                 stride=2 if i == 0 and index > 0 else 1, inflate=inflate[i], bn_splits=base_bn_splits)
                      for i in range(depth)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = inner * EXPANSION
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(FEATURE_WIDTH, n_classes)
        self._init_weights()

    def _init_weights(self):
        """mmaction2's from-scratch recipe for this config: layers.init_weights, with no zero-init of the last BN
        (zero_init_residual=False in i3d_r50)."""
        init_weights(self)

    def forward_features(self, x):
        """(B, C, T, H, W) -> layer4 output (B, 2048, T', H/32, W/32)."""
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))

    def forward(self, x):
        x = self.forward_features(x)
        if self.task == "loc":
            x = x.mean(dim=(3, 4)).transpose(1, 2)              # (B, T', 2048)
            return self.fc(self.dropout(x)).transpose(1, 2)     # (B, classes, T')
        return self.fc(self.dropout(x.mean(dim=(2, 3, 4))))     # global average pool, any input size


def generate_model(n_classes=400, n_input_channels=3, dropout=0.5, base_bn_splits=1, task="class", frames=None,
                   train_crop=None, channels_last=True, stem_temporal_stride=1):
    """Build I3D ResNet-50. The head pools globally, so `frames` / `train_crop` (accepted so the engine builds every
    model with one call) change nothing. task='loc' returns per-frame logits (B, classes, T // 2), T >= 2 (T // 8 for
    T a multiple of 8 with stem_temporal_stride=2). channels_last: weights in channels_last_3d, inputs converted in
    forward (as x3d.py); the outputs are the same either way."""
    model = I3D(n_classes, n_input_channels, dropout, base_bn_splits, task, stem_temporal_stride)
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


# ---------------------------------------------------------------------------------------------------------------
# Weights: inflation from a 2D torchvision ResNet-50, and this project's own I3D checkpoints.

CLASSIFIER = ("fc.weight", "fc.bias")


def inflate_from_2d(model, path_or_state_dict, verbose=True):
    """Initialize `model` from a 2D ResNet-50 in torchvision's layout (a local file or a state dict; read with
    weights_only=True, nothing downloaded). Each 2D kernel (O, I, kh, kw) is repeated kt times along time and divided
    by kt, so a clip of identical frames gives the 2D network's features away from the clip's temporal borders
    (zero temporal padding makes the border frames differ). BN parameters and statistics are copied. `fc` is loaded
    when its shape matches, otherwise (or when absent) left at its initialization and reported. Any other missing,
    unexpected or wrong-shape key is an error listing them. Returns a report dict: format, inflated, copied,
    reinitialized."""
    source, state_2d = read_state_dict(path_or_state_dict)
    state_2d = strip_module_prefix(state_2d)
    own = model.state_dict()
    fill_batch_counters(state_2d, own)

    reinitialized = []   # fc: another class count, or absent (a headless 2D checkpoint)
    if not all(k in state_2d and state_2d[k].shape == own[k].shape for k in CLASSIFIER):
        reinitialized = list(CLASSIFIER)
    converted, inflated, wrong_shape = {}, [], []
    for key, value in state_2d.items():
        if key not in own or key in reinitialized:
            continue
        target = own[key]
        if target.dim() == 5 and value.dim() == 4 and value.shape == target.shape[:2] + target.shape[3:]:
            frames = target.shape[2]
            converted[key] = value.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
            inflated.append(key)
        elif value.shape == target.shape:
            converted[key] = value
        else:
            wrong_shape.append(f"{key}: 2D {tuple(value.shape)} vs model {tuple(target.shape)}")
    missing = [k for k in own if k not in state_2d and k not in reinitialized]
    unexpected = [k for k in state_2d if k not in own]
    raise_unless_fits(source, "2D ResNet-50, torchvision layout", missing, unexpected, wrong_shape)
    model.load_state_dict(converted, strict=not reinitialized)
    report = {"format": "torchvision-resnet50-2d", "inflated": len(inflated),
              "copied": len(converted) - len(inflated), "reinitialized": reinitialized}
    if verbose:
        shape_2d = tuple(state_2d["fc.weight"].shape) if "fc.weight" in state_2d else "absent"
        note = (f"; fc left at its initialization (2D weights: {shape_2d}, model: {tuple(own['fc.weight'].shape)})"
                if reinitialized else "; fc loaded")
        print(f"inflated {len(inflated)} conv kernels and copied {report['copied']} tensors from {source}{note}")
    return report


def load_pretrained(model, path_or_state, verbose=True):
    """Load this project's I3D checkpoints ({'model': state_dict, ...} or a bare state dict; pickled code refused).
    A classifier with another class count is left at its fresh initialization (the fine-tune path) and reported;
    any other mismatch is an error listing the keys. Returns a report dict: format, loaded, reinitialized."""
    source, state = read_state_dict(path_or_state)
    state = strip_module_prefix(state)
    hint = ""
    if isinstance(state.get("conv1.weight"), torch.Tensor) and state["conv1.weight"].dim() == 4:
        hint = "\n  (4D conv kernels: this is a 2D ResNet; use i3d.inflate_from_2d for it)"
    return load_checked(model, state, source, "i3d-project", "I3D project format", "fc.", hint=hint, verbose=verbose)


# ---------------------------------------------------------------------------------------------------------------

def model_table():
    spec = RECIPE
    rows = ["model                      params      frames x crop  T'  GMACs@train  test crop  GMACs@test",
            "-------------------------  ----------  -------------  --  -----------  ---------  ----------"]
    for name, stride in (("i3d_r50", 1), ("i3d_r50, mmaction2 stem", 2)):
        with torch.device("meta"):
            model = generate_model(n_classes=400, stem_temporal_stride=stride)
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            t_out = model.forward_features(torch.empty(1, 3, spec.frames, 32, 32, device="meta")).shape[2]
        train = count_multiply_adds(model, (1, 3, spec.frames, spec.train_crop, spec.train_crop)) / 1e9
        test = count_multiply_adds(model, (1, 3, spec.frames, spec.test_crop, spec.test_crop)) / 1e9
        rows.append(f"{name:<25}  {params:>10,}  {spec.frames:>4} x {spec.train_crop:<6}  {t_out:>2}  {train:>11.4f}  "
                    f"{spec.test_crop:>9}  {test:>10.4f}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(model_table())
