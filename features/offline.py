"""Offline executor: the spec's features, point-in-time, for every payment of a history.

Each payment gets the value it would have seen online at its own timestamp: it sees the payments
before it in the stream (time order, file order on ties) and the feedback events (declines,
refunds and cancellations, fraud labels) reported strictly before it. Everything is vectorised:
per entity, payments are sorted by (entity, time) once, and windows become `searchsorted` ranges
over that order, with exact integer sums and a sparse table for maxima.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from antifraud.engine.vocabulary import EVENT_TIME_COLUMNS, FEATURE_EVENT, FeatureEvent, HistoryEvent
from antifraud.features.derive import Deriver
from antifraud.features.fingerprint import VALUE_BITS, fingerprint
from antifraud.features.payment import PAYMENT_FIELDS
from antifraud.features.plan import EntityPlan, Plan, compile_plan, raw_name
from antifraud.features.spec import FeatureSpec, Window, load_spec

Progress = Callable[[str], None]


def timestamps_ms(series: pd.Series) -> np.ndarray:
    """UTC timestamps as int64 milliseconds since the epoch (the online executor's clock)."""
    values = pd.to_datetime(series, utc=True)
    return (
        values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ms]").astype(np.int64).to_numpy()
    )


def amounts_milli(series: pd.Series) -> np.ndarray:
    """Amounts in thousandths of the currency unit, rounded exactly as online (half to even)."""
    return np.rint(series.to_numpy(dtype=float) * 1000).astype(np.int64)


def _objects(column: pd.Series) -> np.ndarray:
    """A column as Python objects, None where a text is missing (a pandas or pyarrow string column,
    as Dask reads texts, holds pd.NA there; the payment features read None)."""
    values = column.to_numpy(dtype=object)
    if isinstance(column.dtype, pd.StringDtype):
        values[column.isna().to_numpy()] = None
    return values


def _key_codes(frame: pd.DataFrame, fields: tuple[str, ...]) -> np.ndarray:
    """Integer code of an entity key per row, -1 where a key field is missing."""
    missing = np.zeros(len(frame), dtype=bool)
    parts = []
    for name in fields:
        column = frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index)
        text = column.astype("string")
        missing |= (text.isna() | (text == "")).to_numpy()
        parts.append(text.fillna(""))
    key = parts[0] if len(parts) == 1 else parts[0].str.cat(parts[1:], sep="|")  # type: ignore[arg-type]
    codes, _ = pd.factorize(key, use_na_sentinel=True)
    return np.where(missing, -1, codes).astype(np.int64)


def _value_codes(frame: pd.DataFrame, field: str) -> np.ndarray:
    """Integer code of a distinct or novelty field's value per row, -1 where missing: the code of the
    value's fingerprint (features/fingerprint.py), so that two values sharing one are one value, as
    online, where the state keeps fingerprints."""
    column = frame[field] if field in frame else pd.Series([None] * len(frame), index=frame.index)
    text = column.astype("string")
    missing = (text.isna() | (text == "")).to_numpy()
    codes, uniques = pd.factorize(text.fillna(""))
    prints = np.array([fingerprint(str(u), VALUE_BITS) for u in uniques], dtype=np.int64)
    by_print, _ = pd.factorize(prints)
    return np.where(missing, -1, by_print[codes]).astype(np.int64)


