"""torch.hub entry points. Nothing is downloaded: pass `weights=PATH` to a local checkpoint in any format
`x3d.load_pretrained` reads (SlowFast .pyth, PyTorchVideo .pyth, x3d-multigrid .pt, this project's .pt).

    model = torch.hub.load('/path/to/this/repo', 'x3d_s', source='local', weights='X3D_S.pyth')
"""
dependencies = ["torch"]

from x3d import generate_model, load_pretrained


def _build(version, weights=None, **kwargs):
    model = generate_model(version, **kwargs)
    if weights is not None:
        load_pretrained(model, str(weights))
    return model


def x3d_xs(weights=None, **kwargs):
    """X3D-XS: 4 frames x 160, 0.60 GFLOPs."""
    return _build("XS", weights, **kwargs)


def x3d_s(weights=None, **kwargs):
    """X3D-S: 13 frames x 160, 1.96 GFLOPs."""
    return _build("S", weights, **kwargs)


def x3d_m(weights=None, **kwargs):
    """X3D-M: 16 frames x 224, 4.73 GFLOPs."""
    return _build("M", weights, **kwargs)


def x3d_l(weights=None, **kwargs):
    """X3D-L: 16 frames x 312, 18.37 GFLOPs."""
    return _build("L", weights, **kwargs)


def x3d_xl(weights=None, **kwargs):
    """X3D-XL: 16 frames x 312, 35.84 GFLOPs."""
    return _build("XL", weights, **kwargs)
