"""Each op's numpy semantics against the PyTorch function it stands for, on the awkward cases:
asymmetric padding, dilation, groups, ceil_mode, count_include_pad, align_corners, odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npuc.ir import Attrs, DType, TensorType, const, graph_input
from npuc.ops import OPS, macs, make

rng = np.random.default_rng(0)


def run(op: str, attrs: dict, *arrays: np.ndarray) -> np.ndarray:
    """Build the node (so type inference is checked too) and run its impl."""
    leaves = [const(a) for a in arrays]
    node = make(op, leaves, attrs)
    out = OPS[op].impl(node.attrs, *arrays)
    assert out.shape == node.shape and out.dtype == node.dtype.numpy
    return out


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def rand(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


CONV_CASES = [  # (x shape, w shape, stride, padding (lo, hi per axis), dilation, groups)
    ((1, 4, 9, 7), (6, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 4, 9, 7), (8, 2, 3, 2), (2, 1), (0, 2, 1, 0), (1, 2), 2),
    ((1, 6, 8, 8), (6, 1, 3, 3), (2, 2), (1, 1, 1, 1), (2, 2), 6),
    ((2, 3, 11), (5, 3, 4), (3,), (2, 1), (2,), 1),
]


@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", CONV_CASES)
def test_conv(xs, ws, stride, padding, dilation, groups) -> None:
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    got = run("conv", dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
              x, w, b)
    pairs = [(padding[2 * i], padding[2 * i + 1]) for i in range(len(stride))]
    padded = F.pad(t(x), [p for pair in reversed(pairs) for p in pair])
    conv = F.conv1d if len(stride) == 1 else F.conv2d
    want = conv(padded, t(w), t(b), stride, 0, dilation, groups)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, padding, output_padding, dilation, groups", [
    ((2, 2), (1, 1), (1, 1), (1, 1), 1),
    ((3, 2), (0, 2), (2, 0), (2, 1), 2),
    ((1, 1), (0, 0), (0, 0), (1, 1), 4),
])
def test_conv_transpose(stride, padding, output_padding, dilation, groups) -> None:
    x, w = rand(2, 4, 5, 6), rand(4, 3, 3, 3)  # weight: (in, out / groups, kh, kw)
    b = rand(3 * groups)
    got = run("conv_transpose", dict(stride=stride, padding=[p for v in padding for p in (v, v)],
                                     output_padding=output_padding, dilation=dilation,
                                     groups=groups), x, w, b)
    want = F.conv_transpose2d(t(x), t(w), t(b), stride, padding, output_padding, groups, dilation)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", [
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 2), (2, 2), (1, 0), (1, 1), True),
    ((2, 2), (3, 3), (0, 0), (2, 1), True),
])
def test_max_pool(kernel, stride, padding, dilation, ceil_mode) -> None:
    x = rand(2, 3, 10, 9)
    got = run("max_pool", dict(kernel=kernel, stride=stride, dilation=dilation,
                               padding=[p for v in padding for p in (v, v)], ceil_mode=ceil_mode),
              x)
    want = F.max_pool2d(t(x), kernel, stride, padding, dilation, ceil_mode)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool(ceil_mode: bool, count_include_pad: bool) -> None:
    x = rand(1, 2, 10, 7)
    got = run("avg_pool", dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                               dilation=(1, 1), ceil_mode=ceil_mode,
                               count_include_pad=count_include_pad), x)
    want = F.avg_pool2d(t(x), 3, 2, 1, ceil_mode, count_include_pad)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


def test_adaptive_avg_pool_uneven() -> None:
    x = rand(2, 3, 10, 7)
    got = run("adaptive_avg_pool", dict(size=(3, 4)), x)
    np.testing.assert_allclose(got, F.adaptive_avg_pool2d(t(x), (3, 4)).numpy(), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("mode, align_corners, size, scale", [
    ("nearest", False, (10, 21), None), ("nearest", False, None, 2.0),
    ("bilinear", False, (7, 13), None), ("bilinear", True, (9, 4), None),
    ("bilinear", False, None, 0.5),
])
def test_resize(mode, align_corners, size, scale) -> None:
    x = rand(1, 2, 5, 8)
    kwargs = {"align_corners": align_corners} if mode == "bilinear" else {}
    want = F.interpolate(t(x), size=size, scale_factor=scale, mode=mode, **kwargs).numpy()
    scales = (scale, scale) if scale else (0.0, 0.0)
    got = run("resize", dict(size=want.shape[2:], mode=mode, align_corners=align_corners,
                             scales=scales), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, fn", [
    ("gelu", lambda x: F.gelu(x)), ("silu", F.silu), ("sigmoid", torch.sigmoid),
    ("tanh", torch.tanh), ("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid),
    ("relu", F.relu), ("exp", torch.exp), ("neg", torch.neg), ("abs", torch.abs),
    ("erf", torch.erf), ("expm1", torch.expm1), ("elu", F.elu),
])
def test_unary(op: str, fn) -> None:
    x = rand(4, 33) * 4
    np.testing.assert_allclose(run(op, {}, x), fn(t(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_gelu_tanh_and_leaky_and_clamp() -> None:
    x = rand(5, 7) * 3
    np.testing.assert_allclose(run("log1p", {}, np.abs(x)), torch.log1p(t(np.abs(x))).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(run("elu", {"alpha": 1.6732632423543772,
                                           "scale": 1.0507009873554805}, x),
                               F.selu(t(x)).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(run("flip", {"axes": (0, -1)}, x), x[::-1, ::-1])
    np.testing.assert_allclose(run("gelu", {"approximate": "tanh"}, x),
                               F.gelu(t(x), approximate="tanh").numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(run("leaky_relu", {"alpha": 0.2}, x),
                                  F.leaky_relu(t(x), 0.2).numpy())
    np.testing.assert_array_equal(run("clamp", {"min": 0.0, "max": 6.0}, x), F.relu6(t(x)).numpy())


def test_norms_softmax_glu() -> None:
    x, g, b = rand(2, 6, 5, 3), rand(6), rand(6)
    np.testing.assert_allclose(run("group_norm", {"groups": 3, "eps": 1e-5}, x, g, b),
                               F.group_norm(t(x), 3, t(g), t(b)).numpy(), rtol=1e-5, atol=1e-5)
    mean, var = rand(6), np.abs(rand(6)) + 0.5
    np.testing.assert_allclose(
        run("batch_norm", {"eps": 1e-3}, x, g, b, mean, var),
        F.batch_norm(t(x), t(mean), t(var), t(g), t(b), eps=1e-3).numpy(), rtol=1e-5, atol=1e-5)
    y, lg, lb = rand(3, 4, 8), rand(4, 8), rand(4, 8)
    np.testing.assert_allclose(run("layer_norm", {"ndim": 2}, y, lg, lb),
                               F.layer_norm(t(y), (4, 8), t(lg), t(lb)).numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(run("softmax", {"axis": 1}, y), F.softmax(t(y), 1).numpy(),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run("log_softmax", {"axis": -1}, y),
                               F.log_softmax(t(y), -1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run("glu", {"axis": 2}, y), F.glu(t(y), 2).numpy(), rtol=1e-6,
                               atol=1e-7)


def test_data_movement() -> None:
    x = rand(2, 12, 3, 4)
    np.testing.assert_array_equal(run("pixel_shuffle", {"factor": 2}, x),
                                  F.pixel_shuffle(t(x), 2).numpy())
    np.testing.assert_array_equal(run("pad", {"pads": (0, 0, 1, -2, 2, 0, 0, 3), "value": 1.5}, x),
                                  F.pad(t(x), (0, 3, 2, 0, 1, -2), value=1.5).numpy())
    np.testing.assert_array_equal(run("slice", {"axis": 1, "start": 1, "end": -1, "step": 3}, x),
                                  x[:, 1:-1:3])
    idx = np.array([[3, 0], [1, 1]], dtype=np.int64)
    np.testing.assert_array_equal(run("gather", {"axis": 1}, x, idx), x[:, idx])


def test_matmul_broadcasts_and_counts_macs() -> None:
    a, b = rand(3, 1, 4, 5), rand(2, 5, 6)
    node = make("matmul", [const(a), const(b)])
    assert node.shape == (3, 2, 4, 6)
    assert macs(node) == 3 * 2 * 4 * 6 * 5
    np.testing.assert_allclose(OPS["matmul"].impl(Attrs(), a, b), a @ b, rtol=1e-6)


def test_type_inference_rejects_bad_operands() -> None:
    x = graph_input("x", TensorType((1, 4, 8, 8), DType.F32))
    with pytest.raises(TypeError, match="groups"):
        make("conv", [x, const(rand(6, 3, 3, 3))],
             dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1))
    with pytest.raises(TypeError, match="dtypes differ"):
        make("add", [x, const(np.ones((1,), np.int32))])
    with pytest.raises(TypeError, match="unknown attribute"):
        make("relu", [x], {"alpha": 1.0})
