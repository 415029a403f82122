"""nca-train: train a Growing-NCA model for a target picture with the paper's recipe.

    nca-train --target lizard --kind regenerating --iterations 8000
    nca-train --target my.png --kind persistent --out my.npz
    nca-train --init M.npz --state-noise 1 --out M_noise.npz   # then, for the firmware:
    nca-train --init M_noise.npz --qat [--error-feedback] --out M_qat.npz
    nca-train --tune-biases --init M_qat.npz --out M_qat.npz
    nca-train --odds-es --init M.npz --es-steps 40 --out M_es.npz   # the regrowth odds themselves

The loop is train.loop; this module parses, checks (one-line errors, exit 2) and
turns SIGTERM into a checkpoint and a clean stop.
"""
from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from codegen.quantize import QuantizeError
from sim import paths
from sim.errors import ArgParser, UserError, cli_entry
from sim.pictures import EMOJI, load_target, pad_target
from sim.weights import load as load_model
from sim.weights import save as save_model

from .checkpoint import target_digest
from .config import DAMAGE_N, DAMAGE_SHAPES, KINDS, NOISE_ON, TrainConfig
from .links import CLOCKS, LATENCY_DISTS, WIRINGS
from .loop import HIDDEN_RANGE, train
from .odds_es import CELLS as ES_CELLS, SCORES as ES_SCORES, OddsES, odds_es
from .tune import tune_output_biases


