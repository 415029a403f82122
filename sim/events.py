"""The numba event loop of the asynchronous swarm: one binary heap of wake-ups,
message arrivals, failures and restarts over the whole grid (`AsyncSwarm`). A
cell's behaviour is `sim.rules`; this module only orders the events (equal times
run in the order they were scheduled; run(until=T) runs the events with time < T).
"""
from __future__ import annotations

from collections.abc import Callable

import numba as nb
import numpy as np

from .cell_backends import CellBackend, FloatBackend
from .jit import compiled_variant
from .model import ALPHA, CHANNELS, PERCEPTION
from .rules import (CFG_LINKS, EV_FAIL, EV_MSG, EV_RESTART, EV_WAKE, LAT_CONSTANT, LINKS_RELAY, SLOT_E,
                    SLOT_W, STAT_NAMES, ST_DELIVERED, ST_DORMANT, ST_DROPPED, ST_FAILURES, ST_LOST,
                    ST_RESTARTS, ST_SENT, ST_STALENESS_SUM, ST_UPDATES, ST_WAKEUPS, AsyncConfig, alive_value,
                    catch_up, cell_wakeup, fill_inbox, mask_cells, message_fate, neighbour_table,
                    relay_slots, sends_on, time_to_failure, time_to_repair, wake_interval)
from .spec import Params

# meta slots
M_HEAP, M_SEQ, M_FREE, M_STATUS = range(4)
STATUS_DONE, STATUS_HEAP_FULL, STATUS_POOL_FULL = 0, 1, 2


# ---------------------------------------------------------------- heap of (time, seq) events
# Three parallel arrays: time, insertion sequence (ties run in scheduling order)
# and a packed event word: kind (2 bits) | a (30 bits) | b (32 bits).
_SHIFT_A = np.int64(32)
_SHIFT_K = np.int64(62)
_MASK_A = np.int64((1 << 30) - 1)
_MASK_B = np.int64((1 << 32) - 1)


@nb.njit(cache=True, inline="always")
def _pack(kind, a, b):
    return (np.int64(kind) << _SHIFT_K) | (np.int64(a) << _SHIFT_A) | (np.int64(b) & _MASK_B)


@nb.njit(cache=True)
def _push(ht, hs, hp, meta, t, kind, a, b):
    """Sift a hole up from the end; the caller has checked there is room."""
    n = meta[M_HEAP]
    seq = meta[M_SEQ]
    meta[M_SEQ] = seq + 1
    meta[M_HEAP] = n + 1
    word = _pack(kind, a, b)
    while n > 0:
        parent = (n - 1) >> 1
        tp = ht[parent]
        if t < tp or (t == tp and seq < hs[parent]):
            ht[n] = tp
            hs[n] = hs[parent]
            hp[n] = hp[parent]
            n = parent
        else:
            break
    ht[n] = t
    hs[n] = seq
    hp[n] = word


@nb.njit(cache=True)
def _pop(ht, hs, hp, meta):
    """Remove the root (the caller has read it): sift the last entry down from the top."""
    n = meta[M_HEAP] - 1
    meta[M_HEAP] = n
    if n == 0:
        return
    t = ht[n]
    seq = hs[n]
    word = hp[n]
    i = 0
    while True:
        m = 2 * i + 1
        if m >= n:
            break
        r = m + 1
        if r < n and (ht[r] < ht[m] or (ht[r] == ht[m] and hs[r] < hs[m])):
            m = r
        if ht[m] < t or (ht[m] == t and hs[m] < seq):
            ht[i] = ht[m]
            hs[i] = hs[m]
            hp[i] = hp[m]
            i = m
        else:
            break
    ht[i] = t
    hs[i] = seq
    hp[i] = word


