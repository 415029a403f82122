"""The rules every asynchronous engine shares, one copy (docs/design.md,
"Asynchronous semantics"): the clock, link and fault settings, the counter-based
draws of wake-ups, message fates and failures, the neighbour table, and what a
cell does when it wakes. The numba event loop (`sim.events`), the lockstep swarm
(`sim.lockstep`) and the SimPy swarm (`sim.swarm`) call these functions, so they
match bit for bit:
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
- Links (cfg[11]): LINKS_DIRECT as above, a message on each of the 8 links.
  LINKS_RELAY: a cell is wired to its 4 orthogonal neighbours only and the
  diagonal states are relayed. A send is one frame on each of the 4 links, to
  the neighbour at slot s of the sender, message m = 8 * send_round + s (the
  draw keys above; the diagonal slots' numbers go unused). A frame to the N or
  S neighbour carries the sender's state and its inbox slots W and E as they
  are at send time (copied then); the receiver stores them at its slot for
  the sender (S or N) and at the two diagonal slots beside it (SW, SE or NW,
  NE; `relay_slots`). Frames to W and E carry the sender's state only. A frame
  is lost or delayed as a whole; a sleeping cell wakes if any state it carries
  has a living alpha. An off-grid relay slot is zero, so off-grid inbox slots
  stay zero. The boot-time exchange still fills all 8 slots.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from . import rng
from .cell import alive_value, cell_delta
from .model import ALPHA, CHANNELS, NEIGHBOUR_OFFSETS

EV_WAKE, EV_MSG, EV_FAIL, EV_RESTART = 0, 1, 2, 3
CLOCK_EXPONENTIAL, CLOCK_PERIODIC = 0, 1
LAT_CONSTANT, LAT_UNIFORM, LAT_EXPONENTIAL = 0, 1, 2
LINKS_DIRECT, LINKS_RELAY = 0, 1
CLOCKS = {"exp": CLOCK_EXPONENTIAL, "periodic": CLOCK_PERIODIC}          # names on the command line
LATENCY_KINDS = {"const": LAT_CONSTANT, "uniform": LAT_UNIFORM, "exp": LAT_EXPONENTIAL}
LINKS = {"direct": LINKS_DIRECT, "relay": LINKS_RELAY}
CFG_LINKS = 11     # the links' index in AsyncConfig.asarray()

# stats slots
ST_WAKEUPS, ST_UPDATES, ST_DORMANT, ST_SENT, ST_LOST, ST_DELIVERED, ST_DROPPED, \
    ST_FAILURES, ST_RESTARTS, ST_STALENESS_SUM = range(10)
STAT_NAMES = ("wakeups", "cell_updates", "dormant_wakeups", "messages_sent", "messages_lost",
              "messages_delivered", "messages_dropped", "failures", "restarts")

_OFFS = np.array(NEIGHBOUR_OFFSETS, np.int64)
# inbox slots by direction (model.NEIGHBOUR_OFFSETS order: NW N NE W E SW S SE)
SLOT_NW, SLOT_N, SLOT_NE, SLOT_W, SLOT_E, SLOT_SW, SLOT_S, SLOT_SE = (
    NEIGHBOUR_OFFSETS.index(o) for o in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)))


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
    burst: float = 0.0               # mean length of a run of lost messages on a link (Gilbert-Elliott;
                                     # 0: each message lost independently)
    links: int = LINKS_DIRECT        # LINKS_DIRECT: 8 links; LINKS_RELAY: 4, diagonals relayed

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
        if self.burst != 0.0 and not self.burst >= 1.0:
            raise ValueError("the mean burst length of lost messages must be >= 1 (or 0: independent losses)")
        if self.burst and self.loss > self.burst / (self.burst + 1.0):
            raise ValueError(f"message loss {self.loss} is too high for bursts of mean length {self.burst} "
                             f"(at most burst / (burst + 1) = {self.burst / (self.burst + 1.0):.3g})")
        if self.links not in LINKS.values():
            raise ValueError(f"links must be one of {sorted(LINKS.values())} "
                             f"({', '.join(f'{v} {k}' for k, v in LINKS.items())}), got {self.links!r}")
        return self

    def asarray(self) -> np.ndarray:
        return np.array([self.clock, self.mean_interval, self.jitter, self.drift, self.latency_kind,
                         self.latency, self.latency_high, self.loss, self.mtbf, self.mttr, self.burst,
                         self.links],
                        np.float64)


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
def message_fate(seed, cfg, c, m, link_bad):
    """(lost, latency) of message m = 8 * round + slot of sender c.

    Loss is independent per message with probability p = cfg[7], or, with a mean burst
    length L = cfg[10] >= 1, a Gilbert-Elliott channel per link: the link is good or bad
    (every message on a bad link is lost), a bad link turns good with probability 1/L at
    each message and a good one bad with probability p / (L (1 - p)), so that on average
    a fraction p of the messages is lost, in runs of mean length L. A link's first
    message draws its state from that stationary mix; link_bad[8 c + slot] keeps it
    between messages (the wire's state: it survives the cells' failures)."""
    p = cfg[7]
    if p > 0.0:
        u = rng.uniform(seed, rng.LOSS, c, m)
        if cfg[10] >= 1.0:
            k = c * 8 + m % 8
            if m < 8:
                bad = u < p
            elif link_bad[k]:
                bad = u >= 1.0 / cfg[10]
            else:
                bad = u < p / (cfg[10] * (1.0 - p))
            link_bad[k] = bad
            if bad:
                return True, 0.0
        elif u < p:
            return True, 0.0
    kind = int(cfg[4])
    if kind == LAT_CONSTANT:
        return False, cfg[5]
    if kind == LAT_UNIFORM:
        return False, cfg[5] + (cfg[6] - cfg[5]) * rng.uniform(seed, rng.LATENCY, c, m)
    return False, rng.exponential(seed, rng.LATENCY, c, m, cfg[5])


@nb.njit(cache=True, inline="always")
def sends_on(links, s):
    """Whether a cell sends on its link at slot s: all 8 (direct), or N, W, E, S (relay)."""
    return links == LINKS_DIRECT or s == SLOT_N or s == SLOT_W or s == SLOT_E or s == SLOT_S


@nb.njit(cache=True, inline="always")
def relay_slots(links, q):
    """The receiver's slots for the relayed (SLOT_W, SLOT_E) of a frame that arrives at its
    slot q, or (-1, -1) when the frame carries only the sender's state. From the N neighbour
    (q = N): its W and E are the receiver's NW and NE; from the S neighbour: SW and SE."""
    if links == LINKS_RELAY:
        if q == SLOT_N:
            return SLOT_NW, SLOT_NE
        if q == SLOT_S:
            return SLOT_SW, SLOT_SE
    return -1, -1


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


@nb.njit(cache=True)
def catch_up(seed, cfg, c, t, wake_k, sleep_t, stats):
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
