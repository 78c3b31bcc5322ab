"""Calibration observers: ranges against numpy, the range contract, and bounded memory."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npuc.quant import observers
from npuc.quant.observers import (
    MIN_WIDTH,
    OBSERVERS,
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)

KINDS = sorted(OBSERVERS)
AXES = [None, 1, 2, -1]  # data is (batch, a, b): a channel axis is never the batch axis

# ------------------------------------------------------------------ data and references


@st.composite
def datasets(draw: st.DrawFn, nonfinite: bool = False) -> np.ndarray:
    """A (n, a, b) float64 array whose rows along axis 0 differ in scale by up to 1e6, so that
    later batches widen the histograms many times."""
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    elements = st.floats(-1e3, 1e3, allow_subnormal=False)
    if nonfinite:
        elements = elements | st.sampled_from([np.inf, -np.inf, np.nan])
    data = draw(hnp.arrays(np.float64, shape, elements=elements))
    scales = draw(hnp.arrays(np.float64, shape[0], elements=st.sampled_from([1e-3, 1.0, 1e3])))
    return data * scales[:, None, None]


@st.composite
def splits(draw: st.DrawFn, n: int) -> list[int]:
    """Cut points that split range(n) into non-empty batches."""
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []


def observe(obs: Observer, batches: list[np.ndarray]) -> Observer:
    for batch in batches:
        obs.update(batch)
    return obs


def channel_rows(data: np.ndarray, axis: int | None) -> np.ndarray:
    """data as (C, N): the values each channel reduces over (one row per tensor)."""
    if axis is None:
        return data.reshape(1, -1)
    return np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)


def widened(lo: np.ndarray, hi: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """The documented widening: include zero, then symmetry, then the MIN_WIDTH floor."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        bound = np.maximum(np.maximum(-lo, hi), MIN_WIDTH / 2)
        return -bound, bound
    return lo, np.maximum(hi, lo + MIN_WIDTH)


def quant_mse(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    """Simulated quantization: clip to [lo, hi], round to 2**bits levels with an integer zero
    point, dequantize; the mean squared error against x."""
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    zero_point = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero_point, 0, levels)
    return float(np.mean((x - (q - zero_point) * scale) ** 2))


# ------------------------------------------------------------------ (1) min-max is numpy's


@given(data=datasets(), axis=st.sampled_from(AXES), symmetric=st.booleans(), cuts=st.data())
@settings(deadline=None)
def test_minmax_is_numpy_min_max_for_any_split(data: np.ndarray, axis: int | None,
                                               symmetric: bool, cuts: st.DataObject) -> None:
    batches = np.split(data, cuts.draw(splits(len(data))))
    lo, hi = observe(MinMaxObserver(axis=axis, symmetric=symmetric), batches).range()
    rows = channel_rows(data, axis)
    want_lo, want_hi = widened(rows.min(axis=1), rows.max(axis=1), symmetric)
    shape = () if axis is None else (rows.shape[0],)
    assert lo.shape == hi.shape == shape and lo.dtype == hi.dtype == np.float64
    np.testing.assert_array_equal(lo, want_lo.reshape(shape))
    np.testing.assert_array_equal(hi, want_hi.reshape(shape))


@given(data=datasets(), axis=st.sampled_from(AXES), kind=st.sampled_from(["percentile", "mse"]),
       cuts=st.data())
@settings(deadline=None)
def test_histogram_observers_do_not_depend_on_the_split(data: np.ndarray, axis: int | None,
                                                        kind: str, cuts: st.DataObject) -> None:
    # re-binning merges whole bins onto a canonical grid: batch by batch == all at once
    split = observe(make_observer(kind, axis=axis), np.split(data, cuts.draw(splits(len(data)))))
    whole = observe(make_observer(kind, axis=axis), [data])
    np.testing.assert_array_equal(split.range(), whole.range())
    np.testing.assert_array_equal(split.bin_width(), whole.bin_width())
    counts = split._hist.counts  # type: ignore[attr-defined]  # nothing lost in re-binning
    np.testing.assert_array_equal(counts.sum(axis=1), channel_rows(data, axis).shape[1])


