"""The nm<n>:<m> weight encoding: decode(encode) is the identity on N:M values, stored sizes
match the formula, non-N:M weights are refused naming the group, and auto-sparse's choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npuc.quant.weights import (
    Encoding,
    WeightFormat,
    auto_sparse_format,
    decode,
    nm_payload,
    nm_violation,
    parse_encoding,
    parse_weight_format,
    quantize_weight,
    stored_nbytes,
)
from tests.sparsity import nm_prune


@st.composite
def nm_values(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int]:
    """Random int8 values that are N:M along the input-channel axis, with their axis, n, m."""
    m = draw(st.sampled_from([2, 3, 4, 5, 8, 16]))
    n = draw(st.integers(1, m - 1))
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    axis = draw(st.sampled_from([0, 1]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = rng.integers(-127, 128, size=shape) * (rng.random(shape) < draw(st.floats(0, 1)))
    values = nm_prune(dense, n, m, 1 if axis == 0 else 0).astype(np.int8)
    return values, axis, n, m


@settings(max_examples=60, deadline=None)
@given(nm_values())
def test_nm_decode_of_encode_is_the_identity(case: tuple[np.ndarray, int, int, int]) -> None:
    values, axis, n, m = case
    assert nm_violation(values, axis, n, m) is None
    payload = nm_payload(values, axis, n, m)
    assert payload.size == stored_nbytes(f"nm{n}:{m}", values, axis)
    decoded = decode(f"nm{n}:{m}", payload, None, values.shape, axis)
    assert decoded.dtype == np.int8
    np.testing.assert_array_equal(decoded, values)


@settings(max_examples=30, deadline=None)
@given(nm_values())
def test_quantized_nm_weights_keep_the_int8_values(case: tuple[np.ndarray, int, int, int]
                                                   ) -> None:
    values, axis, n, m = case
    w = values * 0.01
    nm, dense = quantize_weight(w, f"nm{n}:{m}", axis=axis), quantize_weight(w, "int8", axis=axis)
    assert nm.encoding == f"nm{n}:{m}"
    np.testing.assert_array_equal(nm.values, dense.values)
    np.testing.assert_array_equal(nm.scale, dense.scale)
    assert nm.nbytes == stored_nbytes(nm.encoding, nm.values, axis)
    np.testing.assert_array_equal(decode(nm.encoding, nm.payload, None, w.shape, axis),
                                  nm.values)


@settings(max_examples=30, deadline=None)
@given(nm_values())
def test_sparse_sizes_match_the_formula(case: tuple[np.ndarray, int, int, int]) -> None:
    values, axis, _, _ = case
    sparse = quantize_weight(values * 0.01, "sparse", axis=axis)
    assert sparse.nbytes == stored_nbytes("sparse", sparse.values)
    assert stored_nbytes("int8", values) == values.size


def test_bytes_per_weight_at_each_density() -> None:
    """0.625 B/weight for a bitmap at 50% and for 2:4; a one-byte-index CSR (2 B per nonzero)
    beats the bitmap only below 12.5% density."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 256))
    per_weight = {}
    for density in (0.5, 0.25, 0.1):
        pruned = np.where(np.abs(w) >= np.quantile(np.abs(w), 1 - density), w, 0.0)
        per_weight[density] = quantize_weight(pruned, "sparse").nbytes / w.size
        csr = 2 * density
        assert (csr < per_weight[density]) == (density < 0.125)
    assert per_weight == pytest.approx({0.5: 0.625, 0.25: 0.375, 0.1: 0.225}, abs=1e-3)
    for (n, m), expected in {(2, 4): 0.625, (1, 4): 0.3125, (4, 8): 0.6875}.items():
        e = quantize_weight(nm_prune(w, n, m), f"nm{n}:{m}")
        assert e.nbytes / w.size == expected


def test_non_nm_weights_are_refused_naming_the_first_group() -> None:
    w = nm_prune(np.random.default_rng(1).normal(size=(4, 8, 3, 3)), 2, 4)
    w[2, 4:8, 1, 0] = 1.0  # output 2, input channels 4..7 at tap (1, 0): four nonzeros
    with pytest.raises(ValueError, match=r"not 2:4 sparse: weight\[2, 4:8, 1, 0\] holds 4 "):
        quantize_weight(w, "nm2:4")
    assert quantize_weight(w, "nm6:8").encoding == "nm6:8"
    with pytest.raises(ValueError, match="input-channel axis"):
        quantize_weight(np.ones(8), "nm2:4")


