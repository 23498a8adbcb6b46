"""x3d.py: architecture numbers, the authors' eval outputs from their checkpoints, weight porting, sub-batch norm."""
import re

import pytest
import torch
import torch.nn.functional as F

import layers
import x3d
from checkpoints import CheckpointError
from layers import SubBatchNorm3d
from x3d import generate_model, load_pretrained

EXPECTED = {  # version: (parameters, multiply-adds in G at frames x train crop), from X3D.md
    "XS": (3_794_322, 0.6053), "S": (3_794_322, 1.9629), "M": (3_794_322, 4.7325),
    "L": (6_153_432, 18.3677), "XL": (11_095_904, 35.8376),
}


@pytest.mark.parametrize("version", list(EXPECTED))
def test_parameters_and_multiply_adds(version):
    params, gmacs = EXPECTED[version]
    spec = x3d.VERSIONS[version]
    with torch.device("meta"):
        model = generate_model(version.lower())
    assert sum(p.numel() for p in model.parameters()) == params
    measured = layers.count_multiply_adds(model, (1, 3, spec.frames, spec.train_crop, spec.train_crop)) / 1e9
    assert measured == pytest.approx(gmacs, abs=1e-4)


def test_test_crop_multiply_adds_match_the_authors_head():
    with torch.device("meta"):
        model = generate_model("M")
    assert layers.count_multiply_adds(model, (1, 3, 16, 256, 256)) / 1e9 == pytest.approx(6.19, abs=0.005)


def test_model_table_lists_every_version():
    table = x3d.model_table()
    for version, (params, gmacs) in EXPECTED.items():
        assert re.search(rf"^{version}\s+{params:,}\s.*{gmacs:.4f}", table, re.M), table


def test_unknown_version_names_the_valid_ones():
    with pytest.raises(ValueError, match="XS, S, M, L, XL"):
        generate_model("XXL")


def _check_reference_outputs(model, fixtures_dir):
    io = torch.load(fixtures_dir / "x3d_xs_reference_io.pt", weights_only=True)
    model.eval()
    with torch.no_grad():
        for shape in ("train", "test"):
            log_probs = F.log_softmax(model(io[f"input_{shape}"]), dim=-1)
            assert (log_probs - io[f"probs_{shape}"].log()).abs().max().item() <= 1e-4, shape


@pytest.mark.parametrize("name,expected_format", [("x3d_xs_slowfast_format.pyth", "slowfast"),
                                                  ("x3d_xs_pytorchvideo_format.pyth", "pytorchvideo")])
def test_authors_checkpoints_reproduce_reference_outputs(fixtures_dir, name, expected_format):
    model = generate_model("XS")
    report = load_pretrained(model, str(fixtures_dir / name), verbose=False)
    assert report["format"] == expected_format and not report["reinitialized"]
    _check_reference_outputs(model, fixtures_dir)


BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _slowfast_to_port_names(state, num_splits=4):
    """Build an x3d-multigrid `.pt` state dict (its names, its sub-BN buffers with 4 splits) from SlowFast's."""
    renames = [(r"^s1\.pathway0_stem\.conv_xy", "conv1_s"), (r"^s1\.pathway0_stem\.conv\.", "conv1_t."),
               (r"^s1\.pathway0_stem\.bn", "bn1"), (r"\.branch2\.se\.", "."),
               (r"^s(\d)\.pathway0_res(\d+)\.branch1_bn", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1"),
               (r"^s(\d)\.pathway0_res(\d+)\.branch1", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0"),
               (r"^s(\d)\.pathway0_res(\d+)\.branch2\.([abc])_bn",
                lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{'abc'.index(m[3]) + 1}"),
               (r"^s(\d)\.pathway0_res(\d+)\.branch2\.([abc])",
                lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{'abc'.index(m[3]) + 1}"),
               (r"^s(\d)\.pathway0_res(\d+)", lambda m: f"layer{int(m[1]) - 1}.{m[2]}"),
               (r"^head\.conv_5_bn", "bn5"), (r"^head\.conv_5", "conv5"), (r"^head\.lin_5", "fc1"),
               (r"^head\.projection", "fc2")]
    port = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        module, param = key.rsplit(".", 1)
        if param in BN_STATS:       # the port's sub-BN: eval stats under .bn, split stats under .split_bn
            port[f"module.{module}.bn.{param}"] = value
            if param != "num_batches_tracked":
                port[f"module.{module}.split_bn.{param}"] = value.repeat(num_splits)
        else:
            port[f"module.{key}"] = value
    return port


def test_x3d_multigrid_port_format_loads(fixtures_dir, tmp_path):
    slowfast = torch.load(fixtures_dir / "x3d_xs_slowfast_format.pyth", weights_only=True)["model_state"]
    port_file = tmp_path / "x3d_port.pt"
    torch.save({"model_state_dict": _slowfast_to_port_names(slowfast), "optimizer_state_dict": {},
                "long_ind": 3}, port_file)
    model = generate_model("XS", base_bn_splits=2)
    assert load_pretrained(model, str(port_file), verbose=False)["format"] == "x3d-multigrid"
    _check_reference_outputs(model, fixtures_dir)


def test_own_checkpoint_round_trip_with_another_split_count(tmp_path):
    torch.manual_seed(0)
    trained = generate_model("XS", n_classes=7, base_bn_splits=4)
    trained.train()
    trained(torch.randn(8, 3, 4, 64, 64))          # moves running statistics away from 0/1
    assert not any("split" in key for key in trained.state_dict())
    torch.save({"model": trained.state_dict(), "args": {"version": "XS"}}, tmp_path / "ours.pt")
    fresh = generate_model("XS", n_classes=7, base_bn_splits=1)
    assert load_pretrained(fresh, str(tmp_path / "ours.pt"), verbose=False)["format"] == "x3d-project"
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trained.eval()(x), fresh.eval()(x), atol=1e-5)


def test_new_class_count_reinitializes_only_the_classifier(fixtures_dir):
    model = generate_model("XS", n_classes=10)
    report = load_pretrained(model, str(fixtures_dir / "x3d_xs_slowfast_format.pyth"), verbose=False)
    assert report["reinitialized"] == ["head.fc.weight", "head.fc.bias"]
    reference = torch.load(fixtures_dir / "x3d_xs_slowfast_format.pyth", weights_only=True)["model_state"]
    assert torch.equal(model.head.lin_5.weight, reference["head.lin_5.weight"])


def test_mismatched_checkpoint_lists_the_keys(tmp_path):
    state = generate_model("XS").state_dict()
    del state["stages.1.0.conv_a.weight"]
    state["stages.9.0.extra.weight"] = torch.zeros(1)
    state["stem.conv_xy.weight"] = torch.zeros(3, 3, 1, 3, 3)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as error:
        load_pretrained(generate_model("XS"), str(tmp_path / "bad.pt"), verbose=False)
    message = str(error.value)
    assert "bad.pt" in message and "stages.1.0.conv_a.weight" in message
    assert "stages.9.0.extra.weight" in message and "stem.conv_xy.weight: checkpoint (3, 3, 1, 3, 3)" in message


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code_ran"
    bad = tmp_path / "malicious.pt"
    torch.save({"model": generate_model("XS").state_dict(), "payload": _RunsCodeWhenUnpickled(str(marker))}, bad)
    with pytest.raises(CheckpointError, match="malicious.pt.*refused"):
        load_pretrained(generate_model("XS"), str(bad), verbose=False)
    assert not marker.exists()


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint"):
        load_pretrained(generate_model("XS"), str(tmp_path / "nope.pt"))


# --- sub-batch norm --------------------------------------------------------------------------------------------

def test_sub_batch_norm_normalizes_each_split_on_its_own():
    torch.manual_seed(0)
    bn = SubBatchNorm3d(5, num_splits=2)
    nn_init = torch.randn(5)
    bn.weight.data.copy_(nn_init.abs() + 0.5)
    bn.bias.data.normal_()
    x = torch.randn(6, 5, 2, 3, 3)
    x[1::2] += 4.0                             # samples 1, 3, 5 (split 1) have another mean than split 0
    y = bn.train()(x)
    for split in range(2):
        part = x[split::2]
        expected = F.batch_norm(part, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        assert torch.allclose(y[split::2], expected, atol=1e-5)


def test_sub_batch_norm_gradients_match_per_split_batch_norm_and_keep_channels_last():
    """Multigrid trains in channels_last_3d; a split BN that fell back to the plain layout made the layers after it
    3-4x slower on the CPU."""
    torch.manual_seed(0)
    bn = SubBatchNorm3d(5, num_splits=3).train()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    x = torch.randn(6, 5, 2, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    upstream = torch.randn(6, 5, 2, 3, 3)
    ours, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = bn(ours)
    weight, bias = bn.weight.detach().clone().requires_grad_(), bn.bias.detach().clone().requires_grad_()
    y_reference = torch.empty_like(y)
    for split in range(3):
        y_reference[split::3] = F.batch_norm(reference[split::3], None, None, weight, bias, True, 0.0, bn.eps)
    (y * upstream).sum().backward()
    (y_reference * upstream).sum().backward()
    assert torch.allclose(y, y_reference, atol=1e-5)
    assert torch.allclose(ours.grad, reference.grad, atol=1e-5)
    assert torch.allclose(bn.weight.grad, weight.grad, atol=1e-5)
    assert torch.allclose(bn.bias.grad, bias.grad, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert ours.grad.is_contiguous(memory_format=torch.channels_last_3d)


def test_sub_batch_norm_eval_statistics_are_the_aggregate_of_the_splits():
    torch.manual_seed(0)
    bn = SubBatchNorm3d(3, num_splits=4, momentum=1.0)   # momentum 1: running stats = this batch's
    x = torch.randn(8, 3, 2, 4, 4) + torch.arange(8).view(8, 1, 1, 1, 1)
    bn.train()(x)
    splits = [x[s::4] for s in range(4)]
    means = torch.stack([p.mean(dim=(0, 2, 3, 4)) for p in splits])
    variances = torch.stack([p.var(dim=(0, 2, 3, 4), unbiased=False) for p in splits])
    aggregate_mean = means.mean(0)
    aggregate_var = variances.mean(0) + ((means - aggregate_mean) ** 2).mean(0)
    count = x.numel() / 3
    assert torch.allclose(bn.running_mean, aggregate_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, aggregate_var * count / (count - 1), atol=1e-4)
    bn.eval()                                   # a bare eval(): the aggregate is used, no extra call
    expected = (x - aggregate_mean.view(1, 3, 1, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1, 1) + bn.eps)
    assert torch.allclose(bn(x), expected, atol=1e-4)


def test_changing_the_split_count_keeps_the_statistics():
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=5, base_bn_splits=4).train()
    model(torch.randn(8, 3, 4, 64, 64))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    layers.set_bn_splits(model, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" in k)
    model(torch.randn(4, 3, 4, 64, 64))        # still trains with the new count
    assert all(m.num_splits == 2 for m in model.modules() if isinstance(m, SubBatchNorm3d))


def test_batch_not_divisible_by_splits_names_both_numbers():
    model = generate_model("XS", base_bn_splits=4).train()
    with pytest.raises(ValueError, match="6 samples.*4 BN splits"):
        model(torch.randn(6, 3, 4, 64, 64))


def test_eval_after_split_training_is_not_degenerate():
    """The port's eval stats stayed 0/1 until a manual aggregation call; ours must track the data."""
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=3, base_bn_splits=2).train()
    x = torch.randn(4, 3, 4, 64, 64) * 3 + 2
    for _ in range(3):
        model(x)
    assert not torch.allclose(model.stem.bn.running_mean, torch.zeros_like(model.stem.bn.running_mean))


# --- head ------------------------------------------------------------------------------------------------------

def test_head_pools_globally_below_the_train_shape_and_localizes_per_frame():
    model = generate_model("S", n_classes=11)
    model.train()
    assert model(torch.randn(2, 3, 4, 80, 80)).shape == (2, 11)   # short-cycle shape: smaller than 13 x 160
    loc = generate_model("XS", n_classes=11, task="loc").eval()
    with torch.no_grad():
        assert loc(torch.randn(2, 3, 6, 96, 96)).shape == (2, 11, 6)


def test_head_averages_softmax_over_test_positions():
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=6, dropout=0.0).eval()
    x = torch.randn(1, 3, 4, 182, 182)
    with torch.no_grad():
        features = x
        features = model.stem(features.contiguous(memory_format=torch.channels_last_3d))
        for stage in model.stages:
            features = stage(features)
        head = model.head
        pooled = F.avg_pool3d(F.relu(head.bn_5(head.conv_5(features))), head.pool_window, stride=1)
        logits = head.fc(F.relu(head.lin_5(pooled)).permute(0, 2, 3, 4, 1)).flatten(1, 3)
        assert logits.shape[1] == 4                          # 6x6 map, 5x5 window: 2x2 positions
        expected = F.softmax(logits, -1).mean(1)
        assert torch.allclose(F.softmax(model(x), -1), expected, atol=1e-6)


# --- depthwise convolution from ordinary ops (backends without grouped Conv3d) ----------------------------------

def test_shifted_depthwise_is_an_exact_equivalent():
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=5).eval()
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        reference = model(x)
        keys = set(model.state_dict())
        layers.use_shifted_depthwise(model)
        assert set(model.state_dict()) == keys
        assert not any(isinstance(m, torch.nn.Conv3d) and m.groups > 1 for m in model.modules())
        assert torch.allclose(model(x), reference, atol=1e-5)
        assert layers.count_multiply_adds(model, (1, 3, 4, 160, 160)) > 0


def test_channels_last_is_only_a_speed_choice():
    torch.manual_seed(0)
    fast = generate_model("XS", n_classes=5).eval()
    plain = generate_model("XS", n_classes=5, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)


def test_hub_entry_point_loads_local_weights(fixtures_dir):
    import hubconf
    model = torch.hub.load(str(hubconf.__file__).rsplit("/", 1)[0], "x3d_xs", source="local",
                           weights=fixtures_dir / "x3d_xs_slowfast_format.pyth")
    _check_reference_outputs(model, fixtures_dir)


@pytest.mark.parametrize("splits", [1, 2])
def test_bf16_autocast_training_gradients_match_fp32(splits):
    """CPU training under bf16 autocast through the custom depthwise backward and split BN: the gradients point
    where the fp32 ones do (bf16 keeps ~3 significant digits)."""
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=5, dropout=0).train()
    layers.set_bn_splits(model, splits)
    x, labels = torch.randn(4, 3, 4, 48, 48), torch.randint(0, 5, (4,))
    F.cross_entropy(model(x), labels).backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float(), labels).backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    mixed = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert F.cosine_similarity(reference, mixed, dim=0) > 0.99


@pytest.mark.parametrize("kernel,stride,padding,plane", [(3, (1, 1, 1), 1, 9), (3, (1, 2, 2), 1, 9),
                                                         ((5, 1, 1), 1, (2, 0, 0), 9), (3, (1, 1, 1), 1, 48),
                                                         (3, (1, 2, 2), 1, 48), (3, (1, 1, 1), 1, 1),
                                                         (3, (1, 1, 1), 1, 2), (3, (1, 2, 2), 1, 2),
                                                         (3, (1, 2, 2), 1, 3)])
def test_depthwise_conv_backward_matches_nn_conv3d(kernel, stride, padding, plane, monkeypatch):
    """The faster CPU backward (input gradient as a flipped-kernel convolution; weight gradient per tap, in batch
    chunks (here one sample each), without the taps' products with the padding, except at stride 1 on planes above
    40 x 40, where torch's is used) gives nn.Conv3d's gradients, also on multigrid's 1 x 1 .. 3 x 3 planes."""
    from layers import DepthwiseConv3d
    monkeypatch.setattr(layers, "TAPWISE_CHUNK_BYTES", 1)
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(6, 6, kernel, stride=stride, padding=padding, groups=6, bias=False)
    fast = DepthwiseConv3d(6, 6, kernel, stride=stride, padding=padding, groups=6, bias=False)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 5, plane, plane).contiguous(memory_format=torch.channels_last_3d)
    x_plain, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_fast = plain(x_plain), fast(x_fast)
    assert "DepthwiseConv3dFunction" in out_fast.grad_fn.name()     # the faster backward is the one tested
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_fast.backward(grad)
    assert torch.equal(out_plain, out_fast)
    assert torch.allclose(x_plain.grad, x_fast.grad, atol=1e-5)
    # a sum over ~1e4 products in another order: float32 rounding is ~1e-6 of the gradient's size
    assert torch.allclose(plain.weight.grad, fast.weight.grad, rtol=1e-5, atol=1e-4)
    assert isinstance(fast, torch.nn.Conv3d) and list(fast.state_dict()) == ["weight"]


