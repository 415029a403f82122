"""The SimPy swarm: every cell a SimPy process with its own clock and inbox;
links carry its new state to its 8 neighbours (or, with relay links, to its 4
orthogonal ones with the diagonal states relayed) after a latency and may lose it;
failures, restarts, damage and rotation changes are events.

Two modes (docs/design.md, "Asynchronous semantics" and "Lockstep mode"):

- "async": the asynchronous semantics of `sim.rules` (read its docstring),
  equal to `AsyncSwarm` (sim.events) bit for bit in state and in every metric both define,
  including the wake-up counts. It draws the same counter-based numbers
  (`rules.wake_interval`, `message_fate`, `time_to_failure`,
  `time_to_repair`) and reproduces the reference's event order exactly:
  SimPy orders events by (time, priority, insertion id) and the reference by
  (time, insertion sequence), so every event the reference pushes is created
  here at the same moment, in the same order, at the same float time, with the
  same priority (NORMAL):
    * a cell's next wake-up is a Timeout made right after its sends;
    * a dormant cell sleeps on an untriggered Event; a message with a living
      alpha that reaches it draws its skipped wake-ups (`rules.catch_up`)
      and schedules that very Event at the first wake-up after now, at the
      absolute time the reference computes (no rounding through `now + delay`);
    * a latency > 0 message is a plain Event with a callback (no process);
      messages of one send with the same arrival time (all of them, with a
      constant latency) are one Event: the reference gives them consecutive
      sequence numbers, so nothing can run between them;
    * a zero-latency message is written straight into the inbox (no event);
    * a failure is a Timeout whose callback schedules the restart Timeout and
      interrupts the cell's process (the interrupt is URGENT and creates no
      NORMAL event, so it cannot reorder anything).
  Control events (damage, new parameters, the end of `run`) are URGENT: at
  equal times they run before every cell event, as `AsyncSwarm.run(t);
  damage(); run(...)` does; one scheduled for t is applied by run(t).
  Snapshots run before those (priority -1).
  Sleeping dormant cells (rather than letting them wake to do nothing) is what
  keeps the wake-up counts equal to the reference's, and it saves the events:
  a grown 40x40 pattern has most of its empty cells asleep.
  Absolute-time scheduling pushes on `env._queue` with `next(env._eid)`, the
  two internals SimPy 4's own `schedule` uses.
- "lockstep": all cells wake at integer times with zero latency; a tick runs
  four phases ordered by SimPy priority (send state; tentative update fired by
  the FIRE draw; send tentative state; keep it iff alive before and after), so
  the result equals `grid.SyncGrid` and `lockstep.LockstepSwarm` bit for
  bit.

The per-cell compute is a `sim.cell_backends.CellBackend`: the float model, or
one that `sim.assemble` names (fixed point, firmware, boards). The bookkeeping around it (sends, deliveries,
statistics) runs in small numba functions, since a Python loop over 8
neighbours would cost more than the cell update itself.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial
from heapq import heappush
from typing import Any

import numba as nb
import numpy as np
from simpy.core import Environment
from simpy.events import NORMAL, URGENT, Event, Interrupt, Timeout
from simpy.rt import RealtimeEnvironment

from . import rules
from . import rng
from .rules import AsyncConfig, mask_cells
from .cell_backends import CellBackend, FloatBackend, ModelLike, as_params
from .cell import alive_value
from .model import ALPHA, CHANNELS, FIRE_RATE

PRIO_SNAPSHOT = -1          # before everything else at the same time
PRIO_CONTROL = URGENT       # damage, parameters, the end of run(): before cell events
PRIO_EVENT = NORMAL         # every event the async reference has
LOCK_PHASES = 4             # lockstep phases at priorities 1..4

Mask = np.ndarray | Callable[["SimPySwarm"], np.ndarray]


def _push_at(env: Environment, time: float, prio: int, ev: Event) -> None:
    """Schedule ev at an absolute time. `env.schedule` takes a delay, and
    now + (time - now) need not round back to time."""
    heappush(env._queue, (time, prio, next(env._eid), ev))


def _triggered(env: Environment, value: Any = None) -> Event:
    ev = Event(env)
    ev._ok = True
    ev._value = value
    return ev


# ---------------------------------------------------------------- numba bookkeeping (async)
@nb.njit(cache=True)
def _after_wakeup(c, t, r, seed, cfg, instant, state, inbox, itime, nbr, back, failed, asleep,
                  sleep_t, wake_k, sends, link_bad, stats, fstats, req_i, req_t):
    """Everything `events._run` does at a wake-up after `cell_wakeup`, in its
    order. Returns -1 if the cell falls asleep, else the number n of scheduling
    requests in req_i/req_t[:n], in the reference's push order: req_i >= 0 a
    message to d*8+slot arriving at req_t; req_i < 0 the wake-up of sleeper
    -1-req_i at req_t. req_t[8] is the interval to the cell's next wake-up;
    req_i[8] is 1 when the n requests are messages with one arrival time (one
    event carries them all: the reference gives them consecutive sequence numbers)."""
    stats[rules.ST_WAKEUPS] += 1
    if r == 0:
        stats[rules.ST_DORMANT] += 1
        asleep[c] = True
        sleep_t[c] = t
        return -1
    if r == 2:
        stats[rules.ST_UPDATES] += 1
        for s in range(8):
            if nbr[c, s] >= 0:
                fstats[0] += t - itime[c, s]
                fstats[1] += 1.0
    rnd = sends[c]
    sends[c] += 1
    links = int(cfg[rules.CFG_LINKS])
    n = 0
    for s in range(8):
        d = nbr[c, s]
        if d < 0 or not rules.sends_on(links, s):
            continue
        stats[rules.ST_SENT] += 1
        if instant:
            lost, lat = False, 0.0
        else:
            lost, lat = rules.message_fate(seed, cfg, c, rnd * 8 + s, link_bad)
        if lost:
            stats[rules.ST_LOST] += 1
            continue
        if lat <= 0.0:
            if failed[d]:
                stats[rules.ST_DROPPED] += 1
                continue
            slot = back[c, s]
            for ch in range(CHANNELS):
                inbox[d, slot, ch] = state[c, ch]
            itime[d, slot] = t
            living = alive_value(state[c, ALPHA])
            qw, qe = rules.relay_slots(links, slot)
            if qw >= 0:
                for ch in range(CHANNELS):
                    inbox[d, qw, ch] = inbox[c, rules.SLOT_W, ch]
                    inbox[d, qe, ch] = inbox[c, rules.SLOT_E, ch]
                itime[d, qw] = itime[c, rules.SLOT_W]
                itime[d, qe] = itime[c, rules.SLOT_E]
                living = living or alive_value(inbox[c, rules.SLOT_W, ALPHA]) \
                    or alive_value(inbox[c, rules.SLOT_E, ALPHA])
            stats[rules.ST_DELIVERED] += 1
            if asleep[d] and living:
                asleep[d] = False
                req_i[n] = -1 - d
                req_t[n] = rules.catch_up(seed, cfg, d, t, wake_k, sleep_t, stats)
                n += 1
            continue
        req_i[n] = d * 8 + back[c, s]
        req_t[n] = t + lat
        n += 1
    single = n > 0
    for i in range(n):
        if req_i[i] < 0 or req_t[i] != req_t[0]:
            single = False
    req_i[8] = 1 if single else 0
    k = wake_k[c]
    wake_k[c] = k + 1
    req_t[8] = rules.wake_interval(seed, cfg, c, k)
    return n


@nb.njit(cache=True)
def _deliver(seed, cfg, inbox, itime, failed, asleep, sleep_t, wake_k, stats, req_i, req_t,
             t, t_send, payload, ptime, codes):
    """Arrival of one send (made at t_send) at the slots `codes` (d*8+slot), in
    order: payload[0] is the sender's state; with relay links payload[1:3] are its
    inbox slots W and E at send time, whose own send times are ptime[0:2] (frames
    from the N or S neighbour store them at the diagonal slots, `rules.relay_slots`).
    Returns n sleepers woken: cell req_i[k] wakes at req_t[k]. (The swarm's arrays
    come first so that a functools.partial can hold them.)"""
    links = int(cfg[rules.CFG_LINKS])
    n = 0
    for i in range(codes.shape[0]):
        d = codes[i] // 8
        s = codes[i] % 8
        if failed[d]:
            stats[rules.ST_DROPPED] += 1
            continue
        for ch in range(CHANNELS):
            inbox[d, s, ch] = payload[0, ch]
        itime[d, s] = t_send
        living = alive_value(payload[0, ALPHA])
        qw, qe = rules.relay_slots(links, s)
        if qw >= 0:
            for ch in range(CHANNELS):
                inbox[d, qw, ch] = payload[1, ch]
                inbox[d, qe, ch] = payload[2, ch]
            itime[d, qw] = ptime[0]
            itime[d, qe] = ptime[1]
            living = living or alive_value(payload[1, ALPHA]) or alive_value(payload[2, ALPHA])
        stats[rules.ST_DELIVERED] += 1
        stats[rules.ST_STALENESS_SUM] += np.int64((t - t_send) * 1e6)
        if asleep[d] and living:
            asleep[d] = False
            req_i[n] = d
            req_t[n] = rules.catch_up(seed, cfg, d, t, wake_k, sleep_t, stats)
            n += 1
    return n


# ---------------------------------------------------------------- numba bookkeeping (lockstep)
@nb.njit(cache=True)
def _lock_send(c, src, dst, nbr, back, stats):
    """Phases 0 and B: cell c's row of src into its neighbours' slots of dst."""
    for s in range(8):
        d = nbr[c, s]
        if d >= 0:
            slot = back[c, s]
            for ch in range(CHANNELS):
                dst[d, slot, ch] = src[c, ch]
            stats[rules.ST_SENT] += 1
            stats[rules.ST_DELIVERED] += 1


@nb.njit(cache=True)
def _lock_pre(c, seed, step, fire_rate, state, inbox, pre, tent, stats):
    """Phase A without the network: pre-alive from what c received; returns
    whether c fires (then the backend writes tent[c]); else tent[c] = state[c]."""
    pre[c] = rules.alive_known(state[c, ALPHA], c, inbox)
    stats[rules.ST_WAKEUPS] += 1
    if rng.uniform(seed, rng.FIRE, c, step) < fire_rate:
        stats[rules.ST_UPDATES] += 1
        return True
    for ch in range(CHANNELS):
        tent[c, ch] = state[c, ch]
    return False


# ---------------------------------------------------------------- the swarm
class SimPySwarm:
    """A grid of cells as SimPy processes; see the module docstring.

    state: (H, W, 16) initial states. model: Params, weights.Model (float
    backend) or a CellBackend. config: clock, links and faults (async mode).
    realtime_factor: seconds of wall time per time unit (simpy.rt), for
    hardware in the loop; None runs as fast as possible. fire_rate, step0:
    lockstep mode's FIRE draws (step = step0 + tick); lockstep ignores the
    config's clock and rejects links with latency or loss and failures."""

    def __init__(self, state: np.ndarray, model: ModelLike | CellBackend, seed: int = 0,
                 config: AsyncConfig | None = None, mode: str = "async",
                 realtime_factor: float | None = None, fire_rate: float = FIRE_RATE,
                 step0: int = 0):
        x = np.asarray(state, np.float32)
        if x.ndim != 3 or x.shape[-1] != CHANNELS:
            raise ValueError(f"state must be (H, W, {CHANNELS}), got {x.shape}")
        if mode not in ("async", "lockstep"):
            raise ValueError(f"mode must be 'async' or 'lockstep', got {mode!r}")
        self.height, self.width = x.shape[:2]
        n = self.n = self.height * self.width
        if n * 8 > (1 << 30):
            raise ValueError("grid too large (at most 2**27 cells)")
        self.backend = model if isinstance(model, CellBackend) else FloatBackend(as_params(model))
        self.seed = int(seed)
        self.mode = mode
        self.config = (config or AsyncConfig()).validate()
        cf = self.config
        if mode == "lockstep" and (cf.latency or cf.latency_high or cf.loss or cf.mtbf):
            raise ValueError("lockstep mode has zero latency, no loss and no failures "
                             "(its clock is the integer tick)")
        if mode == "lockstep" and cf.links != rules.LINKS_DIRECT:
            raise ValueError("lockstep mode exchanges states on all 8 links (it equals the synchronous "
                             "grid); relay links need mode 'async'")
        self.cfg = self.config.asarray()
        self.fire_rate = float(fire_rate)
        self.step0 = int(step0)
        self.state = np.ascontiguousarray(x.reshape(n, CHANNELS)).copy()
        self.inbox = np.zeros((n, 8, CHANNELS), np.float32)
        self.nbr, self.back = rules.neighbour_table(self.height, self.width)
        self.itime = np.zeros((n, 8), np.float64)     # send time of each inbox slot's content
        self.failed = np.zeros(n, np.bool_)
        self.asleep = np.zeros(n, np.bool_)
        self.sleep_t = np.zeros(n, np.float64)
        self.wake_k = np.zeros(n, np.int64)
        self.sends = np.zeros(n, np.int64)
        self.link_bad = np.zeros(n * 8, np.bool_)   # Gilbert-Elliott state of each link
        self.fail_j = np.zeros(n, np.int64)
        self.stats = np.zeros(10, np.int64)          # rules.ST_* slots
        self.fstats = np.zeros(2, np.float64)        # inbox staleness sum, count
        self._req_i = np.zeros(9, np.int64)
        self._req_t = np.zeros(9, np.float64)
        self.snapshots: list[tuple[float, np.ndarray]] = []
        self._record: tuple[float, float] | None = None
        self.realtime_factor = realtime_factor
        if realtime_factor is None:
            self.env: Environment = Environment(initial_time=0.0)
        else:
            self.env = RealtimeEnvironment(initial_time=0.0, factor=float(realtime_factor),
                                           strict=False)
        self._sleep_ev: list[Event | None] = [None] * n
        if mode == "async":
            self._start_async()
        else:
            self._start_lockstep()

    # ------------------------------------------------------------ public API
    @property
    def now(self) -> float:
        return float(self.env.now)

    @property
    def grid(self) -> np.ndarray:
        """The (H, W, 16) state (a view)."""
        return self.state.reshape(self.height, self.width, CHANNELS)

    def run(self, until: float) -> np.ndarray:
        """Advance to time `until`: run the events with time < until (lockstep:
        the ticks 0..ceil(until)-1). Returns the (H, W, 16) state."""
        until = float(until)
        if until <= self.env.now:
            return self.grid
        if isinstance(self.env, RealtimeEnvironment):   # do not catch up on paused wall time
            self.env.env_start = self.env.now
            self.env.sync()
        stop = _triggered(self.env)
        _push_at(self.env, until, PRIO_CONTROL, stop)
        self.env.run(until=stop)
        return self.grid

    def damage(self, mask: np.ndarray) -> None:
        """Replace the cells where mask (H, W) is true by fresh ones, now: state
        and inbox zero (their neighbours learn it from the next messages)."""
        idx = mask_cells(mask, self.height, self.width)
        self.state[idx] = 0.0
        self.inbox[idx] = 0.0
        self.itime[idx] = self.env.now

    def at(self, time: float, action: Callable[[SimPySwarm], None]) -> Event:
        """Call action(self) at `time`, before any cell event of that time."""
        time = float(time)
        if time < self.env.now:
            raise ValueError(f"time {time} is in the past (now {self.env.now})")
        ev = _triggered(self.env)
        ev.callbacks.append(lambda _ev: action(self))
        _push_at(self.env, time, PRIO_CONTROL, ev)
        return ev

    def schedule_damage(self, time: float, mask: Mask) -> Event:
        """Damage at `time`: mask is an (H, W) bool array or a callable
        swarm -> mask evaluated then (e.g. a circle around the living cells)."""
        return self.at(time, lambda sw: sw.damage(mask(sw) if callable(mask) else mask))

    def set_params(self, params: ModelLike) -> None:
        """New model or rotation (e.g. `params.rotated(90)`) for every cell from now on."""
        self.backend.set_params(as_params(params))

    def schedule_params(self, time: float, params: ModelLike) -> Event:
        """set_params at `time` (the paper's rotation experiment: turn the perception mid-run)."""
        p = as_params(params)
        return self.at(time, lambda sw: sw.backend.set_params(p))

    def record(self, every: float, start: float | None = None) -> list[tuple[float, np.ndarray]]:
        """Copy the grid at start, start+every, ... (default start: now) into
        `self.snapshots` as (time, (H, W, 16) array), for movies. A snapshot at t
        shows the events before t (it runs before anything else at t).
        Returns the list (it grows as the swarm runs); `record(0)` stops."""
        if every <= 0:
            self._record = None
            return self.snapshots
        t0 = float(self.env.now if start is None else start)
        if t0 < self.env.now:
            raise ValueError("recording cannot start in the past")
        self._record = rec = (t0, float(every))
        self._schedule_snapshot(rec, 0)
        return self.snapshots

    def metrics(self) -> dict[str, float]:
        """AsyncSwarm.metrics()'s keys (defined the same way) plus
        mean_inbox_staleness: at each update that ran the network, the mean over
        the cell's in-grid neighbour slots of (now - send time of the state it
        holds); boot-time states count as sent at 0, slots cleared by a restart
        or damage as sent then. Lockstep: wakeups = cells x ticks, cell_updates
        = fired cells, messages = the two exchanges per tick."""
        st = self.stats
        m: dict[str, float] = {name: int(st[i]) for i, name in enumerate(rules.STAT_NAMES)}
        d = st[rules.ST_DELIVERED]
        m["mean_message_delay"] = float(st[rules.ST_STALENESS_SUM]) / 1e6 / int(d) if d else 0.0
        m["cells_failed_now"] = int(self.failed.sum())
        m["mean_inbox_staleness"] = float(self.fstats[0] / self.fstats[1]) if self.fstats[1] else 0.0
        return m

    # ------------------------------------------------------------ snapshots
    def _schedule_snapshot(self, rec: tuple[float, float], i: int) -> None:
        ev = _triggered(self.env, i)
        ev.callbacks.append(lambda e: self._snapshot(rec, e._value))
        _push_at(self.env, rec[0] + i * rec[1], PRIO_SNAPSHOT, ev)   # absolute: no drift

    def _snapshot(self, rec: tuple[float, float], i: int) -> None:
        if self._record is not rec:          # stopped or restarted
            return
        self.snapshots.append((float(self.env.now), self.grid.copy()))
        self._schedule_snapshot(rec, i + 1)

    # ------------------------------------------------------------ async mode
    def _start_async(self) -> None:
        """The reference's start: boot-time inbox exchange, every cell's first
        wake-up in cell order, then every cell's first failure."""
        rules.fill_inbox(self.state, self.nbr, self.back, self.inbox)
        env, seed, cfg = self.env, self.seed, self.cfg
        self._instant = bool(self.cfg[7] == 0.0 and int(self.cfg[4]) == rules.LAT_CONSTANT
                             and self.cfg[5] <= 0.0)
        self._deliver = partial(_deliver, seed, cfg, self.inbox, self.itime, self.failed,
                                self.asleep, self.sleep_t, self.wake_k, self.stats, self._req_i,
                                self._req_t)
        self._relay = self.config.links == rules.LINKS_RELAY
        self._no_ptime = np.zeros(2, np.float64)     # direct links: no relayed states
        first = []
        for c in range(self.n):
            self.wake_k[c] = 1
            first.append(Timeout(env, rules.wake_interval(seed, cfg, c, 0)))
        if self.config.mtbf > 0:
            for c in range(self.n):
                f = Timeout(env, rules.time_to_failure(seed, cfg, c, 0), value=c)
                f.callbacks.append(self._on_fail)
        self._procs = [env.process(self._cell_async(c, first[c])) for c in range(self.n)]

    def _cell_async(self, c: int, ev: Event) -> Generator[Event, Any, None]:
        """One cell: wake up, update on what it knows, send, sleep until the next
        wake-up (or, when dormant, until a living neighbour's message)."""
        env = self.env
        update = self.backend.update
        after = _after_wakeup
        state, inbox, itime, nbr, back = self.state, self.inbox, self.itime, self.nbr, self.back
        failed, asleep, sleep_t, wake_k = self.failed, self.asleep, self.sleep_t, self.wake_k
        sends, link_bad, stats, fstats = self.sends, self.link_bad, self.stats, self.fstats
        seed, cfg, instant = self.seed, self.cfg, self._instant
        req_i, req_t = self._req_i, self._req_t
        sleeping = self._sleep_ev
        dispatch = self._dispatch
        on_message = self._on_message
        payload_of = self._payload
        queue, eid = env._queue, env._eid
        while True:
            try:
                yield ev
            except Interrupt as fault:        # failed: wait for the repair
                yield fault.cause
                ev = self._restart(c)
                continue
            t = env._now
            r = update(c, state, inbox)
            n = after(c, t, r, seed, cfg, instant, state, inbox, itime, nbr, back, failed, asleep,
                      sleep_t, wake_k, sends, link_bad, stats, fstats, req_i, req_t)
            if n < 0:
                ev = sleeping[c] = Event(env)
                continue
            if n:
                if req_i.item(8):        # the common case: one event carries the whole send
                    msg = Event(env)
                    msg._ok = True
                    msg._value = (t, *payload_of(c), req_i[:n].copy())
                    msg.callbacks.append(on_message)
                    heappush(queue, (req_t.item(0), PRIO_EVENT, next(eid), msg))
                else:
                    dispatch(c, t, n)
            ev = Timeout(env, req_t.item(8))

    def _dispatch(self, c: int, t: float, n: int) -> None:
        """Create the events _after_wakeup asked for, in its order."""
        ri = self._req_i[:n].tolist()
        rt = self._req_t[:n].tolist()
        env = self.env
        payload = None                          # one copy of what the send carries for all its messages
        on_message = self._on_message
        i = 0
        while i < n:
            code = ri[i]
            if code < 0:
                self._wake_sleeper(-1 - code, rt[i])
                i += 1
                continue
            ti = rt[i]
            j = i + 1
            while j < n and ri[j] >= 0 and rt[j] == ti:
                j += 1
            if payload is None:
                payload = self._payload(c)
            msg = _triggered(env, (t, *payload, self._req_i[i:j].copy()))
            msg.callbacks.append(on_message)
            _push_at(env, ti, PRIO_EVENT, msg)
            i = j

    def _payload(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """What cell c's send carries, copied now, at send time: (its state as row 0 and, with
        relay links, its inbox slots W and E as rows 1 and 2; those slots' send times)."""
        if not self._relay:
            return self.state[c:c + 1].copy(), self._no_ptime
        w, e = rules.SLOT_W, rules.SLOT_E
        return (np.concatenate((self.state[c:c + 1], self.inbox[c, w:w + 1], self.inbox[c, e:e + 1])),
                self.itime[c, [w, e]])

    def _wake_sleeper(self, d: int, tw: float) -> None:
        ev = self._sleep_ev[d]
        ev._ok = True
        ev._value = None
        _push_at(self.env, tw, PRIO_EVENT, ev)

    def _on_message(self, ev: Event) -> None:
        t_send, payload, ptime, codes = ev._value
        n = self._deliver(self.env._now, t_send, payload, ptime, codes)
        if n:
            for d, tw in zip(self._req_i[:n].tolist(), self._req_t[:n].tolist()):
                self._wake_sleeper(d, tw)

    def _on_fail(self, ev: Event) -> None:
        """Failure: stop computing, sending and receiving; restart after repair."""
        c = ev._value
        t = self.env._now
        if self.asleep[c]:          # draw the wake-up the failure cancels, as the reference does
            self.asleep[c] = False
            rules.catch_up(self.seed, self.cfg, c, t, self.wake_k, self.sleep_t, self.stats)
        self.failed[c] = True
        self.stats[rules.ST_FAILURES] += 1
        repair = Timeout(self.env, rules.time_to_repair(self.seed, self.cfg, c, int(self.fail_j[c])))
        self._procs[c].interrupt(repair)

    def _restart(self, c: int) -> Event:
        """Restart with state and inbox zero; returns the first wake-up."""
        t = self.env._now
        self.failed[c] = False
        self.stats[rules.ST_RESTARTS] += 1
        self.state[c] = 0.0
        self.inbox[c] = 0.0
        self.itime[c] = t
        self.fail_j[c] += 1
        k = int(self.wake_k[c])
        self.wake_k[c] = k + 1
        wake = Timeout(self.env, rules.wake_interval(self.seed, self.cfg, c, k))
        f = Timeout(self.env, rules.time_to_failure(self.seed, self.cfg, c, int(self.fail_j[c])), value=c)
        f.callbacks.append(self._on_fail)
        return wake

    # ------------------------------------------------------------ lockstep mode
    def _start_lockstep(self) -> None:
        self.tent = np.zeros_like(self.state)
        self.tinbox = np.zeros_like(self.inbox)
        self.pre = np.zeros(self.n, np.bool_)
        self._tick = 0
        self._phase: list[Event] = []
        self.env.process(self._metronome())        # first: its start makes tick 0's phases
        self._procs = [self.env.process(self._cell_lockstep(c)) for c in range(self.n)]

    def _metronome(self) -> Generator[Event, Any, None]:
        """Makes the four phase events of each tick (time k, priorities 1..4) before the
        cells wait on them: it waits on the last phase ahead of every cell."""
        k = 0
        while True:
            self._phase = [_triggered(self.env) for _ in range(LOCK_PHASES)]
            for p, ev in enumerate(self._phase):
                _push_at(self.env, float(k), PRIO_EVENT + p, ev)
            yield self._phase[-1]
            k += 1
            self._tick = k

    def _cell_lockstep(self, c: int) -> Generator[Event, Any, None]:
        """One cell's tick: send, fire or not, send the tentative state, keep it or die."""
        state, inbox, tent, tinbox = self.state, self.inbox, self.tent, self.tinbox
        nbr, back, stats, pre = self.nbr, self.back, self.stats, self.pre
        seed, rate = self.seed, self.fire_rate
        tentative = self.backend.tentative
        while True:
            phases = self._phase
            yield phases[0]
            _lock_send(c, state, inbox, nbr, back, stats)
            yield phases[1]
            if _lock_pre(c, seed, self.step0 + self._tick, rate, state, inbox, pre, tent, stats):
                tentative(c, state, inbox, tent)
            yield phases[2]
            _lock_send(c, tent, tinbox, nbr, back, stats)
            yield phases[3]
            rules.keep_or_zero(c, state, tent, tinbox, pre)

    @property
    def step_count(self) -> int:
        """Lockstep: the FIRE-draw step of the next tick (step0 + ticks done)."""
        return self.step0 + self._tick if self.mode == "lockstep" else 0
