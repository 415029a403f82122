"""Message-passing cells ticking together at integer times (`LockstepSwarm`): the
validation mode that equals the synchronous grid (`sim.grid`) bit for bit while
every cell sees only what it received, through the same rules as the event engines."""
from __future__ import annotations

import numba as nb
import numpy as np

from . import rng
from .model import ALPHA, CHANNELS, PERCEPTION
from .rules import alive_known, fill_inbox, keep_or_zero, mask_cells, neighbour_table, tentative
from .spec import Params

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