@dataclass
class _Sorted:
    """One entity's payments sorted by (entity, stream position), with searchsorted keys."""

    rows: np.ndarray  # row index of each sorted element
    code: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    rank: np.ndarray  # position of each element in the sorted order
    group_start: np.ndarray
    span: int
    origin: int

    def ckey(self, code: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return code * self.span + (ts - self.origin)

    def start(self, lower: np.ndarray) -> np.ndarray:
        """First sorted position of the same entity with time >= lower (per element)."""
        keys = self.ckey(self.code, self.ts)
        return np.maximum(np.searchsorted(keys, self.ckey(self.code, lower), side="left"), self.group_start)


class _RangeMax:
    """Sparse table: max over any [lo, hi) range of an int64 array in O(1) per query."""

    def __init__(self, values: np.ndarray) -> None:
        self.levels = [values]
        width = 1
        while width * 2 <= len(values):
            prev = self.levels[-1]
            self.levels.append(np.maximum(prev[:-width], prev[width:]))
            width *= 2

    def query(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        length = hi - lo
        out = np.full(len(lo), -1, dtype=np.int64)
        ok = length > 0
        k = np.zeros(len(lo), dtype=np.int64)
        k[ok] = np.floor(np.log2(length[ok])).astype(np.int64)
        for level in np.unique(k[ok]):
            sel = ok & (k == level)
            table = self.levels[level]
            out[sel] = np.maximum(table[lo[sel]], table[hi[sel] - (1 << level)])
        return out


class _DistinctInRanges:
    """Distinct values of many ranges [lo, hi) of a sequence at once, from its next-occurrence array:
    `nxt[j]` the position of the next element with the same value (beyond the last: the length),
    -1 where the element has no value. The values of [lo, hi) are the j there with nxt[j] >= hi.

    #{j < hi: nxt[j] >= hi} is one search in the sorted array (nxt[j] < hi implies j < hi, but for
    valueless elements); #{j < lo: nxt[j] >= hi} comes from a merge-sort tree (level k holds nxt
    sorted within aligned blocks of 2^k elements, so [0, lo) is one whole block per level at most):
    O(log n) per range, the tree built in O(n log^2 n) (one sort per level)."""

    def __init__(self, nxt: np.ndarray) -> None:
        self.sorted = np.sort(nxt)
        self.valueless_from = np.r_[np.cumsum((nxt < 0)[::-1])[::-1], 0]  # valueless elements at >= x
        self.width = len(nxt) + 2  # a block's keys (nxt + 1) never reach the next block's
        position = np.arange(len(nxt))
        self.levels = []
        k = 0
        while (1 << k) <= len(nxt):
            self.levels.append(np.sort((position >> k) * self.width + nxt + 1))
            k += 1

    def count(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per range, the distinct values of [lo, hi)."""
        before_hi = hi - (np.searchsorted(self.sorted, hi, side="left") - self.valueless_from[hi])
        return before_hi - self._reaching(lo, hi)

    def _reaching(self, x: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """#{j < x: nxt[j] >= threshold}: x's binary digits split [0, x) into whole blocks."""
        out = np.zeros(len(x), dtype=np.int64)
        for k, keys in enumerate(self.levels):
            sel = np.nonzero((x >> k) & 1)[0]
            if not len(sel):
                continue
            start = (x[sel] >> (k + 1)) << (k + 1)
            below = np.searchsorted(keys, (start >> k) * self.width + threshold[sel] + 1, side="left") - start
            out[sel] += (1 << k) - below
        return out


def feedback_events(history: pd.DataFrame) -> dict[HistoryEvent, tuple[np.ndarray, np.ndarray]]:
    """Row index (ascending) and time (ms) of each feedback event found in the history.

    The one rule both executors read (the event stream, features/stream.py, is built from it): a row
    has an event when it says so (a declined bank outcome, a fraud label, or just a time for a refund
    or a cancellation) and its time column (`EVENT_TIME_COLUMNS`) holds the time. Without that time
    there is no event: defaults are the loader's to fill (training.history), never guessed here.
    """
    events: dict[HistoryEvent, tuple[np.ndarray, np.ndarray]] = {}
    for event, column in EVENT_TIME_COLUMNS.items():
        if column not in history:
            continue
        selected = history[column].notna().to_numpy()
        if event == "decline":
            outcome = history.get("bank_outcome", pd.Series(pd.NA, index=history.index))
            selected &= (outcome.astype("string") == "declined").fillna(False).to_numpy(dtype=bool)
        elif event == "fraud":
            if "label" not in history:
                continue  # a label time without labels (an unlabelled history) is no fraud event
            selected &= (pd.to_numeric(history["label"], errors="coerce") == 1).to_numpy()
        rows = np.nonzero(selected)[0]
        events[event] = (rows, timestamps_ms(history[column].iloc[rows]))
    return events


def _feature_events(history: pd.DataFrame) -> dict[FeatureEvent, tuple[np.ndarray, np.ndarray]]:
    """`feedback_events` as the feature state counts them (`FEATURE_EVENT`): once per payment, at the
    first time reported (a refunded and cancelled payment is one reversal, as online)."""
    parts: dict[FeatureEvent, list[tuple[np.ndarray, np.ndarray]]] = {}
    for event, found in feedback_events(history).items():
        parts.setdefault(FEATURE_EVENT[event], []).append(found)
    out: dict[FeatureEvent, tuple[np.ndarray, np.ndarray]] = {}
    for kind, pieces in parts.items():
        rows = np.concatenate([r for r, _ in pieces])
        times = np.concatenate([t for _, t in pieces])
        order = np.lexsort((times, rows))
        rows, times = rows[order], times[order]
        first = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, dtype=bool)
        out[kind] = (rows[first], times[first])
    return out


class OfflineFeatures:
    """Computes a spec's features over a whole history (see the module docstring)."""

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.plan: Plan = compile_plan(spec or load_spec())
        self.spec = self.plan.spec
        self.deriver = Deriver(self.plan)

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    def raw(
        self,
        history: pd.DataFrame,
        progress: Progress | None = None,
        entities: Collection[str] | None = None,
    ) -> np.ndarray:
        """Raw aggregates (rows in the history's order, which must be time-sorted).

        `entities` limits the work to those entity plans (the others' columns stay NaN): the Dask
        executor (features/offline_dask.py) computes each entity block on the rows of its keys only.
        """
        t = timestamps_ms(history["timestamp"])
        if len(t) > 1 and np.any(np.diff(t) < 0):
            raise ValueError(
                "history must be sorted by timestamp (load it with training.history.load_history)"
            )
        amount = amounts_milli(history["amount"])
        events = _feature_events(history)
        raw = np.full((len(history), len(self.plan.raw_names)), np.nan)
        for p in self.plan.entities:
            if entities is not None and p.entity not in entities:
                continue
            if progress:
                progress(p.entity)
            codes = _key_codes(history, self.spec.entities[p.entity])
            raw[:, self.plan.raw_index[raw_name(p.entity, "present")]] = (codes >= 0).astype(float)
            if not (codes >= 0).any():
                continue
            starts: Callable[[_Sorted, Window], np.ndarray] = functools.partial(exact_start, head=p.head)
            if p.within is not None:
                # kept in the enclosing entity's head: keyed as online, by the extra field's fingerprint
                outer = _key_codes(history, self.spec.entities[p.within])
                codes = _pair_codes(outer, _value_codes(history, self.spec.entities[p.entity][-1]))
                starts = _FoldedStarts(self._sort(outer, t, amount), p.head).start
            s = self._sort(codes, t, amount)
            for name, values in self._entity(p, s, history, codes, events, t, starts):
                raw[s.rows, self.plan.raw_index[name]] = values
        return raw

    def transform(self, history: pd.DataFrame, progress: Progress | None = None) -> pd.DataFrame:
        """Features for every payment: a frame with `transaction_id` and one column per feature."""
        return self.derive(self.raw(history, progress), history)

    def derive(self, raw: np.ndarray, history: pd.DataFrame) -> pd.DataFrame:
        """`transform`'s result from the raw aggregates of `history`'s rows (one row's features read
        only that row: the Dask executor derives partition by partition)."""
        columns = {
            name: _objects(history[name]) if name in history else np.full(len(history), None, dtype=object)
            for name in PAYMENT_FIELDS
        }
        columns["amount"] = history["amount"].to_numpy(dtype=float)
        values = self.deriver.transform(raw, columns, timestamps_ms(history["timestamp"]))
        out = pd.DataFrame(values, columns=self.feature_names, index=history.index)
        out.insert(0, "transaction_id", history["transaction_id"].to_numpy())
        return out

    @staticmethod
    def _sort(codes: np.ndarray, t: np.ndarray, amount: np.ndarray) -> _Sorted:
        rows = np.nonzero(codes >= 0)[0]
        rows = rows[np.argsort(codes[rows], kind="stable")]  # stable: stream order within an entity
        code = codes[rows]
        rank = np.arange(len(rows))
        first = np.r_[True, code[1:] != code[:-1]]
        group_start = np.maximum.accumulate(np.where(first, rank, 0))
        ts = t[rows]
        # room below each entity's first event for the longest window, so keys never reach the previous one
        origin = int(ts.min()) - 400 * 86_400_000
        span = int(ts.max()) - origin + 1
        return _Sorted(rows, code, ts, amount[rows], rank, group_start, span, origin)

    def _entity(
        self,
        p: EntityPlan,
        s: _Sorted,
        history: pd.DataFrame,
        codes: np.ndarray,
        events: dict[FeatureEvent, tuple[np.ndarray, np.ndarray]],
        t_all: np.ndarray,
        starts: Callable[[_Sorted, Window], np.ndarray],
    ) -> Iterator[tuple[str, np.ndarray]]:
        e = p.entity
        cumsum = np.r_[0, np.cumsum(s.amount)]
        needs_max = bool(p.exact) or any(g.windows for g in p.buckets.values())
        range_max = _RangeMax(s.amount) if needs_max else None

        def window(label: str, lo: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
            yield raw_name(e, "count", label), (s.rank - lo).astype(float)
            yield raw_name(e, "sum", label), (cumsum[s.rank] - cumsum[lo]).astype(float)
            assert range_max is not None
            yield raw_name(e, "max", label), range_max.query(lo, s.rank).astype(float)

        for w in p.exact:
            yield from window(w.label, starts(s, w))
        if p.spread_window is not None:
            yield raw_name(e, "m2", p.spread_window.label), self._spread(s, p.spread_window, p.head)
        for group in p.buckets.values():
            for w in group.windows:
                yield from window(w.label, s.start(_bucket_lower(w, s.ts)))
            for w in group.fraud_windows:
                lower = _bucket_lower(w, s.ts)
                # a lagged window ends lag before the current bucket: its payments are all earlier
                upper = s.start(_bucket_lower(w, s.ts) + w.ms) if w.lag_ms else s.rank
                yield raw_name(e, "rate_count", w.label), (upper - s.start(lower)).astype(float)
                frauds = _known_frauds(s, codes, events.get("fraud"), t_all, w)
                yield raw_name(e, "rate_frauds", w.label), frauds
        cap = self.spec.distinct_limit
        for d in p.distinct.values():
            # Online keeps the `cap` values seen most recently (score.lua, op D). The values in
            # [lo, i) are the j there whose next occurrence is at i or later; a count saturates at
            # cap; a value is still held when fewer than cap others were seen since its last time.
            values = _value_codes(history.iloc[s.rows], d.field)
            prev, nxt = _neighbours(s, values)
            ranges = _DistinctInRanges(np.where(values >= 0, nxt, -1))
            held = (prev >= 0) & (ranges.count(prev + 1, s.rank) < cap)
            recent = held & (s.ts[np.maximum(prev, 0)] >= s.ts - d.lookback_ms)
            novel = np.where(recent, 0.0, 1.0)
            yield raw_name(e, "novel", d.field), np.where((values < 0) | (d.lookback_ms == 0), -1.0, novel)
            for w in d.windows:
                distinct = ranges.count(s.start(s.ts - w.ms), s.rank)
                yield raw_name(e, "distinct", d.field, w.label), np.minimum(distinct, cap).astype(float)
        for event, windows in p.feedback.items():
            for w in windows:
                # online keeps the times of the last `feedback_limit` events of a kind
                found = _count_events(s, codes, events.get(event), s.ts - w.ms)
                yield raw_name(e, "feedback", event, w.label), np.minimum(found, self.spec.feedback_limit)
        if p.profile_ttl_ms is not None:
            seen = s.rank > s.group_start
            yield raw_name(e, "first_ts"), np.where(seen, s.ts[s.group_start], -1).astype(float)
            yield raw_name(e, "last_ts"), np.where(seen, s.ts[np.maximum(s.rank - 1, 0)], -1).astype(float)

    @staticmethod
    def _spread(s: _Sorted, w: Window, head: int) -> np.ndarray:
        """Sum of squared deviations from the window mean, over the payments the window holds
        (`exact_start`), oldest first."""
        lo = exact_start(s, w, head)
        count = s.rank - lo
        cumsum = np.r_[0, np.cumsum(s.amount)]
        mean = np.where(count > 0, (cumsum[s.rank] - cumsum[lo]) / np.maximum(count, 1), 0.0)
        m2 = np.zeros(len(lo))
        active = np.nonzero(count > 0)[0]
        step = 0
        while len(active):
            j = lo[active] + step
            m2[active] += (s.amount[j] - mean[active]) ** 2
            step += 1
            active = active[count[active] > step]
        return m2


def exact_start(s: _Sorted, w: Window, head: int) -> np.ndarray:
    """First sorted position of the payments an exact window holds, for each element i.

    Online (score.lua, op E) an entity keeps its last `head` payments one by one and the older ones
    in each window's tail buckets (granularity `w.tail_ms`). With `lo` the first payment in the
    window: while the window holds fewer than `head` payments (lo > i - head) it is exact, [lo, i);
    otherwise it is the last `head` payments and every older one in the window's whole tail buckets
    (the current bucket and the w / tail - 1 before it, from `lo_b` on): [min(lo_b, i - head), i).
    """
    lo = s.start(s.ts - w.ms)
    g = w.tail_ms
    assert g is not None and head > 0, "an exact window has a tail granularity and a head"
    tiled = lo <= s.rank - head
    if not tiled.any():
        return lo
    lo_b = s.start((s.ts // g - w.ms // g + 1) * g)
    return np.where(tiled, np.minimum(lo_b, s.rank - head), lo)


class _FoldedStarts:
    """Exact windows of an entity kept within another (card x merchant in the card's head: score.lua,
    op E): the entity's payments among the enclosing entity's with rank in [max(lo, i - head), i),
    `lo` its first payment in the window: exact while the enclosing entity holds fewer than `head`
    payments in the window, else among its last `head`."""

    def __init__(self, outer: _Sorted, head: int) -> None:
        self.outer, self.head = outer, head
        self.rank = np.zeros(int(outer.rows.max()) + 1, dtype=np.int64)
        self.rank[outer.rows] = outer.rank - outer.group_start  # rank among the enclosing entity's

    def start(self, s: _Sorted, w: Window) -> np.ndarray:
        """First sorted position (in `s`, the inner entity's order) of the payments window `w` holds."""
        o = self.outer
        own = o.rank - o.group_start
        lower = np.zeros_like(self.rank)
        lower[o.rows] = np.maximum(o.start(o.ts - w.ms) - o.group_start, own - self.head)
        # within an inner entity, stream order is the enclosing entity's rank order
        width = len(self.rank) + 1
        keys = s.code * width + self.rank[s.rows]
        return np.searchsorted(keys, s.code * width + lower[s.rows], side="left")


def _pair_codes(outer: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Integer code of each (outer code, value code) pair, -1 where either is missing."""
    ok = (outer >= 0) & (value >= 0)
    codes, _ = pd.factorize(outer * (int(value.max(initial=0)) + 1) + value)
    return np.where(ok, codes, -1).astype(np.int64)


def _bucket_lower(w: Window, ts: np.ndarray) -> np.ndarray:
    """Start of the oldest bucket of a bucketed (possibly lagged) window, for payments at `ts`."""
    g = w.granularity_ms
    assert g is not None
    return (ts // g - (w.ms + w.lag_ms) // g + 1) * g


def _neighbours(s: _Sorted, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted position of the previous and next payment of the same entity with the same value (-1/n)."""
    n = len(values)
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, n, dtype=np.int64)
    ok = np.nonzero(values >= 0)[0]
    order = ok[np.lexsort((s.rank[ok], values[ok], s.code[ok]))]
    same = (s.code[order][1:] == s.code[order][:-1]) & (values[order][1:] == values[order][:-1])
    prev[order[1:][same]] = order[:-1][same]
    nxt[order[:-1][same]] = order[1:][same]
    return prev, nxt


def _count_events(
    s: _Sorted, codes: np.ndarray, found: tuple[np.ndarray, np.ndarray] | None, lower: np.ndarray
) -> np.ndarray:
    """Feedback events of the entity with time in [lower, t) for each sorted element."""
    if found is None or len(found[0]) == 0:
        return np.zeros(len(s.rows))
    rows, times = found
    ev_code = codes[rows]
    # events after the last payment can never count, and would spill past the entity's key range
    keep = (ev_code >= 0) & (times >= s.origin) & (times < s.origin + s.span)
    keys = np.sort(s.ckey(ev_code[keep], times[keep]))
    hi = np.searchsorted(keys, s.ckey(s.code, s.ts), side="left")
    lo = np.searchsorted(keys, s.ckey(s.code, np.maximum(lower, s.origin)), side="left")
    return (hi - lo).astype(float)


def _known_frauds(
    s: _Sorted,
    codes: np.ndarray,
    found: tuple[np.ndarray, np.ndarray] | None,
    paid: np.ndarray,
    w: Window,
) -> np.ndarray:
    """Frauds among the entity's payments in bucketed window `w` whose label came before each payment.

    Online, a fraud label adds one to the bucket of the *payment's* time (while that bucket is still
    kept), and a later payment counts the buckets of its window. So fraud f counts for the entity's
    payments at times t with t > label_time and bucket(paid) + lag <= bucket(t) < bucket(paid) + lag +
    w/g (lag in buckets, 0 for a window that ends now): an interval [start_f, end_f) of payment time,
    which turns the count into two sorted look-ups.
    """
    if found is None or len(found[0]) == 0:
        return np.zeros(len(s.rows))
    g = w.granularity_ms
    assert g is not None
    rows, label_ms = found
    code = codes[rows]
    bucket = paid[rows] // g
    lag = w.lag_ms // g
    start = np.maximum(label_ms + 1, (bucket + lag) * g)  # a label counts for payments strictly after it
    end = (bucket + lag + w.ms // g) * g
    keep = (code >= 0) & (start < end)
    # past the entity's last payment: a key no payment of this entity (or the next) can reach
    limit = s.origin + s.span
    starts = np.sort(s.ckey(code[keep], np.minimum(start[keep], limit)))
    ends = np.sort(s.ckey(code[keep], np.minimum(end[keep], limit)))
    here = s.ckey(s.code, s.ts)
    begun = np.searchsorted(starts, here, side="right")
    over = np.searchsorted(ends, here, side="right")
    return (begun - over).astype(float)


def compute_features(
    history: pd.DataFrame, spec: FeatureSpec | None = None, progress: Progress | None = None
) -> pd.DataFrame:
    """Point-in-time features of every payment in a time-sorted history."""
    return OfflineFeatures(spec).transform(history, progress)