def test_formats_parse_and_print_back() -> None:
    assert parse_encoding("nm2:4") == Encoding("nm", 8, 0, 2, 4)
    assert str(parse_encoding("nm3:8")) == "nm3:8" and parse_encoding("nm3:8").index_bits == 3
    assert str(parse_weight_format("nm1:4")) == "nm1:4"
    assert parse_weight_format("nm1:4").encoding == "nm1:4"
    assert parse_weight_format("auto-sparse") == WeightFormat("auto", 8)
    for bad in ("nm4:4", "nm0:4", "nm2:65", "nm2", "nm:2:4"):
        with pytest.raises(ValueError, match="nm"):
            parse_weight_format(bad)
    with pytest.raises(ValueError, match="unknown weight encoding 'nm5:4'"):
        parse_encoding("nm5:4")


def test_corrupt_nm_payloads_are_refused() -> None:
    values = nm_prune(np.arange(1, 33).reshape(4, 8), 2, 4).astype(np.int8)
    payload = nm_payload(values, 0, 2, 4)
    with pytest.raises(ValueError, match="payload of 20 bytes"):
        decode("nm2:4", payload[:-1], None, values.shape)
    swapped = payload.copy()
    swapped[16:] = 0  # every position 0: not ascending
    with pytest.raises(ValueError, match="ascend"):
        decode("nm2:4", swapped, None, values.shape)


def test_auto_sparse_picks_the_smallest_layout() -> None:
    rng = np.random.default_rng(2)
    w = rng.integers(-127, 128, size=(16, 64)).astype(np.int8)
    assert str(auto_sparse_format(w, 0)) == "int8"
    two_four = nm_prune(w, 2, 4).astype(np.int8)
    assert str(auto_sparse_format(two_four, 0)) == "nm2:4"  # ties with the bitmap: nm
    two_four.flat[np.flatnonzero(two_four)[:2]] = 0  # fewer nonzeros: the bitmap is smaller...
    assert str(auto_sparse_format(two_four, 0)) == "sparse"
    assert str(auto_sparse_format(two_four, 0, prefer_nm=True)) == "nm2:4"  # ...unless nm pays
    one_four = nm_prune(w, 1, 4).astype(np.int8)
    assert str(auto_sparse_format(one_four, 0)) == "nm1:4"
    scattered = np.where(rng.random(w.shape) < 0.1, w, 0).astype(np.int8)
    scattered[0, :8] = 1  # 90% zeros, but no N:M pattern for m = 4 or 8
    assert str(auto_sparse_format(scattered, 0, prefer_nm=True)) == "sparse"
    scattered[0, :8] = [1, 1, 1, 1, 1, 1, 0, 0]  # 6:8 holds, but bigger than int8: no nm
    assert str(auto_sparse_format(scattered, 0, prefer_nm=True)) == "sparse"
    e = quantize_weight(two_four * 0.01, "auto-sparse")
    assert e.encoding == "sparse" and e.nbytes == stored_nbytes("sparse", e.values)


def test_quantize_stores_nm_layers_and_names_a_layer_that_is_not() -> None:
    import npuc
    from npuc.ir import parse
    from npuc.pipeline import PassError
    from npuc.printer import print_graph
    from npuc.quant.constants import encoding_of
    from tests.sparsity import nm_net

    model, x = nm_net()
    cm = npuc.compile(model, (x,), passes={"quantize": {"weights": "auto-sparse"}})
    chosen = {n.loc: encoding_of(n).name for n in cm.ir.nodes if n.is_const and n.loc
              and n.loc.endswith("weight")}
    assert set(chosen.values()) <= {"nm2:4", "sparse"}
    on_nm_npu = npuc.compile(model, (x,), target="npu-w4a8",  # its NPU skips 2:4 natively
                             passes={"quantize": {"weights": "auto-sparse"}})
    assert {encoding_of(n).name for n in on_nm_npu.ir.nodes
            if n.is_const and n.loc in chosen} == {"nm2:4"}
    back = parse(print_graph(cm.ir, constants=True))
    np.testing.assert_array_equal(npuc.interpret(back, x.numpy())[0], cm.run(x))
    model.fc2.weight.data[3, :4] = 1.0
    with pytest.raises(PassError, match=r"(?s)weight\[3, 0:4\] holds 4 .*module: fc2"):
        npuc.compile(model, (x,), passes={"quantize": {"weights": "nm2:4"}})
