"""Each part's running residual baseline: what its last few shots said the setting response misses.

A response fitted across a maker's parts and settings is never exact for one part at one setting
(a new recipe, a mould that runs a little hot, a setting outside the history): its residuals
there are offset, shot after shot, by the same amount. Judging those offsets as anomalies is how
a pooled model alarms on every shot of a setting it has not seen. A defect is a shot that differs
from the shots around it, so the residual is also judged against a running mean of the part's
earlier residuals (causal: a shot never sees itself or later shots). Each shot pulls the mean
towards itself by a bounded step, so one wild shot moves it by at most ``a * clip`` and the next
shots are still judged against their neighbours, while a lasting offset is followed within a few
half-lives (the scorer keeps the residual itself as evidence too: see ``field_evidence`` in
:mod:`model_store.serving.conditional`).

A lasting offset larger than the clip takes ``offset / (a * clip)`` shots to follow that way (a new
mould ~200 spreads from the maker's response: hundreds of shots, each an alarm). So a level shift
is also recognised: ``shift_run`` shots in a row beyond the clip on the same side, each within the
clip of the shot before it (a step to a new level, not a string of wild shots), move the mean all
the way to the last of them; the shots of the shift before that are judged as news.

Pure: residuals, keys and an order in; baselines and the end state out. The state (part key ->
last mean; with ``shift_run``, the mean, the signed length of the run beyond the clip and the last
shot, concatenated) is what the stream carries between batches and what a store ships from its
history.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np

START_LIMIT = 50.0  # residual spreads: where a new part's mean may start (a hostile first shot
# must not leave a baseline that takes thousands of shots to walk back)


def smoothing(halflife: float) -> float:
    """The weight of the newest shot in a mean whose weights halve every ``halflife`` shots."""
    if not halflife > 0:
        raise ValueError(f"baseline half-life must be > 0 shots, got {halflife!r}")
    return float(1.0 - 0.5 ** (1.0 / halflife))


def running_baseline(
    z: np.ndarray,
    keys: np.ndarray,
    order: np.ndarray,
    halflife: float,
    clip: float,
    state: Mapping[str, np.ndarray],
    follow: np.ndarray | None = None,
    shift_run: int = 0,
    first_reach: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per row: its part's running mean of the earlier residuals, weights halving every
    ``halflife`` shots, starting from ``state``.

    Each shot moves the mean towards itself by ``a`` times its distance from the mean, that
    distance clipped to ``clip`` (a robust mean: one wild shot moves it by at most ``a * clip``, a
    lasting offset is followed at up to that pace). A part not in ``state`` has no baseline for
    its first shot (judged on ``z`` alone); its mean then starts at that shot (held within
    ``START_LIMIT``). A missing residual (NaN) leaves the mean where it was. ``order`` is the
    rows' time order (a permutation of ``range(len(z))``). ``follow`` (per row, optional): after
    such a shot is judged, each field where it lies more than ``clip`` from its part's mean moves
    the mean all the way to it (other fields take the usual step; a missing field stays): a
    lasting offset of any size is followed from its first shot on, and the shots after it are
    judged against it. ``shift_run`` (0: off): a level shift of that many shots moves the mean
    all the way (see the module). ``first_reach`` (rows, fields; optional): for the first shot
    of a part not in ``state``, how far from 0 its part may sit; its baseline is the point of
    ``-reach..reach`` nearest to it (the shot judged by how far beyond the reach it lies) instead
    of 0. Returns the
    baselines (rows, fields) and the end state of every part seen here (``state``'s other parts
    are not repeated): the mean alone without ``shift_run``, else mean, run and last shot
    (``3 * fields``); a state of either length is read.
    """
    z = np.asarray(z, dtype=float)
    rows, fields = z.shape
    baseline = np.zeros((rows, fields))
    if rows == 0:
        return baseline, {}
    a = smoothing(halflife)
    ordered_keys = keys[order]
    sort = np.argsort(ordered_keys, kind="stable")  # each part's rows together, in time order
    sorted_keys = ordered_keys[sort]
    by_time = np.asarray(order)[sort]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, rows])
    longest_first = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[longest_first], lengths[longest_first]
    names = [str(sorted_keys[i]) for i in starts.tolist()]
    parts = len(names)
    # Step r holds shot r of every part long enough (parts longest first: a prefix of them).
    # Rows are laid out step by step, so each step reads and writes one contiguous slice.
    active = parts - np.searchsorted(lengths[::-1], np.arange(int(lengths[0])), side="right")
    offsets = np.r_[0, np.cumsum(active)]
    step_of = np.repeat(np.arange(len(active)), active)
    part_of = np.arange(rows) - offsets[step_of]
    layout = by_time[starts[part_of] + step_of]  # row of the table at each laid-out position
    shots = z[layout]
    jump = None if follow is None or not np.any(follow) else np.asarray(follow, dtype=bool)[layout]
    judged = np.zeros((rows, fields))
    mean = np.zeros((parts, fields))
    run = np.zeros((parts, fields))  # signed: shots in a row beyond +clip (> 0) or -clip (< 0)
    last = np.full((parts, fields), np.nan)  # each part's previous shot
    started = np.zeros(parts, dtype=bool)
    for g, name in enumerate(names):
        prior = state.get(name)
        if prior is not None:
            prior = np.asarray(prior, dtype=float)
            mean[g] = prior[:fields]
            if len(prior) == 3 * fields:
                run[g], last[g] = prior[fields : 2 * fields], prior[2 * fields :]
            started[g] = True
    # The first shot of every part: a part without a state has no baseline, its mean starts there.
    x = shots[: offsets[1]]
    unseen = 0.0
    if first_reach is not None:
        reach = np.abs(np.asarray(first_reach, dtype=float)[layout[: offsets[1]]])
        unseen = np.nan_to_num(np.clip(x, -reach, reach), nan=0.0)
    judged[: offsets[1]] = np.where(started[:, None], mean, unseen)
    step = np.nan_to_num(np.clip(x - mean, -clip, clip), nan=0.0)
    first = np.nan_to_num(np.clip(x, -START_LIMIT, START_LIMIT), nan=0.0)
    if jump is not None:
        far: np.ndarray | None = _far(x, np.where(started[:, None], mean, first), clip, jump[: offsets[1]])
    shifted = _level_shift(x, mean, run[: offsets[1]], last[: offsets[1]], clip, shift_run, started)
    mean = np.where(started[:, None], mean + a * step, first)
    if jump is not None:
        mean[far] = x[far]
    if shifted is not None:
        mean[shifted] = x[shifted]
    for r in range(1, len(active)):
        m = mean[: active[r]]  # a view: the update below is in place
        judged[offsets[r] : offsets[r + 1]] = m
        step = shots[offsets[r] : offsets[r + 1]] - m
        follow_here = jump[offsets[r] : offsets[r + 1]] if jump is not None else None
        far = _far(shots[offsets[r] : offsets[r + 1]], m, clip, follow_here) if follow_here is not None and follow_here.any() else None
        shifted = _level_shift(shots[offsets[r] : offsets[r + 1]], m, run[: active[r]], last[: active[r]], clip, shift_run)
        np.clip(step, -clip, clip, out=step)
        step[np.isnan(step)] = 0.0  # a missing residual leaves the mean where it was
        step *= a
        m += step
        if far is not None and far.any():
            m[far] = shots[offsets[r] : offsets[r + 1]][far]
        if shifted is not None:
            m[shifted] = shots[offsets[r] : offsets[r + 1]][shifted]
    baseline[layout] = judged
    if shift_run > 0:
        return baseline, {name: np.concatenate([mean[g], run[g], last[g]]) for g, name in enumerate(names)}
    return baseline, {name: mean[g].copy() for g, name in enumerate(names)}


