"""numba reference of the asynchronous swarm: an event-driven loop over a
binary heap of wake-ups, message arrivals, failures and restarts.

Semantics (DESIGN.md "Asynchronous semantics"); the SimPy swarm follows the
same rules and draws the same counter-based numbers, and must match bit for bit:
- A cell keeps its state and the last state received from each of its 8
  neighbours (its inbox). At start the inbox holds the neighbours' initial
  states (a boot-time exchange); restart and damage clear it.
- At a wake-up: pre = own alpha or any known neighbour alpha > 0.1. A cell whose
  state is all zero and that is not pre-alive is dormant: no work, no message.
  Otherwise: if pre, x' = x + dx (perception from own state and inbox) and
  post = own new alpha or any known neighbour alpha > 0.1; the new state is x'
  if pre and post, else zero. It is stored and sent to the 8 neighbours.
- Message m of sender c (m = 8 * send_round + slot) is lost with probability
  `loss` (draw LOSS, c, m); otherwise it arrives after a latency (draw LATENCY,
  c, m). A latency <= 0 delivers at once. A later arrival overwrites the slot.
- Wake-up k of cell c happens after an interval drawn with (WAKE, c, k):
  exponential(mean) or a jittered period with a per-cell drift (INIT draws).
- Failures (if mtbf > 0): failure j of a cell after exponential(mtbf) (FAIL, c,
  j) of running; it stops computing, sending and receiving; restart after
  exponential(mttr) (REPAIR, c, j) with state and inbox zero.
- Events at equal times run in the order they were scheduled. run(until=T)
  runs the events with time < T.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from . import rng
from .cell import alive_value, cell_delta
from .model import ALPHA, CHANNELS, NEIGHBOUR_OFFSETS, PERCEPTION
from .reference import Params

EV_WAKE, EV_MSG, EV_FAIL, EV_RESTART = 0, 1, 2, 3
CLOCK_EXPONENTIAL, CLOCK_PERIODIC = 0, 1
LAT_CONSTANT, LAT_UNIFORM, LAT_EXPONENTIAL = 0, 1, 2

# stats slots
ST_WAKEUPS, ST_UPDATES, ST_DORMANT, ST_SENT, ST_LOST, ST_DELIVERED, ST_DROPPED, \
    ST_FAILURES, ST_RESTARTS, ST_STALENESS_SUM = range(10)
STAT_NAMES = ("wakeups", "cell_updates", "dormant_wakeups", "messages_sent", "messages_lost",
              "messages_delivered", "messages_dropped", "failures", "restarts")
# meta slots
M_HEAP, M_SEQ, M_FREE, M_STATUS = range(4)
STATUS_DONE, STATUS_HEAP_FULL, STATUS_POOL_FULL = 0, 1, 2

_OFFS = np.array(NEIGHBOUR_OFFSETS, np.int64)


@dataclass(frozen=True)
class AsyncConfig:
    """Clock, link and fault settings of an asynchronous run."""
    clock: int = CLOCK_EXPONENTIAL
    mean_interval: float = 2.0       # exponential clock mean; periodic clock period
    jitter: float = 0.0              # periodic: +- uniform jitter per interval
    drift: float = 0.0               # periodic: per-cell rate offset, uniform in +-drift
    latency_kind: int = LAT_CONSTANT
    latency: float = 0.0             # constant value; uniform low; exponential mean
    latency_high: float = 0.0        # uniform high
    loss: float = 0.0                # message loss probability
    mtbf: float = 0.0                # mean running time between failures (0: none)
    mttr: float = 1.0                # mean time to repair

    def validate(self) -> "AsyncConfig":
        if not self.mean_interval > 0:
            raise ValueError("mean wake-up interval must be > 0")
        if self.clock == CLOCK_PERIODIC and not (0 <= self.jitter and 0 <= self.drift < 1
                                                 and self.jitter < self.mean_interval * (1 - self.drift)):
            raise ValueError("periodic clock needs 0 <= drift < 1 and 0 <= jitter < period*(1-drift)")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("message loss must be within [0, 1]")
        if self.latency < 0 or self.latency_high < 0:
            raise ValueError("latency must be >= 0")
        if self.latency_kind == LAT_UNIFORM and self.latency_high < self.latency:
            raise ValueError("uniform latency needs low <= high")
        if self.mtbf < 0 or self.mttr <= 0:
            raise ValueError("mtbf must be >= 0 and mttr > 0")
        return self

    def asarray(self) -> np.ndarray:
        return np.array([self.clock, self.mean_interval, self.jitter, self.drift, self.latency_kind,
                         self.latency, self.latency_high, self.loss, self.mtbf, self.mttr], np.float64)


# ---------------------------------------------------------------- draws shared with SimPy
@nb.njit(cache=True)
def wake_interval(seed, cfg, c, k):
    """Interval before wake-up k of cell c (k = 0 is the first, from t = 0 or a restart)."""
    if int(cfg[0]) == CLOCK_EXPONENTIAL:
        return rng.exponential(seed, rng.WAKE, c, k, cfg[1])
    period = cfg[1] * (1.0 + cfg[3] * (2.0 * rng.uniform(seed, rng.INIT, c, 1) - 1.0))
    if k == 0:
        return rng.uniform(seed, rng.INIT, c, 0) * period
    return period + cfg[2] * (2.0 * rng.uniform(seed, rng.WAKE, c, k) - 1.0)


@nb.njit(cache=True)
def message_fate(seed, cfg, c, m):
    """(lost, latency) of message m of sender c."""
    if cfg[7] > 0.0 and rng.uniform(seed, rng.LOSS, c, m) < cfg[7]:
        return True, 0.0
    kind = int(cfg[4])
    if kind == LAT_CONSTANT:
        return False, cfg[5]
    if kind == LAT_UNIFORM:
        return False, cfg[5] + (cfg[6] - cfg[5]) * rng.uniform(seed, rng.LATENCY, c, m)
    return False, rng.exponential(seed, rng.LATENCY, c, m, cfg[5])


@nb.njit(cache=True)
def time_to_failure(seed, cfg, c, j):
    return rng.exponential(seed, rng.FAIL, c, j, cfg[8])


@nb.njit(cache=True)
def time_to_repair(seed, cfg, c, j):
    return rng.exponential(seed, rng.REPAIR, c, j, cfg[9])


@nb.njit(cache=True)
def neighbour_table(height, width):
    """(N, 8) neighbour cell index per slot (-1 outside) and the slot at which
    that neighbour stores this cell."""
    n = height * width
    nbr = np.full((n, 8), -1, np.int64)
    back = np.full((n, 8), -1, np.int64)
    for y in range(height):
        for x in range(width):
            c = y * width + x
            for s in range(8):
                yy = y + _OFFS[s, 0]
                xx = x + _OFFS[s, 1]
                if 0 <= yy < height and 0 <= xx < width:
                    nbr[c, s] = yy * width + xx
                    back[c, s] = 7 - s      # offsets are symmetric: slot of (-dy,-dx)
    return nbr, back


@nb.njit(cache=True, inline="always")
def alive_known(own_alpha, c, box):
    """The alive rule on what cell c knows: its own alpha or one of the 8 it
    received in box[c] (a missing neighbour's slot is zero)."""
    m = alive_value(own_alpha)
    for s in range(8):
        if alive_value(box[c, s, ALPHA]):
            m = True
    return m


@nb.njit(cache=True, inline="always")
def gather(c, state, inbox, nbhd):
    """The 3x3 neighbourhood cell c perceives: its state at the centre, its inbox
    slots (model.NEIGHBOUR_OFFSETS order) around it."""
    for s in range(8):
        i = _OFFS[s, 0] + 1
        j = _OFFS[s, 1] + 1
        for ch in range(CHANNELS):
            nbhd[i, j, ch] = inbox[c, s, ch]
    for ch in range(CHANNELS):
        nbhd[1, 1, ch] = state[c, ch]


@nb.njit(cache=True)
def cell_wakeup(c, state, inbox, w1, b1, w2, b2, kxy, nbhd, p, dx):
    """One wake-up of cell c on what it knows. Returns 0 dormant, 1 zeroed, 2 updated."""
    if not alive_known(state[c, ALPHA], c, inbox):
        zero = True
        for ch in range(CHANNELS):
            if state[c, ch] != 0.0:
                zero = False
        if zero:
            return 0
        for ch in range(CHANNELS):
            state[c, ch] = 0.0
        return 1
    gather(c, state, inbox, nbhd)
    cell_delta(nbhd, kxy, w1, b1, w2, b2, p, dx)
    if alive_known(state[c, ALPHA] + dx[ALPHA], c, inbox):
        for ch in range(CHANNELS):
            state[c, ch] = state[c, ch] + dx[ch]
    else:
        for ch in range(CHANNELS):
            state[c, ch] = 0.0
    return 2


@nb.njit(cache=True)
def tentative(c, state, inbox, w1, b1, w2, b2, kxy, nbhd, p, dx, out):
    """out[c] = state[c] + dx of the network on what c knows (a fired lockstep cell)."""
    gather(c, state, inbox, nbhd)
    cell_delta(nbhd, kxy, w1, b1, w2, b2, p, dx)
    for ch in range(CHANNELS):
        out[c, ch] = state[c, ch] + dx[ch]


@nb.njit(cache=True)
def keep_or_zero(c, state, tent, tinbox, pre):
    """Lockstep phase C: c keeps its tentative state iff it was alive before (pre[c])
    and is after (its own and its neighbours' tentative alphas), else it is zeroed."""
    if pre[c] and alive_known(tent[c, ALPHA], c, tinbox):
        for ch in range(CHANNELS):
            state[c, ch] = tent[c, ch]
    else:
        for ch in range(CHANNELS):
            state[c, ch] = 0.0


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
def _catch_up(seed, cfg, c, t, wake_k, sleep_t, stats):
    """Draw the wake-ups a sleeping cell skipped (each would have been dormant)
    and return the first wake-up time after t. Sleeping only saves events: the
    cell's sequence of wake-up draws is the one it would have had awake."""
    tw = sleep_t[c]
    while True:
        k = wake_k[c]
        wake_k[c] = k + 1
        tw += wake_interval(seed, cfg, c, k)
        if tw > t:
            return tw
        stats[ST_WAKEUPS] += 1
        stats[ST_DORMANT] += 1


@nb.njit(cache=True)
def _run(until, seed, cfg, state, inbox, nbr, back, w1, b1, w2, b2, kxy,
         ht, hs, hp, meta, gen, failed, asleep, sleep_t, wake_k, sends, fail_j,
         pool, pool_ref, pool_free, pool_time, stats, now):
    """Process events with time < until. Stops early (status != DONE) when the
    heap or payload pool could overflow; the caller grows them and calls again.

    A dormant cell is not rescheduled: it sleeps until a message with a living
    alpha reaches it, then resumes its own wake-up sequence (`_catch_up`)."""
    nbhd = np.zeros((3, 3, CHANNELS), np.float32)
    p = np.empty(PERCEPTION, np.float32)
    dx = np.empty(CHANNELS, np.float32)
    # Deliveries below are written out in place: a helper taking the arrays cost
    # 3x in reference counting per call.
    instant = cfg[7] == 0.0 and int(cfg[4]) == LAT_CONSTANT and cfg[5] <= 0.0   # no draws needed
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
                if d < 0:
                    continue
                stats[ST_SENT] += 1
                if instant:
                    lost, lat = False, 0.0
                else:
                    lost, lat = message_fate(seed, cfg, c, rnd * 8 + s)
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
                    stats[ST_DELIVERED] += 1
                    if asleep[d] and alive_value(state[c, ALPHA]):
                        asleep[d] = False
                        _push(ht, hs, hp, meta, _catch_up(seed, cfg, d, t, wake_k, sleep_t, stats),
                              EV_WAKE, d, gen[d])
                    continue
                if slot_payload < 0:
                    meta[M_FREE] -= 1
                    slot_payload = pool_free[meta[M_FREE]]
                    for ch in range(CHANNELS):
                        pool[slot_payload, ch] = state[c, ch]
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
                    inbox[d, s, ch] = pool[b, ch]
                stats[ST_DELIVERED] += 1
                stats[ST_STALENESS_SUM] += np.int64((t - pool_time[b]) * 1e6)
                if asleep[d] and alive_value(pool[b, ALPHA]):
                    asleep[d] = False
                    _push(ht, hs, hp, meta, _catch_up(seed, cfg, d, t, wake_k, sleep_t, stats),
                          EV_WAKE, d, gen[d])
            pool_ref[b] -= 1
            if pool_ref[b] == 0:
                pool_free[meta[M_FREE]] = b
                meta[M_FREE] += 1
        elif kind == EV_FAIL:
            c = a
            if asleep[c]:
                asleep[c] = False
                _catch_up(seed, cfg, c, t, wake_k, sleep_t, stats)   # the wake-up a failure cancels
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


@nb.njit(cache=True)
def fill_inbox(state, nbr, back, inbox):
    """Every cell learns its neighbours' current states (the boot-time exchange)."""
    n = state.shape[0]
    for c in range(n):
        for s in range(8):
            d = nbr[c, s]
            if d >= 0:
                for ch in range(CHANNELS):
                    inbox[d, back[c, s], ch] = state[c, ch]
            else:
                for ch in range(CHANNELS):
                    inbox[c, s, ch] = 0.0


def mask_cells(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flat cell indices of a (H, W) boolean mask; any other shape is an error."""
    m = np.asarray(mask, bool)
    if m.shape != (height, width):
        raise ValueError(f"damage mask has shape {m.shape}, the grid is {(height, width)}")
    return np.flatnonzero(m.ravel())


class AsyncSwarm:
    """Event-driven asynchronous swarm on an H x W grid (numba reference)."""

    def __init__(self, state: np.ndarray, params: Params, seed: int = 0,
                 config: AsyncConfig | None = None):
        x = np.asarray(state, np.float32)
        if x.ndim != 3 or x.shape[-1] != CHANNELS:
            raise ValueError(f"state must be (H, W, {CHANNELS}), got {x.shape}")
        self.height, self.width = x.shape[:2]
        n = self.height * self.width
        self.n = n
        self.params = params
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
        self.fail_j = np.zeros(n, np.int64)
        pool_cap = n + 16
        self.pool = np.zeros((pool_cap, CHANNELS), np.float32)
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
        w1, b1, w2, b2, kxy = self.params.astuple()
        if until <= self.now:     # nothing to run; time never goes back
            return self.grid
        while True:
            self.now = _run(float(until), self.seed, self.cfg, self.state, self.inbox, self.nbr,
                            self.back, w1, b1, w2, b2, kxy, self.ht, self.hs, self.hp, self.meta,
                            self.gen, self.failed, self.asleep, self.sleep_t, self.wake_k, self.sends,
                            self.fail_j, self.pool, self.pool_ref, self.pool_free, self.pool_time,
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

    def metrics(self) -> dict[str, float]:
        m = {name: int(self.stats[i]) for i, name in enumerate(STAT_NAMES)}
        d = self.stats[ST_DELIVERED]
        m["mean_message_delay"] = float(self.stats[ST_STALENESS_SUM]) / 1e6 / d if d else 0.0
        m["cells_failed_now"] = int(self.failed.sum())
        return m


# ---------------------------------------------------------------- lockstep tick
@nb.njit(cache=True)
def _lockstep_tick(state, inbox, tent, tinbox, nbr, back, seed, step, fire_rate,
                   w1, b1, w2, b2, kxy, pre):
    """One integer tick of message-passing cells in four phases that reproduce
    the synchronous step exactly: (0) every cell sends its state; (A) each cell
    computes its tentative state from what it received, firing by the FIRE draw;
    (B) tentative states are exchanged; (C) each cell keeps its tentative state
    iff it was alive before (own + received alphas) and after (own + received
    tentative alphas), else zero."""
    n = state.shape[0]
    nbhd = np.zeros((3, 3, CHANNELS), np.float32)
    p = np.empty(PERCEPTION, np.float32)
    dx = np.empty(CHANNELS, np.float32)
    fill_inbox(state, nbr, back, inbox)                     # phase 0
    fired = 0
    for c in range(n):                                      # phase A
        pre[c] = alive_known(state[c, ALPHA], c, inbox)
        if rng.uniform(seed, rng.FIRE, c, step) < fire_rate:
            fired += 1
            tentative(c, state, inbox, w1, b1, w2, b2, kxy, nbhd, p, dx, tent)
        else:
            for ch in range(CHANNELS):
                tent[c, ch] = state[c, ch]
    fill_inbox(tent, nbr, back, tinbox)                     # phase B
    for c in range(n):                                      # phase C
        keep_or_zero(c, state, tent, tinbox, pre)
    return fired


class LockstepSwarm:
    """Message-passing cells ticking together at integer times (validation mode)."""

    def __init__(self, state: np.ndarray, params: Params, seed: int = 0, step0: int = 0,
                 fire_rate: float = 0.5):
        x = np.asarray(state, np.float32)
        self.height, self.width = x.shape[:2]
        n = self.height * self.width
        self.state = np.ascontiguousarray(x.reshape(n, CHANNELS)).copy()
        self.params, self.seed, self.step_count, self.fire_rate = params, int(seed), int(step0), fire_rate
        self.inbox = np.zeros((n, 8, CHANNELS), np.float32)
        self.tinbox = np.zeros_like(self.inbox)
        self.tent = np.zeros_like(self.state)
        self.pre = np.zeros(n, np.bool_)
        self.nbr, self.back = neighbour_table(self.height, self.width)
        self.cell_updates = 0   # fired cells, each of which ran its network

    def run(self, steps: int) -> np.ndarray:
        w1, b1, w2, b2, kxy = self.params.astuple()
        for _ in range(int(steps)):
            self.cell_updates += _lockstep_tick(self.state, self.inbox, self.tent, self.tinbox, self.nbr, self.back,
                           self.seed, self.step_count, self.fire_rate, w1, b1, w2, b2, kxy, self.pre)
            self.step_count += 1
        return self.grid

    @property
    def grid(self) -> np.ndarray:
        return self.state.reshape(self.height, self.width, CHANNELS)

    def damage(self, mask: np.ndarray) -> None:
        self.state[mask_cells(mask, self.height, self.width)] = 0.0