def _check_writable(out: Path) -> None:
    """Fail before hours of training, not after: the output folder must take a file."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'model.npz'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {out.parent}: {e.strerror or e}") from None


def _parser() -> ArgParser:
    ap = ArgParser(prog="nca-train", description=(
        "Train a Growing-NCA model for a target picture with the paper's recipe "
        "(growing, persistent or regenerating). Writes OUT (.npz), OUT's folder/curves/"
        "<name>_loss.png and <name>_pool.png, and a checkpoint OUT.ckpt.npz while running."))
    ap.add_argument("--target", default="lizard", help="shipped target name (lizard, smiley, ...) "
                    "or an image path (default: %(default)s)")
    ap.add_argument("--kind", choices=KINDS, default="regenerating", help="experiment (default: %(default)s)")
    ap.add_argument("--iterations", type=int, default=8000, help="total iterations (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    ap.add_argument("--pool", type=int, default=1024, help="pool size (default: %(default)s)")
    ap.add_argument("--pad", type=int, default=16, help="target padding per side (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    ap.add_argument("--rotate-train", action="store_true",
                    help="random perception rotation angle per batch (our extension)")
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate (default: %(default)s)")
    ap.add_argument("--lr-drop-at", type=int, default=2000,
                    help="iteration at which lr drops to --lr-after (default: %(default)s)")
    ap.add_argument("--lr-after", type=float, default=2e-4, help="(default: %(default)s)")
    ap.add_argument("--min-steps", type=int, default=64, help="shortest rollout (default: %(default)s)")
    ap.add_argument("--max-steps", type=int, default=95, help="longest rollout (default: %(default)s)")
    ap.add_argument("--damage-n", type=int, default=DAMAGE_N,
                    help="regenerating: samples damaged per batch (default: %(default)s)")
    ap.add_argument("--damage-shapes", choices=DAMAGE_SHAPES, default="circle",
                    help="regenerating: circle (the paper's cuts), mixed (each cut a circle or, with "
                         "even odds, a straight cut taking a third to a half of the picture), slip (a "
                         "circle, a straight cut or, a third of the time, a small disc of tissue moved by "
                         "one cell, which must move back) or only-slips (every cut such a disc; "
                         "default: %(default)s)")
    ap.add_argument("--cut-copies", type=int, default=1, metavar="K",
                    help="regenerating: each cut is run K times in the batch, from the same wound under "
                         "different fire orders, so that one gradient step holds the runs that regrow in "
                         "place and those that move (default: 1, the paper's recipe)")
    ap.add_argument("--regrow-visits", type=int, default=0, metavar="K",
                    help="regenerating: a damaged sample stays in the pool for its next K visits (not "
                         "replaced by the seed however bad, not cut again), so the whole regrowth is "
                         "trained, not only its first rollout (default: 0, the paper's recipe)")
    ap.add_argument("--init", metavar="MODEL", help="start from this model's weights (fine-tuning; a path "
                    "or a shipped model's name)")
    ap.add_argument("--qat", action="store_true",
                    help="quantisation-aware fine-tuning of the --init model: the forward runs the "
                         "firmware's integer arithmetic (int8 weights, gradient inputs, hidden units and "
                         "state), the gradients pass its rounding straight through, so that nca-codegen's "
                         "fixed-point cell keeps the pattern")
    ap.add_argument("--distill", type=float, default=0.0, metavar="W",
                    help="with --qat: also pull the integer rollout's 16 channels towards the --init "
                         "model's float rollout from the same states (weight W, e.g. 0.1; default: off)")
    ap.add_argument("--state-noise", type=float, default=0.0, metavar="W",
                    help="float fine-tuning of the --init model with uniform noise W steps of its "
                         "fixed-point state format wide added to every state change (e.g. 1.0: the "
                         "rounding's size), so that the pattern survives the firmware's rounding; a "
                         "start for --qat, which keeps the formats it records (default: off)")
    ap.add_argument("--noise-on", choices=NOISE_ON, default="all",
                    help="with --state-noise: all samples, or only those regrowing from a cut (within "
                         "--regrow-visits), so that the grown pattern is trained without the noise and its "
                         "regrowth with it (default: all)")
    ap.add_argument("--state-range", type=float, default=0.0, metavar="W",
                    help="also push the hidden channels back inside the range the firmware's int8 state "
                         f"holds them in (Q2.5: +-{HIDDEN_RANGE:.2f}) at each rollout's end (weight W on the "
                         "mean squared excess, e.g. 0.1), so that a model whose hidden states range wider can "
                         "be quantised without clipping them (default: off)")
    ap.add_argument("--path-loss", type=float, default=0.0, metavar="W",
                    help="also compare the picture with the target every --path-every steps along each "
                         "rollout, not only at its end (weight W on the mean over those states, e.g. 1.0), on "
                         "every sample but the new seed, and for a sample cut in this batch only outside its "
                         "cut: the tissue a cut spares is held in place while the rest regrows (default: off)")
    ap.add_argument("--path-every", type=int, default=10, metavar="N",
                    help="with --path-loss: every N-th state of the rollout (default: %(default)s)")
    ap.add_argument("--error-feedback", action="store_true",
                    help="with --qat: train the fixed-point cell that keeps 4 more bits of its own "
                         "state (error feedback; its neighbours and its network see the int8 state), so that "
                         "updates below half a state step are not lost (recorded in the model)")
    w = ap.add_argument_group("the wires in the loop (train.links; default: the paper's synchronous grid)")
    w.add_argument("--latency", type=float, default=0.0, help="message latency in steps (const: the value; "
                   "uniform: the low end; exp: the mean; mix: the highest level drawn)")
    w.add_argument("--latency-dist", choices=LATENCY_DISTS, default="const",
                   help="latency per message; mix: per rollout a kind and a level in [0, --latency] "
                        "(default: %(default)s)")
    w.add_argument("--latency-high", type=float, default=0.0, help="high end of a uniform latency")
    w.add_argument("--msg-loss", type=float, default=0.0, help="fraction of lost messages (the last "
                   "received state is kept; mix: drawn per rollout in [0, this])")
    w.add_argument("--burst", type=float, default=0.0, metavar="L",
                   help="lost messages come in runs of mean length L per link (Gilbert-Elliott)")
    w.add_argument("--drift", type=float, default=0.0, help="each cell's fire rate off by up to +- this "
                   "fraction (clocks that run at different rates)")
    w.add_argument("--max-delay", type=int, default=6, help="longest delay kept, in steps (default: %(default)s)")
    w.add_argument("--clock", choices=CLOCKS, default="exp", help="exp: a cell fires with probability "
                   "0.5 each step (the paper's); periodic: every 2 steps from a random phase (a crystal); "
                   "mix: one of them per rollout (default: %(default)s)")
    w.add_argument("--links", choices=WIRINGS, default="direct", help="direct: each cell hears its 8 "
                   "neighbours; relay: its 4 orthogonal ones, which relay the diagonals as they last heard them "
                   "(the boards' wiring, as in python -m sim.run --links relay); mix: one of them per rollout "
                   "(default: %(default)s)")
    ap.add_argument("--tune-biases", action="store_true",
                    help="instead of training: tune the int16 output biases of the --init model (fine-tuned "
                         "with --qat) by a coordinate search on its fixed-point grid's picture loss, "
                         "regrowth after a cut kept (train.tune); writes the tuned model to --out")
    ap.add_argument("--tune-sweeps", type=int, default=4, metavar="N",
                    help="with --tune-biases: at most N sweeps over the 16 channels (default: %(default)s)")
    es = ap.add_argument_group("evolution strategies on the regrowth odds (train.odds_es)")
    es.add_argument("--odds-es", action="store_true",
                    help="instead of training: move the --init model's output layer along an estimate of the "
                         "gradient of how often a cut lizard regrows in place on the async swarm, from "
                         "antithetic pairs of random moves scored on the same wounds and fire orders")
    d = OddsES()
    es.add_argument("--es-steps", type=int, default=d.steps, help="steps (default: %(default)s)")
    es.add_argument("--es-directions", type=int, default=d.directions,
                    help="antithetic pairs per step (default: %(default)s)")
    es.add_argument("--es-runs", type=int, default=d.runs,
                    help="wounds per step, a multiple of the cuts (default: %(default)s)")
    es.add_argument("--es-sigma", type=float, default=d.sigma,
                    help="size of the random moves, in each array's spread (default: %(default)s)")
    es.add_argument("--es-step-length", type=float, default=d.step_length,
                    help="length of each update, in each array's spread (default: %(default)s)")
    es.add_argument("--es-pattern", type=float, default=d.pattern,
                    help="weight of the grown picture's -log10 loss beside the regrowth score "
                         "(default: %(default)s)")
    es.add_argument("--es-pattern-latency", type=float, default=d.pattern_latency, metavar="STEPS",
                    help="grow the lizard of --es-pattern with every message STEPS steps late, so the "
                         "latency tolerance is held too (default: %(default)s)")
    es.add_argument("--es-after", type=int, default=d.after,
                    help="steps of regrowth before a run is scored (default: %(default)s)")
    es.add_argument("--es-cut", action="append", default=None, metavar="DAMAGE",
                    help="a cut, as sim.run's --damage, all at one step; repeat for more (default: "
                         + " and ".join(d.cuts) + ")")
    es.add_argument("--es-score", choices=ES_SCORES, default=d.score,
                    help="place: how much nearer each regrown picture is to the old one than to it moved "
                         "a cell; mse: -log10 of its difference to the old one, so late runs count too "
                         "(default: %(default)s)")
    es.add_argument("--es-cells", choices=tuple(ES_CELLS), default=d.cells,
                    help="what computes the scored swarms' cells: float, or fixed (the firmware's integer "
                         "arithmetic, each move quantised in the format a --qat fine-tuning recorded) "
                         "(default: %(default)s)")
    es.add_argument("--es-workers", type=int, default=2, help="processes (default: %(default)s)")
    ap.add_argument("--out", help="output .npz (default: weights/<target>_<kind>.npz)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from OUT.ckpt.npz; --iterations, the learning-rate settings, "
                         "the rollout lengths, --damage-n, --damage-shapes, --cut-copies, --regrow-visits, --distill, --noise-on, "
                         "--state-range and the wires may differ "
                         "(a new stage, recorded in the model's metadata)")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="iterations between checkpoints, 0 = only on interrupt (default: %(default)s)")
    ap.add_argument("--keep-checkpoint", action="store_true",
                    help="keep OUT.ckpt.npz after the model is saved (to extend the run later)")
    return ap


def _tune_biases(args: Any) -> int:
    """nca-train --tune-biases: train.tune on the --init model, written to --out."""
    if not args.init:
        raise UserError("--tune-biases needs --init MODEL (a model fine-tuned with --qat)")
    if args.qat or args.resume or args.distill or args.state_noise:
        raise UserError("--tune-biases does not train: drop --qat, --distill, --state-noise and --resume")
    if args.tune_sweeps < 1:
        raise UserError(f"--tune-sweeps must be >= 1, got {args.tune_sweeps}")
    out = Path(args.out) if args.out else _default_out(args.target, args.kind)
    _check_writable(out)
    model = load_model(paths.model_path(args.init))
    target = load_target(args.target)       # 40 x 40: the swarm's grid
    trained = model.meta.get("training", {})
    if "target_digest" in trained and "pad" in trained:
        if target_digest(pad_target(target, int(trained["pad"]))) != trained["target_digest"]:
            raise UserError(f"--init {args.init} was trained for another picture than --target "
                            f"{args.target}; give the target it was trained for")
    t0 = time.time()
    try:
        tuned, entry = tune_output_biases(model, target, sweeps=args.tune_sweeps,
                                          log=lambda s: print(s, flush=True))
    except QuantizeError as e:
        raise UserError(f"--init {args.init}: {e}") from None
    save_model(out, tuned)
    print(f"saved {out}: pattern loss {entry['loss_before']:.3e} -> {entry['loss_after']:.3e}, regrowth "
          f"{entry['regrow_before']:.3e} -> {entry['regrow_after']:.3e} ({entry['sweeps']} sweeps, "
          f"{time.time() - t0:.0f} s; changes {entry['b2_changes']})", flush=True)
    return 0


def _odds_es(args: Any) -> int:
    """nca-train --odds-es: train.odds_es on the --init model, written to --out every 10 steps."""
    if not args.init:
        raise UserError("--odds-es needs --init MODEL (a grown, regenerating model)")
    if args.qat or args.resume or args.distill or args.state_noise or args.tune_biases:
        raise UserError("--odds-es does not train by gradient: drop --qat, --distill, --state-noise, "
                        "--tune-biases and --resume (continue a run with --init its output)")
    if args.es_workers < 1:
        raise UserError(f"--es-workers must be >= 1, got {args.es_workers}")
    cfg = OddsES(steps=args.es_steps, directions=args.es_directions, runs=args.es_runs,
                 sigma=args.es_sigma, step_length=args.es_step_length, pattern=args.es_pattern,
                 after=args.es_after, cuts=tuple(args.es_cut or OddsES().cuts), seed=args.seed,
                 score=args.es_score, cells=args.es_cells, pattern_latency=args.es_pattern_latency)
    cfg.validate()
    out = Path(args.out) if args.out else _default_out(args.target, args.kind)
    _check_writable(out)
    model = load_model(paths.model_path(args.init))
    target = load_target(args.target)
    with _sigterm_stops() as stop:
        odds_es(model, target, cfg, workers=args.es_workers, log=lambda s: print(s, flush=True),
                stop=stop, save=lambda m: save_model(out, m))
    print(f"saved {out}", flush=True)
    return 0


@contextmanager
def _sigterm_stops() -> Iterator[Callable[[], bool]]:
    """While inside: SIGTERM does not kill, it sets what the yielded callable returns, so the
    run checkpoints (or saves) and stops as after Ctrl-C."""
    stopping = {"flag": False}

    def on_term(signum, frame):
        stopping["flag"] = True

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield lambda: stopping["flag"]
    finally:
        signal.signal(signal.SIGTERM, old)


def _default_out(target: str, kind: str) -> Path:
    """<name>_<kind>.npz in weights/ (a checkout) or here (an installed package): the
    emoji's name, or the picture file's stem."""
    name = next((n for n, ch in EMOJI.items() if target.replace("\ufe0f", "") in (n, ch)), None)
    name = name or Path(target).stem
    return paths.output_folder() / f"{name}_{kind}.npz"


def _main(argv: Sequence[str] | None = None) -> int:
    """nca-train entry point."""
    args = _parser().parse_args(argv)
    if args.odds_es:
        return _odds_es(args)
    if args.tune_biases:
        return _tune_biases(args)
    cfg = TrainConfig(target=args.target, kind=args.kind, iterations=args.iterations,
                      batch=args.batch, pool=args.pool, pad=args.pad, seed=args.seed,
                      rotate_train=args.rotate_train, lr=args.lr, lr_drop_at=args.lr_drop_at,
                      lr_after=args.lr_after, min_steps=args.min_steps, max_steps=args.max_steps,
                      damage_n=args.damage_n, damage_shapes=args.damage_shapes, cut_copies=args.cut_copies,
                      regrow_visits=args.regrow_visits,
                      init=str(paths.model_path(args.init)) if args.init else None, qat=args.qat,
                      distill=args.distill, state_noise=args.state_noise, noise_on=args.noise_on,
                      state_range=args.state_range, path_loss=args.path_loss, path_every=args.path_every,
                      error_feedback=args.error_feedback, latency_dist=args.latency_dist,
                      latency=args.latency, latency_high=args.latency_high, msg_loss=args.msg_loss,
                      burst=args.burst, drift=args.drift, max_delay=args.max_delay, clock=args.clock,
                      wiring=args.links)
    cfg.validate()
    if args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    out = Path(args.out) if args.out else _default_out(args.target, args.kind)
    _check_writable(out)
    load_target(cfg.target)    # a bad target fails now, with its own one-line message
    with _sigterm_stops() as stop:
        train(cfg, out, resume=args.resume, checkpoint_every=args.checkpoint_every,
              keep_checkpoint=args.keep_checkpoint, stop=stop)
    return 0


_main.prog = "nca-train"  # type: ignore[attr-defined]
main = cli_entry(_main)

if __name__ == "__main__":
    sys.exit(main())
