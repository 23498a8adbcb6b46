"""i3d.py: architecture numbers, 2D -> 3D inflation, own checkpoints, sub-batch norm training. Tiny shapes only: one
I3D R50 forward at 224 costs ~114 GMACs, a CPU does ~2-10 per second."""
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import i3d
import layers
import x3d
from checkpoints import CheckpointError
from conftest import REPO
from layers import SubBatchNorm3d

PARAMS = 28_043_472          # 400 classes
GMACS_TRAIN = 113.6282       # 32 x 224 x 224, stride (1, 2, 2) stem (the default)
GMACS_MMACTION2 = 33.1282    # 32 x 224 x 224, stem_temporal_stride=2 (mmaction2's config; its docs say 33 G)


def test_parameter_count():
    for stride in (1, 2):
        with torch.device("meta"):
            model = i3d.generate_model(n_classes=400, stem_temporal_stride=stride)
        assert sum(p.numel() for p in model.parameters()) == PARAMS


def test_python_i3d_prints_parameters_and_multiply_adds():
    """The multiply-adds (layers.count_multiply_adds on the meta device) are checked through the printed table."""
    result = subprocess.run([sys.executable, "i3d.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name, t_out, gmacs in (("i3d_r50", 16, GMACS_TRAIN), ("i3d_r50, mmaction2 stem", 4, GMACS_MMACTION2)):
        row = rf"^{re.escape(name)}\s+{PARAMS:,}\s+32 x 224\s+{t_out}\s+{gmacs:.4f}\s"
        assert re.search(row, result.stdout, re.M), result.stdout


def test_recipe():
    spec = i3d.RECIPE
    assert (spec.frames, spec.rate, spec.train_crop, spec.test_crop, spec.jitter) == (32, 2, 224, 256, (256, 320))


def test_output_shapes_and_layout():
    torch.manual_seed(0)
    model = i3d.generate_model(n_classes=7, task="loc").eval()
    plain = i3d.generate_model(n_classes=7, task="loc", channels_last=False).eval()
    plain.load_state_dict(model.state_dict())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 53 and all(isinstance(m, SubBatchNorm3d) for m in norms)
    x = torch.randn(2, 3, 6, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 7, 3)                       # per-frame logits at T' = T // 2 (pool2)
        assert (logits - plain(x)).abs().max().item() < 1e-4   # channels_last changes nothing but speed
        model.task = "class"
        assert model(x).shape == (2, 7)
        assert model(torch.randn(1, 3, 2, 16, 16)).shape == (1, 7)   # smaller than any train shape: global pooling
    mm = i3d.generate_model(n_classes=7, task="loc", stem_temporal_stride=2).eval()
    with torch.no_grad():
        assert mm(torch.randn(1, 3, 16, 16, 16)).shape == (1, 7, 2)  # mmaction2's stem: T' = T // 8
    with pytest.raises(ValueError, match="task"):
        i3d.generate_model(task="detect")


# --- inflation ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet2d(tmp_path_factory):
    """A random torchvision ResNet-50 (random BN statistics and affine too), eval mode, saved as a state dict."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("r2d") / "resnet50_2d.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), str(path)


def _clean_frames(model, frames):
    """Output frames of forward_features whose temporal receptive field never touches zero padding: walk the
    temporal (kernel, stride, padding) of every op in forward order, keeping a per-frame 'clean' mask."""
    def temporal(op):
        k, s, p = (op.kernel_size, op.stride, op.padding)
        return tuple(v if isinstance(v, int) else v[0] for v in (k, s, p))

    def step(mask, op):
        k, s, p = temporal(op)
        out = (len(mask) + 2 * p - k) // s + 1
        return [all(0 <= j * s - p + d < len(mask) and mask[j * s - p + d] for d in range(k)) for j in range(out)]

    mask = step(step([True] * frames, model.conv1), model.maxpool)
    for name in ("layer1", "pool2", "layer2", "layer3", "layer4"):
        for block in getattr(model, name) if name.startswith("layer") else [getattr(model, name)]:
            if name == "pool2":
                mask = step(mask, block)
                continue
            for op in (block.conv2, block.conv3) + (() if block.downsample is None else (block.downsample[0],)):
                assert temporal(op) == (1, 1, 0)           # only conv1 of a block can see other frames
            mask = step(mask, block.conv1)
    return [t for t, clean in enumerate(mask) if clean]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-4), (torch.float32, None)])
def test_inflated_identical_frames_match_the_2d_network(resnet2d, dtype, tolerance):
    """A clip of 40 identical 32x32 frames: at every output frame whose receptive field lies inside the clip (2 of
    the 20 here; zero temporal padding makes the border frames differ), the spatially pooled layer4 feature equals
    the 2D network's pooled feature (avgpool output, before fc) on that frame, max abs difference <= 1e-4 in
    float64. In float32 (features ~40 in size) the bound is 1e-5 relative to the largest feature: rounding only."""
    net2d, path = resnet2d
    model = i3d.generate_model(n_classes=1000).to(dtype).eval()
    weights_2d = path if dtype == torch.float32 else torch.load(path, weights_only=True)
    if dtype == torch.float64:   # inflate in float64 too: (w / 3) * 3 == w to ~1e-16, not float32's ~1e-7
        weights_2d = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights_2d.items()}
    report = i3d.inflate_from_2d(model, weights_2d, verbose=False)
    assert report["inflated"] == 53 and not report["reinitialized"]
    frames = 40
    clean = _clean_frames(model, frames)
    assert len(clean) >= 2, clean
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)
    clip = image.unsqueeze(2).expand(1, 3, frames, 32, 32).contiguous()
    with torch.no_grad():
        features = model.forward_features(clip).mean(dim=(3, 4))[0]          # (2048, T')
        net2d = net2d.to(dtype)
        x = net2d.maxpool(F.relu(net2d.bn1(net2d.conv1(image))))
        reference = torch.flatten(net2d.avgpool(net2d.layer4(net2d.layer3(net2d.layer2(net2d.layer1(x))))), 1)[0]
        net2d.float()
    difference = (features[:, clean] - reference[:, None]).abs().max().item()
    if tolerance is None:
        tolerance = 1e-5 * reference.abs().max().item()
    print(f"{dtype}: frames {clean} of {features.shape[1]}, max abs difference {difference:.3g}, "
          f"largest feature {reference.abs().max().item():.3g}")
    assert difference <= tolerance, (difference, clean)


def test_inflation_reports_fc_and_rejects_a_wrong_state_dict(resnet2d):
    net2d, path = resnet2d
    model = i3d.generate_model(n_classes=400, channels_last=False)
    fc_before = model.fc.weight.clone()
    report = i3d.inflate_from_2d(model, path, verbose=False)
    assert report["reinitialized"] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, fc_before)
    conv = net2d.state_dict()["layer3.0.conv1.weight"]                       # inflated: 3x1x1
    assert torch.allclose(model.layer3[0].conv1.weight, conv.unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3)
    assert torch.equal(model.bn1.running_var, net2d.bn1.running_var)
    state = dict(net2d.state_dict())
    del state["layer2.1.bn2.weight"]
    state["layer9.conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)missing \(1\): layer2\.1\.bn2\.weight.*unexpected \(1\): layer9"):
        i3d.inflate_from_2d(model, state, verbose=False)


# --- own checkpoints ----------------------------------------------------------------------------------------------

def test_own_checkpoint_round_trip_reinit_and_errors(tmp_path, resnet2d):
    torch.manual_seed(0)
    source = i3d.generate_model(n_classes=10)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, SubBatchNorm3d):
                module.running_mean.normal_()
    path = tmp_path / "i3d.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)

    target = i3d.generate_model(n_classes=10)
    report = i3d.load_pretrained(target, str(path), verbose=False)
    assert report == {"format": "i3d-project", "loaded": len(source.state_dict()), "reinitialized": []}
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())

    other = i3d.generate_model(n_classes=5)
    fc_before = other.fc.weight.clone()
    report = i3d.load_pretrained(other, str(path), verbose=False)
    assert report["reinitialized"] == ["fc.weight", "fc.bias"] and torch.equal(other.fc.weight, fc_before)
    assert torch.equal(other.layer4[2].conv3.weight, source.layer4[2].conv3.weight)

    state = dict(source.state_dict())
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :, :1]  # 1x1x1 where the model has 3x1x1
    state.pop("layer4.1.bn3.bias")
    with pytest.raises(CheckpointError, match=r"(?s)missing \(1\): layer4\.1\.bn3\.bias.*wrong shape \(1\)"):
        i3d.load_pretrained(target, state, verbose=False)
    with pytest.raises(CheckpointError, match="inflate_from_2d"):
        i3d.load_pretrained(target, resnet2d[1], verbose=False)

    evil = tmp_path / "evil.pt"
    torch.save({"model": source.state_dict(), "extra": x3d.X3DVersion(1, 1, 1, 1, 1, 1, (1, 1))}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        i3d.load_pretrained(target, str(evil), verbose=False)


# --- Multigrid ----------------------------------------------------------------------------------------------------

def test_split_bn_training_step():
    torch.manual_seed(0)
    model = i3d.generate_model(n_classes=5, base_bn_splits=1)
    layers.set_bn_splits(model, 2)
    assert all(m.num_splits == 2 for m in model.modules() if isinstance(m, SubBatchNorm3d))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    mean_before = model.layer2[0].bn1.running_mean.clone()
    x, y = torch.randn(4, 3, 8, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not torch.equal(model.layer2[0].bn1.running_mean, mean_before)
    with pytest.raises(ValueError, match="does not divide"):
        model(torch.randn(3, 3, 8, 32, 32))