# --- accelerator paths, checked on the CPU -----------------------------------------------------------------------

def _split_bn_results(fold, x, weight, bias, upstream, splits=3, steps=2):
    """Output, gradients and running statistics of a SubBatchNorm3d forced onto one split path."""
    bn = SubBatchNorm3d(x.shape[1], num_splits=splits).to(x.dtype).train()
    bn.weight.data.copy_(weight)
    bn.bias.data.copy_(bias)
    bn.fold_splits = fold
    for _ in range(steps):                     # twice: the running statistics are updated from their last value
        inputs = x.clone().requires_grad_()
        y = bn(inputs)
        bn.zero_grad()
        y.backward(upstream)
    return y.detach(), inputs.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_bn_fold_equals_the_cpu_function(dtype, channels_last):
    """The accelerators' fold ((B, C, ...) as (B/k, k*C, ...), one F.batch_norm) and the CPU's split function give
    the same outputs, gradients and running statistics, and the fold hands the next layer its memory format."""
    torch.manual_seed(0)
    x = (torch.randn(12, 5, 3, 4, 4, dtype=dtype) * 2 + torch.arange(12, dtype=dtype).view(12, 1, 1, 1, 1) % 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    weight, bias = torch.rand(5, dtype=dtype) + 0.5, torch.rand(5, dtype=dtype) - 0.5
    upstream = torch.randn(x.shape, dtype=dtype)
    function = _split_bn_results(False, x, weight, bias, upstream)
    fold = _split_bn_results(True, x, weight, bias, upstream)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad", "running mean", "running var"),
                          function, fold):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), name
    assert fold[0].is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