@given(data=datasets(), kind=st.sampled_from(KINDS), symmetric=st.booleans(),
       axis=st.sampled_from([1, 2, -1]))
@settings(deadline=None)
def test_per_channel_is_per_tensor_on_each_channel(data: np.ndarray, kind: str, symmetric: bool,
                                                   axis: int) -> None:
    batches = np.split(data, [len(data) // 2])
    lo, hi = observe(make_observer(kind, axis=axis, symmetric=symmetric), batches).range()
    for c in range(data.shape[axis]):
        alone = [np.take(b, c, axis=axis) for b in batches]
        want = observe(make_observer(kind, symmetric=symmetric), alone).range()
        assert (lo[c], hi[c]) == want, c


@pytest.mark.parametrize("kind", ["percentile", "mse"])
def test_many_channels_match_per_tensor_across_chunks(kind: str) -> None:
    # 100 channels: the MSE search runs in chunks of channels; check around their edges
    rng = np.random.default_rng(4)
    x = rng.standard_t(3, (64, 100)) * rng.uniform(0.1, 10, 100)
    lo, hi = observe(make_observer(kind, axis=-1, bits=4), np.split(x, 2)).range()
    for c in [0, 1, 38, 39, 40, 41, 79, 80, 81, 99]:
        want = observe(make_observer(kind, bits=4), np.split(x[:, c], 2)).range()
        assert (lo[c], hi[c]) == want, c


def test_negative_axis_counts_from_the_end() -> None:
    data = np.random.default_rng(0).standard_normal((4, 3, 5))
    for kind in KINDS:
        got = observe(make_observer(kind, axis=-2), [data]).range()
        np.testing.assert_array_equal(got, observe(make_observer(kind, axis=1), [data]).range())
        assert got[0].shape == (3,)


# ------------------------------------------------------------------ (2) the range contract


@given(data=datasets(nonfinite=True), kind=st.sampled_from(KINDS), axis=st.sampled_from(AXES),
       symmetric=st.booleans(), bits=st.sampled_from([2, 4, 8, 16]))
@settings(deadline=None)
def test_every_range_includes_zero_and_is_usable(data: np.ndarray, kind: str, axis: int | None,
                                                 symmetric: bool, bits: int) -> None:
    obs = observe(make_observer(kind, axis=axis, bits=bits, symmetric=symmetric),
                  np.split(data, [len(data) // 2]))
    lo, hi = obs.range()
    assert lo.shape == hi.shape == (() if axis is None else (data.shape[axis],))
    assert lo.dtype == hi.dtype == np.float64
    assert np.isfinite(lo).all() and np.isfinite(hi).all()
    assert (lo <= 0).all() and (hi >= 0).all()
    assert (hi - lo >= MIN_WIDTH * (1 - 1e-9)).all()
    if symmetric:
        np.testing.assert_array_equal(lo, -hi)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_and_constant_tensors_get_the_minimum_width(kind: str) -> None:
    assert observe(make_observer(kind), [np.zeros((2, 3))]).range() == (0.0, MIN_WIDTH)
    assert (observe(make_observer(kind, symmetric=True), [np.zeros(4, np.float32)]).range()
            == (-MIN_WIDTH / 2, MIN_WIDTH / 2))
    lo, hi = observe(make_observer(kind), [np.full(10, -3e-9)]).range()
    assert -3e-9 <= lo < 0 and hi == pytest.approx(lo + MIN_WIDTH, rel=1e-9)  # lo kept, hi raised
    assert lo == -3e-9 or kind == "mse"  # MSE may clip: then it keeps its own lo
    lo, hi = observe(make_observer(kind), [np.full((4, 4), 2.5, np.float16)]).range()
    assert lo == 0.0 and 2.0 < hi <= 2.5


@pytest.mark.parametrize("kind", KINDS)
def test_misuse_is_an_error(kind: str) -> None:
    obs = make_observer(kind, axis=1)
    with pytest.raises(ValueError, match="before any update"):
        obs.range()
    obs.update(np.ones((2, 3)))
    with pytest.raises(ValueError, match="has 4 channels.*had 3"):
        obs.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="out of range"):
        obs.update(np.ones(3))
    with pytest.raises(TypeError, match="real array"):
        obs.update(np.ones((2, 3), np.complex64))


# ------------------------------------------------------------------ (3, 4) percentiles


@given(data=datasets(), axis=st.sampled_from(AXES), p=st.floats(50, 100))
@settings(deadline=None)
def test_percentile_matches_numpy_within_one_bin(data: np.ndarray, axis: int | None,
                                                 p: float) -> None:
    obs = observe(PercentileObserver(axis=axis, percentile=p), np.split(data, [len(data) // 3]))
    lo, hi = obs.range()
    rows = channel_rows(data, axis)
    want_lo, want_hi = widened(np.percentile(rows, 100 - p, axis=1),
                               np.percentile(rows, p, axis=1), symmetric=False)
    bin_width = obs.bin_width()
    slack = bin_width * (1 + 1e-9) + 1e-12 * np.abs(rows).max()  # float rounding of the rank
    assert (np.abs(lo - want_lo.reshape(lo.shape)) <= slack).all()
    assert (np.abs(hi - want_hi.reshape(hi.shape)) <= slack).all()
    # the accuracy promise is worth something: a bin is at most 2/bins of the span with zero
    span = np.maximum(rows.max(axis=1), 0) - np.minimum(rows.min(axis=1), 0)
    limit = 2 * span.reshape(bin_width.shape) / (obs.bins - 2)
    assert (bin_width <= np.maximum(limit, 2.0**-40)).all()


@given(data=datasets(), axis=st.sampled_from(AXES), p=st.floats(50, 100),
       symmetric=st.booleans())
@settings(deadline=None)
def test_percentile_lies_inside_min_max(data: np.ndarray, axis: int | None, p: float,
                                        symmetric: bool) -> None:
    batches = np.split(data, [1])
    lo, hi = observe(PercentileObserver(axis=axis, percentile=p, symmetric=symmetric),
                     batches).range()
    min_lo, max_hi = observe(MinMaxObserver(axis=axis, symmetric=symmetric), batches).range()
    floored = hi - lo <= MIN_WIDTH * (1 + 1e-9)  # a range raised to the floor may stick out
    assert (min_lo <= lo).all() and ((hi <= max_hi) | floored).all()


@given(data=datasets(), axis=st.sampled_from(AXES))
@settings(deadline=None)
def test_percentile_100_is_min_max_within_one_bin(data: np.ndarray, axis: int | None) -> None:
    obs = observe(PercentileObserver(axis=axis, percentile=100), [data])
    lo, hi = obs.range()
    min_lo, max_hi = observe(MinMaxObserver(axis=axis), [data]).range()
    assert (np.abs(lo - min_lo) <= obs.bin_width()).all()
    assert (np.abs(hi - max_hi) <= obs.bin_width()).all()


@pytest.mark.parametrize("scales", [[1e-8], [1.0], [1e6], [1e-8, 1e6], [1e6, 1e-8, 1.0]])
def test_bins_follow_the_scale_of_the_data(scales: list[float]) -> None:
    # batches 1e14 apart: the grid doubles ~47 times at once and must still end up minimal
    rng = np.random.default_rng(2)
    batches = [scale * rng.standard_normal(3_000) for scale in scales]
    obs = observe(PercentileObserver(percentile=99.0), batches)
    x = np.concatenate(batches)
    span = max(x.max(), 0) - min(x.min(), 0)
    assert span / obs.bins < obs.bin_width() <= 2 * span / (obs.bins - 2)
    lo, hi = obs.range()
    assert abs(lo - np.percentile(x, 1.0)) <= obs.bin_width()
    assert abs(hi - np.percentile(x, 99.0)) <= obs.bin_width()


def test_percentile_clips_outliers() -> None:
    x = np.random.default_rng(1).standard_normal(100_000)
    x[:3] = [-50.0, 30.0, 50.0]
    lo, hi = observe(PercentileObserver(percentile=99.9), np.split(x, 10)).range()
    assert -3.2 < lo < -3.0 and 3.0 < hi < 3.2  # ±3.09σ, not the outliers


# ------------------------------------------------------------------ (5) MSE


def _laplace_outliers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Laplace and Student-t(3) bulk with a few outliers 50-200x its scale."""
    x = np.concatenate([rng.laplace(size=n // 2), rng.standard_t(3, size=n // 2)])
    x[rng.choice(n, 5, replace=False)] = rng.choice([-1, 1], 5) * rng.uniform(50, 200, 5)
    return x


def _student_t(rng: np.random.Generator, n: int) -> np.ndarray:
    """Student-t(3) and one outlier at 150."""
    return np.append(rng.standard_t(3, size=n - 1), 150.0)


def _skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    """A shifted exponential (one long tail) and three outliers, mostly on its side."""
    return np.concatenate([rng.exponential(size=n - 3) - 0.2, [40.0, 60.0, -5.0]])


HEAVY = [_laplace_outliers, _student_t, _skewed]


def _mse_and_minmax(x: np.ndarray, bits: int, symmetric: bool) -> tuple[float, float]:
    """Simulated quantization MSE with the MSE observer's range and with min-max's."""
    batches = np.split(x, 4)
    mse = observe(MSEObserver(bits=bits, symmetric=symmetric), batches).range()
    minmax = observe(MinMaxObserver(symmetric=symmetric), batches).range()
    return quant_mse(x, *mse, bits), quant_mse(x, *minmax, bits)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("make_data", HEAVY)
def test_mse_is_no_worse_than_min_max_on_heavy_tails(
        bits: int, symmetric: bool,
        make_data: Callable[[np.random.Generator, int], np.ndarray]) -> None:
    for seed in range(3):
        mse, minmax = _mse_and_minmax(make_data(np.random.default_rng(seed), 20_000), bits,
                                      symmetric)
        assert mse <= minmax, (seed, mse, minmax)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("make_data", [_student_t, _skewed])
def test_mse_clips_outliers_that_stretch_a_4_bit_grid(
        symmetric: bool, make_data: Callable[[np.random.Generator, int], np.ndarray]) -> None:
    mse, minmax = _mse_and_minmax(make_data(np.random.default_rng(0), 20_000), 4, symmetric)
    assert mse <= 0.7 * minmax, (mse, minmax)  # measured: 0.25x (skewed) to 0.56x (t)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("make_data", HEAVY)
def test_mse_range_is_near_the_best_on_a_brute_force_grid(
        bits: int, make_data: Callable[[np.random.Generator, int], np.ndarray]) -> None:
    x = make_data(np.random.default_rng(7), 4_000)
    lo, hi = observe(MSEObserver(bits=bits), [x]).range()
    fractions = np.geomspace(1 / 256, 1.0, 40)
    best = min(quant_mse(x, x.min() * a, x.max() * b, bits)
               for a in fractions for b in fractions)
    assert quant_mse(x, lo, hi, bits) <= 1.05 * best


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_is_close_to_min_max_on_uniform_data(bits: int, symmetric: bool) -> None:
    for seed in range(3):
        mse, minmax = _mse_and_minmax(np.random.default_rng(seed).uniform(-1.0, 3.0, 20_000),
                                      bits, symmetric)
        assert mse <= 1.2 * minmax, (seed, mse, minmax)  # measured: at most 1.06x


@pytest.mark.parametrize("case, bits, lo, hi", [
    ("normal", 4, -100.0, 100.0),  # most values round to zero: the model's x² term
    ("normal", 4, -30.0, 90.0),
    ("uniform", 8, -1.0, 3.0),  # rounding noise Δ²/12
    ("uniform", 4, -1.0, 3.0),
    ("normal", 8, -1.0, 1.0),  # clipping
    ("student_t", 6, -2.0, 5.0),
])
def test_mse_error_model_matches_simulated_quantization(case: str, bits: int, lo: float,
                                                        hi: float) -> None:
    rng = np.random.default_rng(0)
    x = {"normal": rng.standard_normal, "uniform": lambda n: rng.uniform(-1, 3, n),
         "student_t": lambda n: rng.standard_t(3, n)}[case](20_000)
    hist = observe(MSEObserver(bits=bits), [x])._hist  # type: ignore[attr-defined]
    centres = hist.start[:, None] + np.arange(hist.bins) + 0.5
    sums = [observers._prefix(hist.counts * centres**p) for p in range(3)]
    w, levels = hist.width[0], 2.0**bits - 1
    candidate = np.array([[lo / w]]), np.array([[hi / w]])  # in bin widths
    model = observers._expected_error(sums, hist.start, *candidate, levels)[0, 0]
    exact = observers._rounding_error(hist.counts, centres, *candidate, levels)[0, 0]
    true = quant_mse(x, lo, hi, bits) * len(x) / w**2
    assert model == pytest.approx(true, rel=0.05)  # ranks the candidates
    assert exact == pytest.approx(true, rel=0.01)  # picks among the finalists


def test_mse_per_channel_clips_only_the_heavy_channel() -> None:
    rng = np.random.default_rng(3)
    x = np.stack([rng.uniform(-1, 1, 20_000), _student_t(rng, 20_000)], axis=1)  # (N, 2)
    lo, hi = observe(MSEObserver(axis=1, bits=4, symmetric=True), np.split(x, 5)).range()
    assert hi[0] > 0.9  # uniform: (nearly) the full range
    assert hi[1] < 0.1 * np.abs(x[:, 1]).max()  # heavy: the outliers are clipped
    for c in range(2):
        bound = np.abs(x[:, c]).max()
        assert quant_mse(x[:, c], lo[c], hi[c], 4) <= quant_mse(x[:, c], -bound, bound, 4)


# ------------------------------------------------------------------ (6) moving average


@pytest.mark.parametrize("momentum", [0.1, 0.25, 1.0])
def test_moving_average_is_an_ema_of_batch_extrema(momentum: float) -> None:
    batches = [np.array([[-1.0, 4.0], [2.0, 3.0]]), np.array([[-3.0, 1.0], [0.5, 8.0]]),
               np.array([[-2.0, 2.0], [1.0, 6.0]])]
    # per tensor: batch minima -1, -3, -2 and maxima 4, 8, 6
    lo, hi = -1.0, 4.0
    for b_lo, b_hi in [(-3.0, 8.0), (-2.0, 6.0)]:
        lo, hi = (1 - momentum) * lo + momentum * b_lo, (1 - momentum) * hi + momentum * b_hi
    got = observe(MovingAverageObserver(momentum=momentum), batches).range()
    np.testing.assert_allclose(got, (lo, hi), rtol=1e-12)
    # per channel (axis 1): channel 0 sees (-1, 2), (-3, 0.5), (-2, 1); channel 1 (3, 4), ...
    lo_c, hi_c = np.array([-1.0, 3.0]), np.array([2.0, 4.0])
    for b in batches[1:]:
        lo_c = (1 - momentum) * lo_c + momentum * b.min(axis=0)
        hi_c = (1 - momentum) * hi_c + momentum * b.max(axis=0)
    got_lo, got_hi = observe(MovingAverageObserver(axis=1, momentum=momentum), batches).range()
    np.testing.assert_allclose(got_lo, np.minimum(lo_c, 0), rtol=1e-12)
    np.testing.assert_allclose(got_hi, hi_c, rtol=1e-12)


def test_moving_average_default_momentum_and_first_batch() -> None:
    obs = MovingAverageObserver()
    obs.update(np.array([-10.0, 10.0]))
    assert obs.range() == (-10.0, 10.0)  # the first batch initialises, no averaging toward 0
    obs.update(np.array([np.nan, -np.inf]))  # nothing finite: unchanged
    assert obs.range() == (-10.0, 10.0)
    obs.update(np.array([0.0, 20.0]))
    np.testing.assert_allclose(obs.range(), (-9.0, 11.0), rtol=1e-12)  # momentum 0.1


# ------------------------------------------------------------------ (7) non-finite values


@given(data=datasets(), kind=st.sampled_from(KINDS), axis=st.sampled_from(AXES),
       junk=st.data())
@settings(deadline=None)
def test_non_finite_values_are_ignored(data: np.ndarray, kind: str, axis: int | None,
                                       junk: st.DataObject) -> None:
    noise = junk.draw(hnp.arrays(np.float64, (junk.draw(st.integers(1, 3)),) + data.shape[1:],
                                 elements=st.sampled_from([np.inf, -np.inf, np.nan])))
    dirty = np.concatenate([data[:1], noise, data[1:]])  # same finite values per channel
    got = observe(make_observer(kind, axis=axis), [dirty]).range()
    np.testing.assert_array_equal(got, observe(make_observer(kind, axis=axis), [data]).range())


@pytest.mark.parametrize("kind", KINDS)
def test_all_non_finite_is_like_all_zero(kind: str) -> None:
    assert observe(make_observer(kind), [np.array([np.inf, -np.inf, np.nan])]).range() == (
        0.0, MIN_WIDTH)
    x = np.array([[1.0, np.nan], [-2.0, np.inf], [3.0, -np.inf]])  # channel 1 has nothing finite
    lo, hi = observe(make_observer(kind, axis=1), [x]).range()
    assert (lo[1], hi[1]) == (0.0, MIN_WIDTH)
    assert lo[0] <= -1.9 and hi[0] >= 2.9


# ------------------------------------------------------------------ (8) bounded memory


def _state(obs: Observer) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """The pickled size, and the shape of every array in the observer or its histograms."""
    parts = [obs, getattr(obs, "_hist", None)]
    arrays = [(f"{type(part).__name__}.{name}", value.shape) for part in parts if part is not None
              for name, value in vars(part).items() if isinstance(value, np.ndarray)]
    return len(pickle.dumps(obs)), sorted(arrays)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("axis", [None, 1])
def test_state_does_not_grow_with_batches(kind: str, axis: int | None) -> None:
    rng = np.random.default_rng(0)
    obs = make_observer(kind, axis=axis)
    obs.update(rng.standard_normal((16, 4)))
    first = _state(obs)
    for i in range(49):  # ever wider data forces many re-binnings
        obs.update(rng.standard_normal((16, 4)) * 1.5**i)
    assert _state(obs) == first
    assert first[0] < 4 * 8 * 2048 + 4096  # at most one histogram per channel


# ------------------------------------------------------------------ (9) make_observer


def test_make_observer_builds_each_kind_with_its_options() -> None:
    assert {kind: type(make_observer(kind)) for kind in KINDS} == OBSERVERS
    obs = make_observer("percentile", axis=-1, bits=4, symmetric=True, percentile=99.0, bins=64)
    assert isinstance(obs, PercentileObserver)
    assert (obs.axis, obs.bits, obs.symmetric, obs.percentile, obs.bins) == (-1, 4, True, 99.0, 64)
    assert make_observer("moving_average", momentum=0.5).momentum == 0.5  # type: ignore[attr-defined]


def test_make_observer_errors_name_the_choices() -> None:
    with pytest.raises(ValueError) as error:
        make_observer("histogram")
    assert "'histogram'" in str(error.value)
    assert all(kind in str(error.value) for kind in KINDS)
    with pytest.raises(TypeError, match=r"'momentum'.*axis, bits, symmetric$"):
        make_observer("minmax", momentum=0.1)
    with pytest.raises(TypeError, match="'percentil'.*percentile, bins"):
        make_observer("percentile", percentil=99.0)


@pytest.mark.parametrize("kind, options, error", [
    ("minmax", {"bits": 1}, ValueError), ("mse", {"bits": 33}, ValueError),
    ("minmax", {"axis": 1.0}, TypeError),
    ("moving_average", {"momentum": 0.0}, ValueError),
    ("moving_average", {"momentum": 1.5}, ValueError),
    ("percentile", {"percentile": 40.0}, ValueError),
    ("percentile", {"percentile": 100.5}, ValueError), ("mse", {"bins": 8}, ValueError),
])
def test_bad_option_values_are_rejected(kind: str, options: dict[str, object],
                                        error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(options))):
        make_observer(kind, **options)