@nb.njit(cache=True)
def _run(until, seed, cfg, state, inbox, nbr, back, w1, b1, w2, b2, kxy,
         ht, hs, hp, meta, gen, failed, asleep, sleep_t, wake_k, sends, link_bad, fail_j,
         pool, pool_ref, pool_free, pool_time, stats, now):
    """Process events with time < until. Stops early (status != DONE) when the
    heap or payload pool could overflow; the caller grows them and calls again.
    A payload pool[k] holds what one send carries: the sender's state in row 0 and,
    with relay links, its inbox slots W and E at send time in rows 1 and 2.

    A dormant cell is not rescheduled: it sleeps until a message with a living
    alpha reaches it, then resumes its own wake-up sequence (`catch_up`)."""
    nbhd = np.zeros((3, 3, CHANNELS), np.float32)
    p = np.empty(PERCEPTION, np.float32)
    dx = np.empty(CHANNELS, np.float32)
    # Deliveries below are written out in place: a helper taking the arrays cost
    # 3x in reference counting per call.
    instant = cfg[7] == 0.0 and int(cfg[4]) == LAT_CONSTANT and cfg[5] <= 0.0   # no draws needed
    links = int(cfg[CFG_LINKS])
    relay = links == LINKS_RELAY
    meta[M_STATUS] = STATUS_DONE
    while meta[M_HEAP] > 0 and ht[0] < until:
        if ht.shape[0] - meta[M_HEAP] < 10:
            meta[M_STATUS] = STATUS_HEAP_FULL
            return now
        if meta[M_FREE] < 1:
            meta[M_STATUS] = STATUS_POOL_FULL
            return now
        t = ht[0]
        word = hp[0]
        _pop(ht, hs, hp, meta)
        kind = (word >> _SHIFT_K) & 3   # arithmetic shift: mask off the sign
        a = (word >> _SHIFT_A) & _MASK_A
        b = word & _MASK_B
        now = t
        if kind == EV_WAKE:
            c = a
            if b != (gen[c] & _MASK_B):
                continue
            stats[ST_WAKEUPS] += 1
            r = cell_wakeup(c, state, inbox, w1, b1, w2, b2, kxy, nbhd, p, dx)
            if r == 0:
                stats[ST_DORMANT] += 1
                asleep[c] = True
                sleep_t[c] = t
                continue
            if r == 2:
                stats[ST_UPDATES] += 1
            rnd = sends[c]
            sends[c] += 1
            slot_payload = -1
            for s in range(8):
                d = nbr[c, s]
                if d < 0 or not sends_on(links, s):
                    continue
                stats[ST_SENT] += 1
                if instant:
                    lost, lat = False, 0.0
                else:
                    lost, lat = message_fate(seed, cfg, c, rnd * 8 + s, link_bad)
                if lost:
                    stats[ST_LOST] += 1
                    continue
                if lat <= 0.0:
                    if failed[d]:
                        stats[ST_DROPPED] += 1
                        continue
                    slot = back[c, s]
                    for ch in range(CHANNELS):
                        inbox[d, slot, ch] = state[c, ch]
                    living = alive_value(state[c, ALPHA])
                    qw, qe = relay_slots(links, slot)
                    if qw >= 0:
                        for ch in range(CHANNELS):
                            inbox[d, qw, ch] = inbox[c, SLOT_W, ch]
                            inbox[d, qe, ch] = inbox[c, SLOT_E, ch]
                        living = living or alive_value(inbox[c, SLOT_W, ALPHA]) \
                            or alive_value(inbox[c, SLOT_E, ALPHA])
                    stats[ST_DELIVERED] += 1
                    if asleep[d] and living:
                        asleep[d] = False
                        _push(ht, hs, hp, meta, catch_up(seed, cfg, d, t, wake_k, sleep_t, stats),
                              EV_WAKE, d, gen[d])
                    continue
                if slot_payload < 0:
                    meta[M_FREE] -= 1
                    slot_payload = pool_free[meta[M_FREE]]
                    for ch in range(CHANNELS):
                        pool[slot_payload, 0, ch] = state[c, ch]
                    if relay:       # captured now: the relay's knowledge at send time
                        for ch in range(CHANNELS):
                            pool[slot_payload, 1, ch] = inbox[c, SLOT_W, ch]
                            pool[slot_payload, 2, ch] = inbox[c, SLOT_E, ch]
                    pool_ref[slot_payload] = 0
                    pool_time[slot_payload] = t
                pool_ref[slot_payload] += 1
                _push(ht, hs, hp, meta, t + lat, EV_MSG, d * 8 + back[c, s], slot_payload)
            k = wake_k[c]
            wake_k[c] = k + 1
            _push(ht, hs, hp, meta, t + wake_interval(seed, cfg, c, k), EV_WAKE, c, gen[c])
        elif kind == EV_MSG:
            d = a // 8
            s = a % 8
            if failed[d]:
                stats[ST_DROPPED] += 1
            else:
                for ch in range(CHANNELS):
                    inbox[d, s, ch] = pool[b, 0, ch]
                living = alive_value(pool[b, 0, ALPHA])
                qw, qe = relay_slots(links, s)
                if qw >= 0:
                    for ch in range(CHANNELS):
                        inbox[d, qw, ch] = pool[b, 1, ch]
                        inbox[d, qe, ch] = pool[b, 2, ch]
                    living = living or alive_value(pool[b, 1, ALPHA]) or alive_value(pool[b, 2, ALPHA])
                stats[ST_DELIVERED] += 1
                stats[ST_STALENESS_SUM] += np.int64((t - pool_time[b]) * 1e6)
                if asleep[d] and living:
                    asleep[d] = False
                    _push(ht, hs, hp, meta, catch_up(seed, cfg, d, t, wake_k, sleep_t, stats),
                          EV_WAKE, d, gen[d])
            pool_ref[b] -= 1
            if pool_ref[b] == 0:
                pool_free[meta[M_FREE]] = b
                meta[M_FREE] += 1
        elif kind == EV_FAIL:
            c = a
            if asleep[c]:
                asleep[c] = False
                catch_up(seed, cfg, c, t, wake_k, sleep_t, stats)   # the wake-up a failure cancels
            failed[c] = True
            gen[c] += 1
            stats[ST_FAILURES] += 1
            _push(ht, hs, hp, meta, t + time_to_repair(seed, cfg, c, fail_j[c]), EV_RESTART, c, 0)
        else:   # EV_RESTART
            c = a
            failed[c] = False
            stats[ST_RESTARTS] += 1
            for ch in range(CHANNELS):
                state[c, ch] = 0.0
            for s in range(8):
                for ch in range(CHANNELS):
                    inbox[c, s, ch] = 0.0
            fail_j[c] += 1
            k = wake_k[c]
            wake_k[c] = k + 1
            _push(ht, hs, hp, meta, t + wake_interval(seed, cfg, c, k), EV_WAKE, c, gen[c])
            _push(ht, hs, hp, meta, t + time_to_failure(seed, cfg, c, fail_j[c]), EV_FAIL, c, 0)
    return until if meta[M_HEAP] == 0 or ht[0] >= until else now