def test_split_bn_path_follows_the_device_and_can_be_forced():
    bn = SubBatchNorm3d(4, num_splits=2).train()
    x = torch.randn(4, 4, 2, 3, 3, requires_grad=True)
    assert "SplitBatchNorm" in bn(x).grad_fn.name()                     # the CPU: the split function
    layers.set_bn_fold(bn, True)
    assert bn(x).grad_fn.next_functions[0][0].name() == "NativeBatchNormBackward0"    # one batch norm, folded


def saved_bytes(fn):
    """Bytes autograd keeps for the backward of `fn()` (storages counted once)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def test_split_bn_keeps_a_half_input_in_its_own_dtype_for_the_backward():
    """Under bf16 the CPU split function kept a float32 copy of every BN input: twice the input's bytes."""
    bn = SubBatchNorm3d(8, num_splits=2).train()
    x = torch.randn(4, 8, 4, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    kept = saved_bytes(lambda: bn(x))
    assert kept < 1.1 * x.numel() * x.element_size()
    y = bn(x)
    y.float().sum().backward()
    reference = SubBatchNorm3d(8, num_splits=2).train()
    x32 = x.detach().float().requires_grad_()
    reference(x32).sum().backward()
    assert torch.allclose(x.grad.float(), x32.grad, atol=2e-2)


def test_custom_backward_functions_refuse_a_double_backward():
    """The split-BN and CPU depthwise backwards are written out; differentiating them again used to give wrong
    numbers silently."""
    from layers import DepthwiseConv3d
    x = torch.randn(4, 6, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    bn = SubBatchNorm3d(6, num_splits=2).double().train()
    conv = DepthwiseConv3d(6, 6, 3, padding=1, groups=6, bias=False).double()
    for module in (bn, conv):
        (grad,) = torch.autograd.grad(module(x).pow(2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="twice|once_differentiable"):
            grad.sum().backward()


def test_shifted_depthwise_stays_in_the_autocast_dtype():
    """A bf16 window times an fp32 weight promotes: the Ascend path under --amp bf16 ran every depthwise in fp32."""
    conv = layers.use_shifted_depthwise(torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False)))
    x = torch.randn(2, 4, 3, 6, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16


def test_training_forward_has_no_nondeterministic_cuda_pooling():
    """AvgPool3d / AdaptiveAvgPool3d have a nondeterministic CUDA backward; where the window is the whole input
    (squeeze-excitation, the head in training) an accelerator takes a mean instead (here the meta device, which is
    not the CPU). The CPU keeps the head's avg_pool3d: its rounding is the one the CPU results were made with."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__)
            return func(*args, **(kwargs or {}))
    for device in ("meta", "cpu"):
        with torch.device(device):
            model = generate_model("XS", n_classes=5, frames=4, train_crop=64).train()
            x = torch.randn(2, 3, 4, 64, 64)
        with Ops() as ops:
            model(x).sum().backward()
        pools = sorted(name for name in ops.names if "pool" in name)
        assert pools == ([] if device == "meta" else ["avg_pool3d.default", "avg_pool3d_backward.default"]), pools
