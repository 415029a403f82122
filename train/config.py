"""The settings of a training run (`TrainConfig`): recorded in the model's
metadata, checked against a checkpoint on --resume; which of them a resumed run
may change (the schedule: a new stage of the same run)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.errors import UserError

from .links import LinkSpec

KINDS = ("growing", "persistent", "regenerating")
CKPT_VERSION = 1
DAMAGE_N = 3
DAMAGE_SHAPES = ("circle", "mixed", "slip", "only-slips")
NOISE_ON = ("all", "regrowing")   # which samples' updates --state-noise disturbs
SCHEDULE_KEYS = ("lr", "lr_drop_at", "lr_after", "min_steps", "max_steps",   # --resume may change these
                 "damage_n", "damage_shapes", "cut_copies", "regrow_visits", "distill", "state_range", "noise_on",
                 "path_loss", "path_every",
                 "latency_dist", "latency", "latency_high", "msg_loss", "burst", "drift", "max_delay", "clock",
                 "wiring")


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from; the message names the problem."""


@dataclass
class TrainConfig:
    """Settings of a run; recorded in the model's metadata and checked on --resume."""
    target: str = "lizard"
    kind: str = "regenerating"
    iterations: int = 8000
    batch: int = 8
    pool: int = 1024
    pad: int = 16
    seed: int = 0
    rotate_train: bool = False
    lr: float = 2e-3
    lr_drop_at: int = 2000
    lr_after: float = 2e-4
    min_steps: int = 64
    max_steps: int = 95
    damage_n: int = DAMAGE_N
    damage_shapes: str = "circle"    # mixed: half straight; slip: a third slipped discs; only-slips (train.cuts)
    cut_copies: int = 1              # each cut run this many times from the same wound (forks)
    regrow_visits: int = 0           # a damaged sample is neither reseeded nor cut again for this many visits
    init: str | None = None          # start from this model's weights (fine-tuning)
    qat: bool = False                # the firmware's rounding in the loop (train.qat)
    distill: float = 0.0             # weight of the pull towards the --init model's float rollout
    state_noise: float = 0.0         # uniform noise on each update, in the fixed-point state's steps
    noise_on: str = "all"            # regrowing: the noise only on samples cut within --regrow-visits
    state_range: float = 0.0         # weight of the push of hidden channels back inside the int8 state's range
    path_loss: float = 0.0           # weight of the picture loss along the rollout, outside this batch's cuts
    path_every: int = 10             # ... on every path_every-th state
    error_feedback: bool = False     # with qat: the cells keep 4 more bits of their own state (EF_BITS)
    latency_dist: str = "const"      # the wires between the cells (train.links): message latency,
    latency: float = 0.0             # loss and clock rate spread in the rollouts
    latency_high: float = 0.0
    msg_loss: float = 0.0
    burst: float = 0.0
    drift: float = 0.0
    max_delay: int = 6
    clock: str = "exp"
    wiring: str = "direct"           # --links: direct (8 links) or relay (4, the diagonals relayed)

    def links(self) -> LinkSpec:
        return LinkSpec(self.latency_dist, self.latency, self.latency_high, self.msg_loss, self.burst,
                        self.drift, self.max_delay, self.clock, self.wiring)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown kind {self.kind!r} (choose from {', '.join(KINDS)})")
        if self.iterations < 1:
            raise UserError(f"--iterations must be at least 1, got {self.iterations}")
        if self.batch < 1:
            raise UserError(f"--batch must be at least 1, got {self.batch}")
        if self.pad < 0:
            raise UserError(f"--pad must be >= 0, got {self.pad}")
        if not (1 <= self.min_steps <= self.max_steps):
            raise UserError(f"rollout length range [{self.min_steps}, {self.max_steps}] is empty "
                            f"or below 1")
        if self.kind != "growing" and self.pool < self.batch:
            raise UserError(f"--pool ({self.pool}) must be at least --batch ({self.batch})")
        if self.kind == "regenerating" and not (0 <= self.damage_n <= self.batch - 1):
            raise UserError(f"--damage-n must be in [0, batch-1], got {self.damage_n}")
        if self.damage_shapes not in DAMAGE_SHAPES:
            raise UserError(f"unknown --damage-shapes {self.damage_shapes!r} (choose from {', '.join(DAMAGE_SHAPES)})")
        if self.cut_copies < 1:
            raise UserError(f"--cut-copies must be at least 1, got {self.cut_copies}")
        if self.cut_copies > 1 and self.kind != "regenerating":
            raise UserError("--cut-copies runs each cut several times: it needs --kind regenerating")
        if self.kind == "regenerating" and self.damage_n * self.cut_copies > self.batch - 1:
            raise UserError(f"--damage-n x --cut-copies ({self.damage_n} x {self.cut_copies}) must leave the "
                            f"reseeded sample its place in the batch of {self.batch}")
        if self.regrow_visits < 0:
            raise UserError(f"--regrow-visits must be >= 0, got {self.regrow_visits}")
        if self.regrow_visits > 0 and self.kind != "regenerating":
            raise UserError("--regrow-visits keeps damaged samples in the pool: it needs --kind regenerating")
        if not (self.lr > 0 and self.lr_after > 0 and math.isfinite(self.lr)):
            raise UserError("--lr must be a positive number")
        if self.qat and self.init is None:
            raise UserError("--qat fine-tunes a trained model: give it with --init MODEL")
        if not (self.distill >= 0 and math.isfinite(self.distill)):
            raise UserError(f"--distill must be a number >= 0, got {self.distill}")
        if self.distill > 0 and not self.qat:
            raise UserError("--distill pulls a quantisation-aware fine-tuning towards its --init model: add --qat")
        if not (self.state_noise >= 0 and math.isfinite(self.state_noise)):
            raise UserError(f"--state-noise must be a number >= 0, got {self.state_noise}")
        if self.state_noise > 0 and (self.qat or self.init is None):
            raise UserError("--state-noise trains a float --init model against the fixed-point state's "
                            "step; --qat has the real rounding instead" if self.qat else
                            "--state-noise takes its state formats from a trained model: give it with --init MODEL")
        if self.noise_on not in NOISE_ON:
            raise UserError(f"unknown --noise-on {self.noise_on!r} (choose from {', '.join(NOISE_ON)})")
        if self.noise_on != "all" and not (self.state_noise > 0 and self.regrow_visits > 0):
            raise UserError("--noise-on regrowing puts --state-noise on the samples --regrow-visits keeps "
                            "regrowing: give both")
        if not (self.state_range >= 0 and math.isfinite(self.state_range)):
            raise UserError(f"--state-range must be a number >= 0, got {self.state_range}")
        if not (self.path_loss >= 0 and math.isfinite(self.path_loss)):
            raise UserError(f"--path-loss must be a number >= 0, got {self.path_loss}")
        if self.path_every < 1:
            raise UserError(f"--path-every must be at least 1, got {self.path_every}")
        if self.path_loss > 0 and self.kind == "growing":
            raise UserError("--path-loss holds a grown pattern along the rollouts: it needs a pool "
                            "(--kind persistent or regenerating)")
        if self.error_feedback and not self.qat:
            raise UserError("--error-feedback is a fixed-point cell's arithmetic: add --qat")
        if self.qat and self.rotate_train:
            raise UserError("--qat trains the unrotated integer perception; drop --rotate-train")
        self.links().validate()
        if self.init is not None and not Path(self.init).is_file():
            raise UserError(f"--init {self.init}: no such model file")

    def lr_at(self, iteration: int) -> float:
        """Piecewise-constant schedule (Keras PiecewiseConstantDecay([2000], [2e-3, 2e-4]))."""
        return self.lr if iteration < self.lr_drop_at else self.lr_after

    def resume_keys(self) -> dict[str, Any]:
        """Settings a checkpoint must share with the run that resumes it."""
        d = asdict(self)
        d.pop("iterations")
        for k in SCHEDULE_KEYS:
            d.pop(k)
        return d

    def schedule(self) -> dict[str, Any]:
        """The settings a resumed run may change (a new stage of the same run)."""
        d = asdict(self)
        return {k: d[k] for k in SCHEDULE_KEYS}