@nb.njit(cache=True)
def _schedule_start(seed, cfg, n, ht, hs, hp, meta, gen, wake_k):
    for c in range(n):
        wake_k[c] = 1
        _push(ht, hs, hp, meta, wake_interval(seed, cfg, c, 0), EV_WAKE, c, gen[c])
    if cfg[8] > 0.0:
        for c in range(n):
            _push(ht, hs, hp, meta, time_to_failure(seed, cfg, c, 0), EV_FAIL, c, 0)


_LOOPS: dict = {}


def _loop_for(wakeup: Callable) -> Callable:
    """The event loop around a cell's numba wake-up (`CellBackend.compiled`): `_run`
    itself for the float model's, else `_run` compiled again with `wakeup` in its
    place (once per wake-up function, cached on disk under its module's and its name:
    the cache knows a compiled loop by name alone)."""
    if wakeup is cell_wakeup:
        return _run
    if wakeup not in _LOOPS:
        name = f"_{wakeup.__module__}_{wakeup.__name__}".replace(".", "_")
        _LOOPS[wakeup] = compiled_variant(_run.py_func, name, False, replace={"cell_wakeup": wakeup})
    return _LOOPS[wakeup]


class AsyncSwarm:
    """Event-driven asynchronous swarm on an H x W grid (numba reference). `cell`
    computes the cells (default: the float model of `params`); it must be numba code
    (`CellBackend.compiled`), as the fixed-point golden model is."""

    def __init__(self, state: np.ndarray, params: Params, seed: int = 0,
                 config: AsyncConfig | None = None, cell: CellBackend | None = None):
        x = np.asarray(state, np.float32)
        if x.ndim != 3 or x.shape[-1] != CHANNELS:
            raise ValueError(f"state must be (H, W, {CHANNELS}), got {x.shape}")
        self.height, self.width = x.shape[:2]
        n = self.height * self.width
        self.n = n
        self.params = params
        self.cell = FloatBackend(params) if cell is None else cell
        compiled = self.cell.compiled()
        if compiled is None:
            raise ValueError(f"the {self.cell.name} cell backend is not numba code; run it on the SimPy swarm")
        self._loop = _loop_for(compiled[0])
        self.seed = int(seed)
        self.config = (config or AsyncConfig()).validate()
        self.cfg = self.config.asarray()
        self.state = np.ascontiguousarray(x.reshape(n, CHANNELS)).copy()
        self.inbox = np.zeros((n, 8, CHANNELS), np.float32)
        self.nbr, self.back = neighbour_table(self.height, self.width)
        fill_inbox(self.state, self.nbr, self.back, self.inbox)
        if n * 8 > (1 << 30):
            raise ValueError("grid too large for the event encoding (at most 2**27 cells)")
        cap = 4 * n + 64
        self.ht = np.zeros(cap, np.float64)
        self.hs = np.zeros(cap, np.int64)
        self.hp = np.zeros(cap, np.int64)
        self.meta = np.zeros(4, np.int64)
        self.gen = np.zeros(n, np.int64)
        self.failed = np.zeros(n, np.bool_)
        self.asleep = np.zeros(n, np.bool_)
        self.sleep_t = np.zeros(n, np.float64)
        self.wake_k = np.zeros(n, np.int64)
        self.sends = np.zeros(n, np.int64)
        self.link_bad = np.zeros(n * 8, np.bool_)   # Gilbert-Elliott state of each link
        self.fail_j = np.zeros(n, np.int64)
        pool_cap = n + 16
        rows = 3 if self.config.links == LINKS_RELAY else 1     # state (+ relayed W, E)
        self.pool = np.zeros((pool_cap, rows, CHANNELS), np.float32)
        self.pool_ref = np.zeros(pool_cap, np.int64)
        self.pool_time = np.zeros(pool_cap, np.float64)
        self.pool_free = np.arange(pool_cap, dtype=np.int64)
        self.meta[M_FREE] = pool_cap
        self.stats = np.zeros(10, np.int64)
        self.now = 0.0
        _schedule_start(self.seed, self.cfg, n, self.ht, self.hs, self.hp, self.meta, self.gen,
                        self.wake_k)

    def _grow_heap(self) -> None:
        for name in ("ht", "hs", "hp"):
            a = getattr(self, name)
            setattr(self, name, np.concatenate([a, np.zeros_like(a)]))

    def _grow_pool(self) -> None:
        old = self.pool.shape[0]
        self.pool = np.concatenate([self.pool, np.zeros_like(self.pool)])
        self.pool_ref = np.concatenate([self.pool_ref, np.zeros_like(self.pool_ref)])
        self.pool_time = np.concatenate([self.pool_time, np.zeros_like(self.pool_time)])
        nfree = int(self.meta[M_FREE])
        free = np.concatenate([self.pool_free[:nfree], np.arange(old, 2 * old, dtype=np.int64)])
        self.pool_free = np.concatenate([free, np.zeros(2 * old - free.size, np.int64)])
        self.meta[M_FREE] = free.size

    def run(self, until: float) -> np.ndarray:
        """Advance to time `until` (events with time < until); returns the (H, W, 16) state."""
        w1, b1, w2, b2, kxy = self.cell.compiled()[1]
        if until <= self.now:     # nothing to run; time never goes back
            return self.grid
        while True:
            self.now = self._loop(float(until), self.seed, self.cfg, self.state, self.inbox, self.nbr,
                            self.back, w1, b1, w2, b2, kxy, self.ht, self.hs, self.hp, self.meta,
                            self.gen, self.failed, self.asleep, self.sleep_t, self.wake_k, self.sends,
                            self.link_bad, self.fail_j, self.pool, self.pool_ref, self.pool_free, self.pool_time,
                            self.stats, self.now)
            status = self.meta[M_STATUS]
            if status == STATUS_DONE:
                return self.grid
            if status == STATUS_HEAP_FULL:
                self._grow_heap()
            else:
                self._grow_pool()

    @property
    def grid(self) -> np.ndarray:
        return self.state.reshape(self.height, self.width, CHANNELS)

    def damage(self, mask: np.ndarray) -> None:
        """Replace the cells where mask (H, W) is true by fresh ones: state and inbox zero."""
        idx = mask_cells(mask, self.height, self.width)
        self.state[idx] = 0.0
        self.inbox[idx] = 0.0

    def set_params(self, params: Params) -> None:
        """New model or rotation for every cell from now on."""
        self.params = params
        self.cell.set_params(params)

    def metrics(self) -> dict[str, float]:
        m = {name: int(self.stats[i]) for i, name in enumerate(STAT_NAMES)}
        d = self.stats[ST_DELIVERED]
        m["mean_message_delay"] = float(self.stats[ST_STALENESS_SUM]) / 1e6 / d if d else 0.0
        m["cells_failed_now"] = int(self.failed.sum())
        return m
