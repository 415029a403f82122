"""Training as the hardware runs: the wires between the cells in the BPTT rollout.

On a board grid a cell perceives its neighbours through messages: late, sometimes
lost (the last received state is kept), from cells whose clocks run at slightly
different rates. A model trained on the paper's synchronous grid breaks at about
one step of latency (docs/robust-models.md). `Wires` puts them into the rollout, in the async engines' semantics (sim.rules) on the
training grid's time steps (one step = one time unit: a cell fires with
probability 0.5 per step as it wakes every 2 units on average):

- Every step every cell sends its state on each of its 8 links; the message of
  step s is lost (independently with probability `msg_loss`, or in Gilbert-Elliott
  runs of mean length `burst` per link, as `--burst` does in the simulators) or
  arrives after a latency drawn per message (constant, uniform or exponential, in
  steps, cut at `max_delay`). A later arrival overwrites the slot: at step t the
  cell perceives the neighbour as it was at the step of the message that arrived
  last, so each link has an age a in [0, max_delay] per step.
- Cell c fires at the rate 0.5 * (1 + drift * u_c), u_c uniform in [-1, 1] drawn
  per rollout (clocks whose rates differ by up to +-drift): with probability that
  rate at each step (`clock` exp, the random clock) or regularly, every 1 / rate
  steps from a random phase (`clock` periodic, a crystal's clock); `mix` draws one
  of them per rollout.
- Only a cell that fires applies the alive rule, on what it knows (its own
  alpha and its neighbours' delayed alphas), as in the async engines.
- `links` relay (the boards' wiring, `--links relay` in the simulators): a cell
  hears only its 4 orthogonal neighbours; the N and S neighbours' frames also
  carry their W and E inbox slots as they were at the sender's last fire, which
  become the receiver's diagonals. A diagonal's age is then the age of the relay's
  frame, plus the time since the relay last fired before sending it, plus the
  relay's own age of that slot then (cut at max_delay). Every cell sends every
  step, but what it relays changes only when it fires, as on the boards.

The backward pass sends each perception tap's gradient to the neighbour's state
at the step it was perceived (t - a), so BPTT reaches the delayed states
(tests/test_links.py checks it against finite differences). Every draw derives
from one key per rollout, taken from the training generator (a hash of key, link
and step for the messages; generators seeded by the key for the clocks), so a run
replays and resumes exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numba as nb
import numpy as np

from sim import rng
from sim.errors import UserError
from sim.jit import compiled_variant
from sim.model import ALIVE_THRESHOLD, ALPHA, FIRE_RATE, NEIGHBOUR_OFFSETS
from sim.rules import LINKS, SLOT_E, SLOT_N, SLOT_NE, SLOT_NW, SLOT_S, SLOT_SE, SLOT_SW, SLOT_W

LATENCY_KINDS = ("const", "uniform", "exp")
LATENCY_DISTS = LATENCY_KINDS + ("mix",)   # mix: a kind and a level drawn per rollout
CLOCKS = ("exp", "periodic", "mix")          # mix: one of the two drawn per rollout
WIRINGS = tuple(LINKS) + ("mix",)            # mix: direct or relay drawn per rollout
_OFFS = np.array(NEIGHBOUR_OFFSETS, np.int64)
_RATE = 23       # counter stream of the per-cell fire rates (apart from sim.rng's)


@dataclass(frozen=True)
class LinkSpec:
    """The wires of a training rollout (all zero: the paper's synchronous grid)."""
    latency_dist: str = "const"
    latency: float = 0.0          # const value, uniform low, exponential mean (steps)
    latency_high: float = 0.0     # uniform high
    msg_loss: float = 0.0         # fraction of lost messages
    burst: float = 0.0            # mean length of a run of lost messages (0: independent)
    drift: float = 0.0            # per-cell fire rate spread, +- fraction
    max_delay: int = 6            # ages are cut here (the state history kept)
    clock: str = "exp"            # random (exp) or regular (periodic) fire; mix: drawn per rollout
    links: str = "direct"         # direct: 8 links; relay: 4, the diagonals relayed (sim.rules); mix

    @property
    def active(self) -> bool:
        return bool(self.latency or self.latency_high or self.msg_loss or self.drift
                    or self.clock != "exp" or self.links != "direct")

    def validate(self) -> None:
        if self.latency_dist not in LATENCY_DISTS:
            raise UserError(f"unknown --latency-dist {self.latency_dist!r} (choose from {', '.join(LATENCY_DISTS)})")
        for name, v in (("latency", self.latency), ("latency-high", self.latency_high)):
            if not (math.isfinite(v) and v >= 0):
                raise UserError(f"--{name} must be a number >= 0, got {v}")
        if self.latency_dist == "uniform" and self.latency_high < self.latency:
            raise UserError("--latency-dist uniform needs --latency <= --latency-high")
        if not 0.0 <= self.msg_loss < 1.0:
            raise UserError(f"--msg-loss must be in [0, 1), got {self.msg_loss}")
        if self.burst != 0.0 and not self.burst >= 1.0:
            raise UserError(f"--burst must be >= 1 (or 0: independent losses), got {self.burst}")
        if self.burst and self.msg_loss > self.burst / (self.burst + 1.0):
            raise UserError(f"--msg-loss {self.msg_loss} is too high for bursts of mean length {self.burst} "
                            f"(at most {self.burst / (self.burst + 1.0):.3g})")
        if not 0.0 <= self.drift < 1.0:
            raise UserError(f"--drift must be in [0, 1), got {self.drift}")
        if self.clock not in CLOCKS:
            raise UserError(f"unknown --clock {self.clock!r} (choose from {', '.join(CLOCKS)})")
        if self.links not in WIRINGS:
            raise UserError(f"unknown --links {self.links!r} (choose from {', '.join(WIRINGS)})")
        if not 1 <= self.max_delay <= 32:
            raise UserError(f"--max-delay must be in [1, 32], got {self.max_delay}")

    def draw(self, gen: np.random.Generator) -> LinkSpec:
        """The wires of one rollout: `mix` draws a kind and a level in [0, latency]
        (const: the level; uniform: [0, 2 level]; exp: mean level) and a loss in
        [0, msg_loss]; a clock or links `mix` one of its kinds; the other kinds are
        what they say."""
        clock = self.clock if self.clock != "mix" else CLOCKS[int(gen.integers(2))]
        links = self.links if self.links != "mix" else WIRINGS[int(gen.integers(2))]
        if self.latency_dist != "mix":
            return replace(self, clock=clock, links=links)
        kind = LATENCY_KINDS[int(gen.integers(3))]
        level = float(gen.uniform(0.0, self.latency))
        loss = float(gen.uniform(0.0, self.msg_loss)) if self.msg_loss else 0.0
        return LinkSpec(kind, level, 2 * level if kind == "uniform" else 0.0, loss, self.burst,
                        self.drift, self.max_delay, clock, links)

    def asdict(self) -> dict:
        return asdict(self)

    def cfg(self) -> np.ndarray:
        """The numeric settings the kernels read."""
        return np.array([LATENCY_DISTS.index(self.latency_dist), self.latency, self.latency_high,
                         self.msg_loss, self.burst, self.drift, self.max_delay], np.float64)


# ------------------------------------------------------------------------------ the wires' state

_G = np.uint64(0x9E3779B97F4A7C15)
_K = np.uint64(0xD1B54A32D192ED03)
_U24 = 1.0 / 16777216.0
_EXP_Q = -np.log1p(-(np.arange(4096) + 0.5) / 4096)   # exponential quantiles, 12-bit resolution


@nb.njit(cache=True, inline="always")
def link_draws(key, t, link, cfg):
    """(latency, loss uniform) of the message sent at step t on link (flat index
    (cell * 8 + slot) over the batch): one 64-bit hash, 24 bits each (training
    draws, not the simulators' replayable ones)."""
    h = rng.mix64(rng.mix64(np.uint64(key) + _G) ^ (np.uint64(link) * _G + np.uint64(t) * _K))
    u_lat = float(h >> np.uint64(40)) * _U24
    lat = cfg[1]
    kind = int(cfg[0])
    if kind == 1:
        lat = cfg[1] + (cfg[2] - cfg[1]) * u_lat
    elif kind == 2:
        lat = cfg[1] * _EXP_Q[h >> np.uint64(52)]
    return min(lat, cfg[6]), float(h & np.uint64(0xFFFFFF)) * _U24


@nb.njit(cache=True, parallel=True)
def _advance(key, t, cfg, bad, pend_arr, pend_sent, held_sent, held_arr, ages):
    """Send step t's messages on every link and deliver what has arrived by t:
    ages[b, y, x, s] = t - (send step of the message in slot s), cut at max_delay.
    A message sent at t with latency l arrives at t + l, in the bucket of the first
    step that sees it (ceil(t + l)); pend_arr/pend_sent (B*H, W, 8, max_delay + 1)
    keep per link and bucket the latest arrival and its send step, bad the link's
    Gilbert-Elliott state."""
    B, H, W, S = ages.shape
    D = int(cfg[6])
    R = D + 1
    p = cfg[3]
    L = cfg[4]
    good_to_bad = p / (L * (1.0 - p)) if L >= 1.0 else 0.0
    cur = t % R
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            for s in range(S):
                lat, u_loss = link_draws(key, t, (r * W + xx) * S + s, cfg)
                lost = False
                if t == 0:             # the boot-time exchange: everyone knows step 0
                    lat = 0.0
                elif p > 0.0:
                    if L >= 1.0:
                        lost = u_loss >= 1.0 / L if bad[r, xx, s] else u_loss < good_to_bad
                        bad[r, xx, s] = lost
                    else:
                        lost = u_loss < p
                if not lost:
                    arr = t + lat
                    k = math.ceil(arr) % R
                    if arr >= pend_arr[r, xx, s, k]:      # ties: the later send
                        pend_arr[r, xx, s, k] = arr
                        pend_sent[r, xx, s, k] = t
                arr = pend_arr[r, xx, s, cur]
                if arr >= held_arr[r, xx, s]:             # the latest arrival overwrites the slot
                    held_arr[r, xx, s] = arr
                    held_sent[r, xx, s] = pend_sent[r, xx, s, cur]
                pend_arr[r, xx, s, cur] = -1.0
                ages[b, y, xx, s] = min(t - held_sent[r, xx, s], D)


@nb.njit(cache=True, parallel=True)
def _relay_ages(t, D, ages, side, lastfire, lastfire_ring):
    """Relayed diagonals: first keep this step's W and E ages and each cell's last fire
    before t in rings (depth D + 1), then overwrite the diagonal ages with the relayed
    ones: the frame from the N (S) neighbour held at t was sent at tau = t - age; it
    carries the relay's W and E as the relay perceived them at its last fire sigma
    before tau, so the diagonal is t - sigma + side[sigma] old."""
    B, H, W, _ = ages.shape
    R = D + 1
    cur = t % R
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            side[cur, b, y, xx, 0] = ages[b, y, xx, SLOT_W]
            side[cur, b, y, xx, 1] = ages[b, y, xx, SLOT_E]
            lastfire_ring[cur, b, y, xx] = lastfire[b, y, xx]
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            for k in range(2):
                relay, dw, de, ry = SLOT_N, SLOT_NW, SLOT_NE, y - 1
                if k == 1:
                    relay, dw, de, ry = SLOT_S, SLOT_SW, SLOT_SE, y + 1
                if ry < 0 or ry >= H:
                    continue
                tau = t - ages[b, y, xx, relay]
                sigma = lastfire_ring[tau % R, b, ry, xx]
                if t - sigma >= D:
                    ages[b, y, xx, dw] = D
                    ages[b, y, xx, de] = D
                else:
                    ages[b, y, xx, dw] = min(t - sigma + side[sigma % R, b, ry, xx, 0], D)
                    ages[b, y, xx, de] = min(t - sigma + side[sigma % R, b, ry, xx, 1], D)


@nb.njit(cache=True)
def _fire_rates(key, spread, rates):
    B, H, W = rates.shape
    for b in range(B):
        for y in range(H):
            for x in range(W):
                u = rng.uniform(key, _RATE, (b * H + y) * W + x, 0)
                rates[b, y, x] = FIRE_RATE * (1.0 + spread * (2.0 * u - 1.0))


class Wires:
    """The links of one rollout: per step, the age of every link (`advance`), and
    the fire decisions with per-cell rates (`fire`)."""

    def __init__(self, spec: LinkSpec, key: int, shape: tuple[int, int, int]) -> None:
        B, H, W = shape
        self.spec = spec
        self.key = int(key)
        self.cfg = spec.cfg()
        R = spec.max_delay + 1
        self.bad = np.zeros((B * H, W, 8), np.bool_)
        self.pend_arr = np.full((B * H, W, 8, R), -1.0)
        self.pend_sent = np.zeros((B * H, W, 8, R), np.int32)
        self.held_sent = np.zeros((B * H, W, 8), np.int32)
        self.held_arr = np.full((B * H, W, 8), -1.0)
        self.rates = np.empty(shape, np.float32)
        _fire_rates(self.key, spec.drift, self.rates)
        self.phase = np.random.default_rng(self.key + 1).random(shape)
        self.gen = np.random.default_rng(self.key)
        self.shape = shape
        self.relay = spec.links == "relay"
        if self.relay:      # the relays' W and E ages and last fires of the last depth steps
            self.side = np.zeros((R, B, H, W, 2), np.uint8)
            self.lastfire = np.zeros(shape, np.int32)       # the boot-time exchange counts as a fire at 0
            self.lastfire_ring = np.zeros((R, B, H, W), np.int32)

    def fresh(self) -> Wires:
        """The same links from step 0 again (another rollout on the same wires)."""
        return Wires(self.spec, self.key, self.shape)

    @property
    def depth(self) -> int:
        """States kept: the current one and max_delay before it."""
        return self.spec.max_delay + 1

    def advance(self, t: int, ages: np.ndarray) -> None:
        """Fill ages (B, H, W, 8) uint8 for step t (steps must come in order from 0)."""
        _advance(self.key, t, self.cfg, self.bad, self.pend_arr, self.pend_sent, self.held_sent,
                 self.held_arr, ages)
        if self.relay:
            _relay_ages(t, self.spec.max_delay, ages, self.side, self.lastfire, self.lastfire_ring)

    def fire(self, t: int) -> np.ndarray:
        if self.spec.clock == "periodic":       # a tick whenever rate * t + phase crosses an integer
            r = self.rates.astype(np.float64)
            return np.floor(r * t + self.phase) > np.floor(r * (t - 1) + self.phase)
        return self.gen.random(self.shape, dtype=np.float32) < self.rates

    def fired(self, t: int, mask: np.ndarray) -> None:
        """The cells that fired at step t (after advance(t)): what they relay from t + 1 on."""
        if self.relay:
            self.lastfire[mask] = t


# ------------------------------------------------------------------------------ delayed kernels

@nb.njit(cache=True, inline="always")
def _slot(dy, dx):
    """NEIGHBOUR_OFFSETS index of offset (dy, dx) != (0, 0)."""
    k = (dy + 1) * 3 + (dx + 1)
    return k if k < 4 else k - 1


@nb.njit(cache=True, inline="always")
def _knows_alive(own_alpha, alive, t, ages, b, y, xx):
    """The alive rule on what cell (b, y, xx) knows at step t: its own alpha, or a
    neighbour alive as perceived (alive[(t - age) % depth]); outside the grid is dead."""
    if own_alpha > ALIVE_THRESHOLD:
        return True
    R, _, H, W = alive.shape
    for s in range(8):
        yy = y + _OFFS[s, 0]
        xj = xx + _OFFS[s, 1]
        if 0 <= yy < H and 0 <= xj < W and alive[(t - ages[b, y, xx, s]) % R, b, yy, xj]:
            return True
    return False


def _alive_delayed(alive, t, ages, own, out):
    """out[b,y,x] = own[b,y,x] alpha > threshold or any neighbour alive as perceived
    (alive[(t - age) % depth], the ring of alpha > threshold); outside the grid reads dead."""
    B, H, W, _ = own.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            out[b, y, xx] = _knows_alive(own[b, y, xx, ALPHA], alive, t, ages, b, y, xx)


def _gather_delayed(hist, t, ages, idx, kxy, P):
    """P[r] = [x, Kx*n, Ky*n, 1] of cell idx[r], n the 3x3 neighbourhood with the
    cell's own current state at the centre and each neighbour as perceived."""
    R, _, H, W, C = hist.shape
    cur = t % R
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        xx = q % W
        y = (q // W) % H
        b = q // (W * H)
        for c in range(C):
            P[r, c] = hist[cur, b, y, xx, c]
            P[r, C + c] = 0.0
            P[r, 2 * C + c] = 0.0
        for i in range(3):
            yy = y + i - 1
            if yy < 0 or yy >= H:
                continue
            for j in range(3):
                xj = xx + j - 1
                if xj < 0 or xj >= W:
                    continue
                sl = cur
                if i != 1 or j != 1:
                    sl = (t - ages[b, y, xx, _slot(i - 1, j - 1)]) % R
                kx = kxy[0, i, j]
                ky = kxy[1, i, j]
                for c in range(C):
                    v = hist[sl, b, yy, xj, c]
                    P[r, C + c] += kx * v
                    P[r, 2 * C + c] += ky * v
        P[r, 3 * C] = 1.0


def _post_keep(x, alive, t, ages, pre, fire, keep):
    """keep = 1 for cells that did not fire (they did not act); for fired cells
    pre & post, post read on the own updated alpha x and the perceived neighbours."""
    B, H, W, _ = x.shape
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            if not fire[b, y, xx]:
                keep[b, y, xx] = True
                continue
            if not pre[b, y, xx]:
                keep[b, y, xx] = False
                continue
            keep[b, y, xx] = _knows_alive(x[b, y, xx, ALPHA], alive, t, ages, b, y, xx)


def _stencil_transpose_delayed(G, t, idx, gp, kxy, rowmap, ages):
    """The transposed delayed perception: row p's tap on neighbour q goes to q's
    gradient at the step p perceived it, G[(t - age) % depth]; the identity part to
    p's own state at t. A gather over the receiving cells (no two threads write one
    cell of one slot)."""
    R, B, H, W, C = G.shape
    cur = t % R
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            rowmap[b, y, xx] = -1
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        rowmap[q // (W * H), (q // W) % H, q % W] = r
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            for i in range(3):
                py = y - (i - 1)
                if py < 0 or py >= H:
                    continue
                for j in range(3):
                    px = xx - (j - 1)
                    if px < 0 or px >= W:
                        continue
                    rp = rowmap[b, py, px]
                    if rp < 0:
                        continue
                    sl = cur
                    if i != 1 or j != 1:
                        sl = (t - ages[b, py, px, _slot(i - 1, j - 1)]) % R
                    kx = kxy[0, i, j]
                    ky = kxy[1, i, j]
                    for c in range(C):
                        G[sl, b, y, xx, c] += kx * gp[rp, C + c] + ky * gp[rp, 2 * C + c]
            rq = rowmap[b, y, xx]
            if rq >= 0:
                for c in range(C):
                    G[cur, b, y, xx, c] += gp[rq, c]


def _chain_keep(G, t, keep, idx, gdx):
    """G[t] += keep * G[t+1] (x_{t+1} = (x_t + dx) * keep), gdx[r] = keep * G[t+1] at row r,
    then G[t+1] is cleared for the step depth-1 further back."""
    R, B, H, W, C = G.shape
    nxt = (t + 1) % R
    cur = t % R
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            if not keep[b, y, xx]:
                for c in range(C):
                    G[nxt, b, y, xx, c] = 0.0
    for r in nb.prange(idx.shape[0]):
        q = idx[r]
        for c in range(C):
            gdx[r, c] = G[nxt, q // (W * H), (q // W) % H, q % W, c]
    for r in nb.prange(B * H):
        b = r // H
        y = r % H
        for xx in range(W):
            for c in range(C):
                G[cur, b, y, xx, c] += G[nxt, b, y, xx, c]
                G[nxt, b, y, xx, c] = 0.0


_KERNELS = (_alive_delayed, _gather_delayed, _post_keep, _stencil_transpose_delayed, _chain_keep)
SERIAL = type("Kernels", (), {f.__name__: staticmethod(compiled_variant(f, "_serial", False))
                              for f in _KERNELS})
PARALLEL = type("Kernels", (), {f.__name__: staticmethod(compiled_variant(f, "_parallel", True))
                                for f in _KERNELS})
