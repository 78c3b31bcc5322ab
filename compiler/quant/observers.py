"""Calibration observers: the real range [lo, hi] that a value takes on the calibration data.

The quantize pass runs the float graph on each calibration batch, feeds each value's array to its
observer (`update`), then asks for `range()` and derives the scale and zero point itself.

The contract of `range()`, for every observer:
- float64 `(lo, hi)`, shape () per tensor or (C,) per channel (`axis=`, C = x.shape[axis]; a
  channel reduces over all other axes).
- `lo <= 0 <= hi`: the range is widened to include zero, so that zero is exactly representable;
  `symmetric=True` widens it further to `lo == -hi`.
- `hi - lo >= MIN_WIDTH`, so the consumer can divide by the width: a narrower range (all-zero
  or constant-zero data, no finite value at all) keeps `lo` and raises `hi` to `lo + MIN_WIDTH`;
  a symmetric one becomes at least (-MIN_WIDTH / 2, MIN_WIDTH / 2).
- Non-finite values (±inf from attention masks, NaN) are ignored; a tensor or channel without
  finite values has the range of an all-zero one. `range()` before any `update` is a ValueError.
- The state has a fixed size, whatever the number of batches.

Percentile and MSE observers keep one histogram of `bins` counts per channel, on a grid anchored
at zero: bin k holds the values in [k w, (k+1) w), with w a power of two. The bins cover zero and
every finite value seen, and w is always the smallest power of two that fits them into `bins`
bins, so the data spans more than bins/2 bins. When a batch widens the range, w doubles (as often
as needed) and old bins merge in pairs, so no count is interpolated and every count stays in the
bin that holds its value: the histogram equals the one built in a single pass, and the range does
not depend on how the data was split into batches. A percentile is located exactly to its bin and
placed inside it as if that bin's values were evenly spread: it is accurate to one bin width
(`bin_width()`, less than 2 / (bins - 2) of the range with zero). The grid is linear, so
outliers coarsen it for all values: with outliers 1000x the bulk of the data, the bulk falls into a
few bins; raise `bins` for such data.
"""

from __future__ import annotations

import inspect

import numpy as np

MIN_WIDTH = 1e-8  # the narrowest range returned: the consumer divides by hi - lo
DEFAULT_BINS = 2048
_MIN_EXPONENT = -40  # bins never get narrower than 2**-40: 2048 of them stay under MIN_WIDTH
_MSE_COARSE, _MSE_FINE = 32, 17  # the MSE search's candidate fractions per side, per round
_MSE_FINALISTS = 8  # the MSE search's best candidates by its model, checked exactly
_MSE_OCTAVES = 8  # down to 1/256 of the range, a few bins wide: the histogram resolves no less
_MSE_CHUNK = 1 << 20  # array elements per chunk of channels in the MSE search (bounds memory)


