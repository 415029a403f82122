"""Where the project's files are, the one place that knows: the shipped models
and target pictures (`weights/`), the firmware sources (`firmware/`) and the
cache of built firmware. In a git checkout they are the repository's folders;
installed from a wheel they are package data (`nca_swarm_files.*`)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
DATA_PACKAGE = "nca_swarm_files"     # pyproject.toml maps weights/ and firmware/ into it


def _folder(name: str) -> Path:
    """The checkout's folder when running from one, else the installed package data."""
    here = CHECKOUT / name
    if here.is_dir() and (CHECKOUT / "pyproject.toml").is_file():
        return here
    spec = importlib.util.find_spec(f"{DATA_PACKAGE}.{name}")
    if spec is None or not spec.submodule_search_locations:
        return here      # neither: the callers' own checks say what is missing
    return Path(list(spec.submodule_search_locations)[0])


WEIGHTS = _folder("weights")
FIRMWARE = _folder("firmware")
TARGETS = WEIGHTS / "targets"
DEFAULT_MODEL = WEIGHTS / "lizard_regenerating.npz"
BOARD_MODEL = WEIGHTS / "lizard_regenerating_robust_ef.npz"   # the mesh's default: the firmware's model, updates scaled for the wires
FIXTURE_MODEL = WEIGHTS / "fixture_blob.npz"


def shipped_models() -> list[Path]:
    """The .npz models shipped in weights/, sorted by name."""
    return sorted(p for p in WEIGHTS.glob("*.npz") if p.is_file())


def model_path(name_or_path: str | os.PathLike) -> Path:
    """A model given by path, or by the name of a shipped model (`lizard_regenerating_ef`,
    with or without .npz). An existing file wins over a shipped name; anything else is
    returned as a path, for the loader to report."""
    p = Path(name_or_path)
    if p.is_file() or len(p.parts) != 1:
        return p
    shipped = WEIGHTS / (p.name if p.suffix == ".npz" else p.name + ".npz")
    return shipped if shipped.is_file() else p


def output_folder() -> Path:
    """Where a command writes a new model by default: weights/ of a checkout, else the
    current folder (an installed package's data is not the user's to write into)."""
    return WEIGHTS if WEIGHTS.parent == CHECKOUT else Path.cwd()


def cache_dir() -> Path:
    """Where built firmware is kept between runs (one folder per model or source version)."""
    base = os.environ.get("NCA_CODEGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "nca-codegen")
    return Path(base)