def _level_shift(shots: np.ndarray, mean: np.ndarray, run: np.ndarray, last: np.ndarray, clip: float, shift_run: int,
                 started: np.ndarray | None = None) -> np.ndarray | None:
    """(rows, fields): the fields where these shots complete a level shift (see the module), the
    runs and last shots updated in place (their runs restart); None when the rule is off.
    ``started`` (first shots only): parts without a mean yet start their run here at 0."""
    if shift_run <= 0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # inf or 1e308 readings: no warning, never steady
        distance = shots - mean
        above, below = distance > clip, distance < -clip
        steady = np.abs(shots - last) <= clip  # NaN (no previous shot): not steady
    measured = ~np.isnan(shots)
    continued = np.where(above, np.where(steady & (run > 0), run + 1, 1.0),
                         np.where(below, np.where(steady & (run < 0), run - 1, -1.0), 0.0))
    if started is not None:
        continued[~started] = 0.0  # a part's first shot: its mean starts there
    run[:] = np.where(measured, continued, run)  # a missing value leaves the run and the last shot as they were
    last[:] = np.where(measured, shots, last)
    shifted = np.abs(run) >= shift_run
    run[shifted] = 0.0
    return cast("np.ndarray", shifted)


def _far(shots: np.ndarray, mean: np.ndarray, clip: float, rows: np.ndarray) -> np.ndarray:
    """(rows, fields): the fields of ``rows`` whose shot lies more than ``clip`` from the mean
    (those a followed shot moves the mean all the way to; NaN never)."""
    with np.errstate(invalid="ignore"):
        return cast("np.ndarray", rows[:, None] & (np.abs(shots - mean) > clip))


__all__ = ["running_baseline", "smoothing", "START_LIMIT"]