class Observer:
    """Collects statistics of one value over calibration batches; `range()` summarises them.

    `axis` selects per-channel ranges (negative counts from the end; None: per tensor); `bits`
    is the integer width the range is for (used by MSEObserver); `symmetric` makes lo == -hi.
    """

    def __init__(self, *, axis: int | None = None, bits: int = 8, symmetric: bool = False) -> None:
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise TypeError(f"axis must be an int or None, got {axis!r}")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
            raise ValueError(f"bits must be an int in [2, 32], got {bits!r}")
        self.axis = axis
        self.bits = bits
        self.symmetric = bool(symmetric)
        self._channels: int | None = None  # fixed by the first update

    def update(self, x: np.ndarray) -> None:
        """Observe one batch: an array of any real dtype and shape (x.shape[axis] channels)."""
        rows = self._rows(x)
        finite = np.isfinite(rows)
        if finite.all():  # the common case: skip the masking copies
            self._observe(rows, None)
        else:
            self._observe(np.where(finite, rows, 0.0), finite)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 (lo, hi) with lo <= 0 <= hi and hi - lo >= MIN_WIDTH (module docstring)."""
        if self._channels is None:
            raise ValueError(f"{type(self).__name__}.range() called before any update()")
        lo, hi = self._raw_range()
        lo, hi = _widen(lo, hi, self.symmetric)
        if self.axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    # -- what a subclass provides. rows: (C, N) float64 with non-finite entries zeroed;
    # finite: their (C, N) mask, None when every entry is finite

    def _observe(self, rows: np.ndarray, finite: np.ndarray | None) -> None:
        raise NotImplementedError

    def _raw_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) lo and hi before widening; ±inf where a channel has seen no finite value."""
        raise NotImplementedError

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """x as float64 (C, N): one row per channel (a single row per tensor)."""
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                or x.dtype == np.bool_):
            raise TypeError(f"{type(self).__name__}.update: expected a real array, got {x.dtype}")
        x = x.astype(np.float64, copy=False)
        if self.axis is None:
            rows = x.reshape(1, -1)
        else:
            if not -x.ndim <= self.axis < x.ndim:
                raise ValueError(f"axis {self.axis} is out of range for an array of shape "
                                 f"{x.shape}")
            channels = x.shape[self.axis]
            rows = np.moveaxis(x, self.axis, 0).reshape(channels, x.size // max(channels, 1))
        if self._channels is None:
            self._channels = rows.shape[0]
        elif rows.shape[0] != self._channels:
            raise ValueError(f"{type(self).__name__}: batch has {rows.shape[0]} channels on axis "
                             f"{self.axis}, earlier batches had {self._channels}")
        return rows


def _widen(lo: np.ndarray, hi: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Include zero (±inf of an empty channel become 0), then symmetry, then the width floor."""
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    if symmetric:
        bound = np.maximum(np.maximum(-lo, hi), MIN_WIDTH / 2)
        return -bound, bound
    return lo, np.maximum(hi, lo + MIN_WIDTH)


def _extrema(rows: np.ndarray, finite: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row min and max over the finite entries (+inf and -inf for a row without any)."""
    if finite is None:
        return rows.min(axis=1, initial=np.inf), rows.max(axis=1, initial=-np.inf)
    lo = np.where(finite, rows, np.inf).min(axis=1, initial=np.inf)
    hi = np.where(finite, rows, -np.inf).max(axis=1, initial=-np.inf)
    return lo, hi


class _Extrema(Observer):
    """Shared by the min-max and moving-average observers: one lo and one hi per channel."""

    def __init__(self, *, axis: int | None, bits: int, symmetric: bool) -> None:
        super().__init__(axis=axis, bits=bits, symmetric=symmetric)
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None

    def _raw_range(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._lo is not None and self._hi is not None
        return self._lo, self._hi


class MinMaxObserver(_Extrema):
    """The smallest and largest finite value over all batches."""

    def __init__(self, *, axis: int | None = None, bits: int = 8, symmetric: bool = False) -> None:
        super().__init__(axis=axis, bits=bits, symmetric=symmetric)

    def _observe(self, rows: np.ndarray, finite: np.ndarray | None) -> None:
        lo, hi = _extrema(rows, finite)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
        else:
            self._lo, self._hi = np.minimum(self._lo, lo), np.maximum(self._hi, hi)


class MovingAverageObserver(_Extrema):
    """An exponential moving average of each batch's min and max:
    lo <- (1 - momentum) * lo + momentum * batch_min (likewise hi). A channel's first batch with
    a finite value initialises it; batches where a channel has no finite value leave it as is."""

    def __init__(self, *, axis: int | None = None, bits: int = 8, symmetric: bool = False,
                 momentum: float = 0.1) -> None:
        super().__init__(axis=axis, bits=bits, symmetric=symmetric)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)

    def _observe(self, rows: np.ndarray, finite: np.ndarray | None) -> None:
        lo, hi = _extrema(rows, finite)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
            return
        m = self.momentum
        # an unseen channel is still ±inf: take the batch's value as is; an empty batch keeps it
        seen, fresh = np.isfinite(self._lo), np.isfinite(lo)
        self._lo = np.where(seen & fresh, (1 - m) * self._lo + m * lo, np.where(seen, self._lo, lo))
        self._hi = np.where(seen & fresh, (1 - m) * self._hi + m * hi, np.where(seen, self._hi, hi))


class _Histograms:
    """One histogram per channel on a power-of-two grid anchored at zero (module docstring).

    Channel c has bin width w[c] = 2**exponent[c]; its bin j holds the values in
    [(start[c] + j) w, (start[c] + j + 1) w). `lo`/`hi` are the exact finite extremes seen.
    """

    def __init__(self, channels: int, bins: int) -> None:
        self.bins = bins
        self.counts = np.zeros((channels, bins))  # float64: exact integers up to 2**53
        self.exponent = np.full(channels, _MIN_EXPONENT, dtype=np.int64)
        self.start = np.zeros(channels, dtype=np.int64)
        self.lo = np.full(channels, np.inf)
        self.hi = np.full(channels, -np.inf)

    @property
    def width(self) -> np.ndarray:
        return np.ldexp(1.0, self.exponent)

    def add(self, rows: np.ndarray, finite: np.ndarray | None) -> None:
        lo, hi = _extrema(rows, finite)
        self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        exponent, start = self._fit()
        moved = np.flatnonzero((exponent != self.exponent) | (start != self.start))
        if moved.size:
            self._rebin(moved, exponent[moved], start[moved])
        self.exponent, self.start = exponent, start
        # x / w is exact (w is a power of two), so floor() puts each value in its own bin
        index = np.floor(rows / self.width[:, None]).astype(np.int64) - start[:, None]
        flat = np.arange(len(rows))[:, None] * self.bins + index
        flat = flat.ravel() if finite is None else flat[finite]
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def _fit(self) -> tuple[np.ndarray, np.ndarray]:
        """The smallest exponent (>= the current one) whose window of `bins` bins covers zero
        and [lo, hi], and that window's first bin index."""
        low, high = np.minimum(self.lo, 0.0), np.maximum(self.hi, 0.0)
        # fitting needs w > extent / bins, i.e. w >= 2**e with frexp's e for extent / bins
        extent = high - low
        _, exponent = np.frexp(extent / self.bins)
        exponent = np.where(extent > 0, exponent.astype(np.int64), _MIN_EXPONENT)
        exponent = np.maximum(np.maximum(exponent, _MIN_EXPONENT), self.exponent)
        for _ in range(64):  # two steps at most: 2**(e + 1) >= 2 extent / bins
            w = np.ldexp(1.0, exponent)
            start = np.floor(low / w).astype(np.int64)
            fits = np.floor(high / w).astype(np.int64) - start < self.bins
            if fits.all():
                return exponent, start
            exponent = np.where(fits, exponent, exponent + 1)
        raise AssertionError("histogram grid did not converge")  # unreachable for finite data

    def _rebin(self, rows: np.ndarray, exponent: np.ndarray, start: np.ndarray) -> None:
        """Move channels `rows` to a coarser (or shifted) window: old bin k goes to k >> shift,
        which is floor(k / 2**shift), the coarse bin that contains the whole old bin."""
        shift = (exponent - self.exponent[rows])[:, None]
        old = self.start[rows][:, None] + np.arange(self.bins)
        # bins beyond the data are empty and may fall outside the new window: clip them
        target = np.clip((old >> shift) - start[:, None], 0, self.bins - 1)
        flat = np.arange(len(rows))[:, None] * self.bins + target
        merged = np.bincount(flat.ravel(), weights=self.counts[rows].ravel(),
                             minlength=len(rows) * self.bins)
        self.counts[rows] = merged.reshape(len(rows), self.bins)

    def quantile(self, q: float) -> np.ndarray:
        """Per channel, np.percentile(values, 100 q) to within one bin width, clamped to the
        exact [lo, hi]; 0 for a channel without data."""
        total = self.counts.sum(axis=1)
        cumulative = np.cumsum(self.counts, axis=1)
        rank = q * np.maximum(total - 1, 0)  # np.percentile's 'linear': between order statistics
        below = np.floor(rank)
        value = self._order_statistic(cumulative, below)
        frac = rank - below
        after = self._order_statistic(cumulative, np.minimum(below + 1, np.maximum(total - 1, 0)))
        value = np.clip((1 - frac) * value + frac * after, self.lo, self.hi)
        return np.where(total > 0, value, 0.0)

    def _order_statistic(self, cumulative: np.ndarray, i: np.ndarray) -> np.ndarray:
        """The i-th smallest value (0-based): its bin exactly, inside the bin by even spread."""
        j = np.minimum((cumulative <= i[:, None]).sum(axis=1), self.bins - 1)
        rows = np.arange(len(i))
        count = self.counts[rows, j]
        rank_in_bin = i - (cumulative[rows, j] - count)
        offset = (rank_in_bin + 0.5) / np.maximum(count, 1.0)
        return (self.start + j + offset) * self.width


class _HistogramObserver(Observer):
    """Shared by the percentile and MSE observers: per-channel histograms of `bins` bins."""

    def __init__(self, *, axis: int | None, bits: int, symmetric: bool, bins: int) -> None:
        super().__init__(axis=axis, bits=bits, symmetric=symmetric)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
            raise ValueError(f"bins must be an int >= 16, got {bins!r}")
        self.bins = bins
        self._hist: _Histograms | None = None

    def _observe(self, rows: np.ndarray, finite: np.ndarray | None) -> None:
        if self._hist is None:
            self._hist = _Histograms(len(rows), self.bins)
        self._hist.add(rows, finite)

    def bin_width(self) -> np.ndarray:
        """The histogram's bin width, per channel ((C,)) or per tensor (()): its accuracy."""
        if self._hist is None:
            raise ValueError(f"{type(self).__name__}.bin_width() called before any update()")
        width = self._hist.width
        return width.reshape(()) if self.axis is None else width


class PercentileObserver(_HistogramObserver):
    """lo and hi at the (100 - percentile)th and percentile-th percentiles of all the values
    seen (np.percentile's linear interpolation), to within one bin width; never outside the
    min-max range. percentile=100 is the min-max range to within a bin."""

    def __init__(self, *, axis: int | None = None, bits: int = 8, symmetric: bool = False,
                 percentile: float = 99.99, bins: int = DEFAULT_BINS) -> None:
        super().__init__(axis=axis, bits=bits, symmetric=symmetric, bins=bins)
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _raw_range(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._hist is not None
        p = self.percentile / 100.0
        return self._hist.quantile(1.0 - p), self._hist.quantile(p)


class MSEObserver(_HistogramObserver):
    """The clipping range that minimises the squared quantization error for `bits`.

    A candidate [lo, hi] stands for the grid the consumer builds from it: step Δ = (hi - lo) /
    (2**bits - 1) and an integer zero point round(-lo / Δ), which moves the grid's ends by up
    to Δ/2. Every bin's values are taken at its centre. The search ranks candidates by a model
    that is O(1) each with prefix sums over the bins: a value beyond the grid's ends costs its
    clipping error (x - clip(x))², one that rounds to zero (|x| < Δ/2) x² exactly, any other
    the rounding noise Δ²/12. (Without the zero term, a coarse grid that rounds most values to
    zero, as 4 bits over a range stretched by outliers do, would look far worse than it is.)
    The 8 best candidates and the min-max range are then compared by their exact rounding
    error (bin centres quantized and dequantized): the result is never worse than min-max by
    that measure, which is within the histogram's resolution of the true error.

    Candidates shrink the min-max range (zero included) toward zero, in two rounds: 32
    fractions spaced geometrically from 1 down to 1/256 (each 20% below the last), then 17 from
    the best one's upper to its lower neighbour (1.2% apart). Symmetric ranges search ±t with t
    a fraction of max|x|; asymmetric ones search the fractions of lo and hi jointly (all 32 x 32,
    then 17 x 17 pairs), as a skewed distribution wants different clipping on each side. Ties
    go to the candidate found first (the wider). Cost: 0.2-0.8 ms per channel of 2048 bins.
    """

    def __init__(self, *, axis: int | None = None, bits: int = 8, symmetric: bool = False,
                 bins: int = DEFAULT_BINS) -> None:
        super().__init__(axis=axis, bits=bits, symmetric=symmetric, bins=bins)

    def _raw_range(self) -> tuple[np.ndarray, np.ndarray]:
        hist = self._hist
        assert hist is not None
        w = hist.width
        # work in units of each channel's bin width: sums stay small and well conditioned
        low, high = np.minimum(hist.lo, 0.0) / w, np.maximum(hist.hi, 0.0) / w
        if self.symmetric:
            high = np.maximum(-low, high)
            low = -high
        # chunks of channels bound the search's memory: prefix sums, candidates, finalists
        grid = _MSE_COARSE if self.symmetric else _MSE_COARSE**2
        step = max(1, _MSE_CHUNK // ((4 + _MSE_FINALISTS) * hist.bins + grid))
        for c in range(0, len(low), step):
            s = slice(c, c + step)
            low[s], high[s] = self._search(hist.counts[s], hist.start[s], low[s], high[s])
        return low * w, high * w

    def _search(self, counts: np.ndarray, start: np.ndarray, low: np.ndarray,
                high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The search for a chunk of channels: their histograms (counts, start) and min-max
        range [low, high], in bin widths."""
        centres = start[:, None] + np.arange(counts.shape[1]) + 0.5
        sums = [_prefix(counts * centres**p) for p in range(3)]
        levels = 2.0**self.bits - 1
        coarse = np.exp2(-np.linspace(0.0, _MSE_OCTAVES, _MSE_COARSE))
        lo, hi = self._ranked(sums, start, low[:, None] * coarse,
                              high[:, None] * coarse, levels)
        fine = (coarse[0] / coarse[1]) ** np.linspace(1.0, -1.0, _MSE_FINE)  # centre: 1
        # never beyond the min-max range: it is the widest useful candidate
        lo, hi = self._ranked(sums, start, np.maximum(lo[:, :1] * fine, low[:, None]),
                              np.minimum(hi[:, :1] * fine, high[:, None]), levels)
        # the finalists, min-max last: the exact rounding error decides
        lo = np.concatenate([lo[:, :_MSE_FINALISTS], low[:, None]], axis=1)
        hi = np.concatenate([hi[:, :_MSE_FINALISTS], high[:, None]], axis=1)
        best = np.argmin(_rounding_error(counts, centres, lo, hi, levels), axis=1)
        rows = np.arange(len(lo))
        return lo[rows, best], hi[rows, best]

    def _ranked(self, sums: list[np.ndarray], start: np.ndarray, lows: np.ndarray,
                highs: np.ndarray, levels: float) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (lo, hi) from lows x highs ((c, K) each; all pairs, or only the pairs
        (lows[k], highs[k]) when symmetric), best first by the error model: (c, K or K²)."""
        if self.symmetric:
            lo, hi = lows, highs
        else:
            lo, hi = lows[:, :, None], highs[:, None, :]
        err = _expected_error(sums, start, lo, hi, levels)
        order = np.argsort(err.reshape(len(err), -1), axis=1, kind="stable")
        return (np.take_along_axis(np.broadcast_to(lo, err.shape).reshape(order.shape), order, 1),
                np.take_along_axis(np.broadcast_to(hi, err.shape).reshape(order.shape), order, 1))


def _prefix(values: np.ndarray) -> np.ndarray:
    """Prefix sums along the bins with a leading 0: out[:, j] = sum of the first j bins."""
    return np.concatenate([np.zeros((len(values), 1)), np.cumsum(values, axis=1)], axis=1)


def _below(sums: list[np.ndarray], start: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    """[Σ c, Σ c x, Σ c x²] over the bins whose centre is below t (t: (c, ...), in bin widths)."""
    start = start.reshape((-1,) + (1,) * (t.ndim - 1))
    # centre j is start + j + 1/2, so ceil(t - start - 1/2) centres lie below t
    width = sums[0].shape[1]
    j = np.clip(np.ceil(t - start - 0.5), 0, width - 1).astype(np.int64)
    j += np.arange(len(j)).reshape(start.shape) * width  # row offsets into the flat sums
    return [s.ravel()[j] for s in sums]


def _rounding_error(counts: np.ndarray, centres: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    levels: float) -> np.ndarray:
    """Σ c (x - dequantize(quantize(x)))² with every bin's values at its centre, for candidates
    (lo, hi) of shape (c, F), on the grid of `levels` steps with an integer zero point."""
    row, col = np.nonzero(counts)  # only occupied bins: sparse histograms are the usual case
    x, weight = centres[row, col][:, None], counts[row, col]
    delta = ((hi - lo) / levels)[row]
    step = np.where(delta > 0, delta, 1.0)  # Δ = 0: q is anything, q Δ is 0
    zero_point = np.rint(-lo[row] / step)
    q = np.clip(np.rint(x / step) + zero_point, 0, levels) - zero_point
    squared = weight[:, None] * (x - q * delta) ** 2
    return np.stack([np.bincount(row, squared[:, f], minlength=len(lo))
                     for f in range(lo.shape[1])], axis=1)


def _expected_error(sums: list[np.ndarray], start: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    levels: float) -> np.ndarray:
    """The MSEObserver's error model for each candidate (lo, hi) (broadcast), in bin widths²."""
    delta = (hi - lo) / levels
    # the grid the consumer builds has an integer zero point: its ends move by up to Δ/2
    zero_point = np.round(np.divide(-lo, delta, out=np.zeros_like(delta), where=delta > 0))
    lo, hi = -zero_point * delta, (levels - zero_point) * delta
    total = [s[:, -1].reshape((-1,) + (1,) * (lo.ndim - 1)) for s in sums]
    below = _below(sums, start, lo)
    above = [t - u for t, u in zip(total, _below(sums, start, hi), strict=True)]
    zero = [b - a for a, b in zip(_below(sums, start, np.maximum(lo, -delta / 2)),
                                  _below(sums, start, np.minimum(hi, delta / 2)), strict=True)]
    noisy = total[0] - below[0] - above[0] - zero[0]
    return noisy * delta**2 / 12 + zero[2] + _spread(below, lo) + _spread(above, hi)


def _spread(part: list[np.ndarray], t: np.ndarray) -> np.ndarray:
    """Σ c (x - t)² from [Σ c, Σ c x, Σ c x²]; max(0): cancellation can leave a tiny negative."""
    n, s1, s2 = part
    return np.maximum(s2 - 2 * t * s1 + t * t * n, 0.0)


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(kind: str, **options: object) -> Observer:
    """A new observer by name (a key of OBSERVERS) with its keyword options, e.g.
    make_observer("percentile", axis=1, percentile=99.9)."""
    cls = OBSERVERS.get(kind)
    if cls is None:
        raise ValueError(f"unknown observer {kind!r}; the kinds are: {', '.join(OBSERVERS)}")
    accepted = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"observer {kind!r} has no option {', '.join(map(repr, unknown))}; "
                        f"its options are: {', '.join(accepted)}")
    return cls(**options)  # type: ignore[arg-type]
