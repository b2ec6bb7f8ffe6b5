"""Folding one matrix: `fold` for NumPy or torch `[N, N]`, `fold_file` for a file on disk.

Both validate their input first and raise a ValueError that names the bad
value (NaN/inf/negative known entries, asymmetry, disconnected points, ...)
before any work or any file is written; then they run a `Folder` on a batch
of one.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from minifold.folding.folder import Folder
from minifold.geometry import connected_to_first

log = logging.getLogger(__name__)

# Relative to the largest known distance: how far from symmetric (or from a zero
# diagonal) an input to `fold` may be and still count as a distance matrix.
SYMMETRY_TOLERANCE = 1e-6


def _validate_matrix(distances: Tensor, dim: int, known: Tensor) -> None:
    """Raise ValueError naming the first thing that makes `distances` unfoldable."""
    num = distances.shape[0]
    if dim < 1:
        raise ValueError(f"dim is {dim}; it must be >= 1")
    values = distances[known]
    if bool(torch.isnan(values).any()):
        raise ValueError("distances contain NaN in known entries; mark unknown pairs with mask")
    if bool(torch.isinf(values).any()):
        raise ValueError("distances contain inf in known entries; mark unknown pairs with mask")
    if bool((values < 0).any()):
        raise ValueError(
            f"distances contain negative values (min {values.min().item():g}); need >= 0"
        )
    scale = float(values.abs().max()) if values.numel() else 0.0
    tolerance = SYMMETRY_TOLERANCE * scale
    diagonal = torch.diagonal(distances)[torch.diagonal(known)]
    if bool((diagonal.abs() > tolerance).any()):
        raise ValueError(
            f"diagonal has nonzero entries (largest {diagonal.abs().max().item():g}); "
            "a point's distance to itself must be 0"
        )
    both = known & known.T
    asymmetry = (distances - distances.T).abs()[both]
    if asymmetry.numel() and float(asymmetry.max()) > tolerance:
        raise ValueError(
            f"distances are not symmetric (largest |d_ij - d_ji| = {float(asymmetry.max()):g}, "
            f"tolerance {tolerance:g} = {SYMMETRY_TOLERANCE:g} x the largest distance)"
        )
    mask = torch.ones(1, num, dtype=torch.bool, device=distances.device)
    reached = connected_to_first(known[None], mask)[0]
    if not bool(reached.all()):
        lost = (~reached).nonzero()[:, 0].tolist()
        raise ValueError(
            f"known pairs split the points into disconnected groups: points {lost[:10]}"
            f"{'...' if len(lost) > 10 else ''} have no known path to point 0"
        )


def fold(
    distances: ArrayLike | Tensor,
    dim: int = 2,
    mask: ArrayLike | Tensor | None = None,
    folder: Folder | None = None,
    **options: Any,
) -> np.ndarray | Tensor:
    """Fold one distance matrix into coordinates.

    Args:
        distances: [N, N] NumPy array or torch tensor; entries where `mask` is
            False are ignored (they may be NaN)
        dim: dimension of the coordinates, >= 1 (beyond N - 1 the extra
            coordinates are zero)
        mask: [N, N] bool, True where the distance is known (symmetric); all if None
        folder: a configured Folder (its dim must equal `dim`); a new
            `Folder(dim=dim, **options)` if None
        **options: Folder keyword arguments (only without `folder`)
    Returns:
        [N, dim] positions centred at the origin, of the input's type (NumPy in,
        NumPy float64 out; torch in, torch out on the same device). N = 1 gives
        the origin and N = 2 two points on the first axis: no optimisation needed.
        Any scale of distances folds alike (they are divided by their RMS first).
    Raises:
        ValueError naming the problem: not a square 2-D matrix, NaN/inf/negative
        known entries, asymmetry or nonzero diagonal beyond SYMMETRY_TOLERANCE
        (relative), a mask of the wrong shape or asymmetric, known pairs that
        leave points disconnected, dim < 1, or a bool (or other non-number) matrix.
    """
    if not isinstance(distances, Tensor):
        array = np.asarray(distances)
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise ValueError(
                f"distances have dtype {array.dtype}; need real numbers (integers or floats)"
            )
        matrix = torch.from_numpy(array.astype(np.float64, copy=True))
    else:
        if distances.dtype == torch.bool or distances.dtype.is_complex:
            raise ValueError(
                f"distances have dtype {distances.dtype}; need real numbers (integers or floats)"
            )
        matrix = distances.detach().clone()
        if not matrix.dtype.is_floating_point:
            matrix = matrix.to(torch.float64)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"distances have shape {tuple(matrix.shape)}; need a square [N, N] matrix")
    num = matrix.shape[0]
    if num == 0:
        raise ValueError("distances are empty; need at least one point")
    if mask is None:
        known = torch.ones(num, num, dtype=torch.bool, device=matrix.device)
    else:
        known = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
        if tuple(known.shape) != (num, num):
            raise ValueError(f"mask has shape {tuple(known.shape)}; expected ({num}, {num})")
        if known.dtype != torch.bool:
            raise ValueError(f"mask has dtype {known.dtype}; need bool (True = known)")
        known = known.to(matrix.device)
        if not bool((known == known.T).all()):
            raise ValueError("mask is not symmetric; a pair is known in both directions or neither")
    _validate_matrix(matrix, int(dim), known)
    if folder is not None and options:
        raise ValueError(f"give either folder or Folder options, not both (got {sorted(options)})")
    if folder is not None and folder.dim != dim:
        raise ValueError(f"folder.dim is {folder.dim} but dim is {dim}; they must match")

    if num <= 2:
        positions = torch.zeros(num, dim, dtype=matrix.dtype, device=matrix.device)
        if num == 2:
            positions[1, 0] = matrix[0, 1]
        positions = positions - positions.mean(0)
    else:
        folder = folder if folder is not None else Folder(dim=dim, **options)
        off_diagonal = known & ~torch.eye(num, dtype=torch.bool, device=matrix.device)
        clean = torch.where(off_diagonal, matrix, 0.0)
        result = folder(
            clean[None],
            torch.ones(1, num, dtype=torch.bool, device=matrix.device),
            weights=off_diagonal[None].to(matrix.dtype),
        )
        positions = result.positions[0]
    if not isinstance(distances, Tensor):  # NumPy (or anything array-like) in, NumPy out
        return positions.cpu().numpy().astype(np.float64)
    return positions.to(distances.dtype if distances.dtype.is_floating_point else matrix.dtype)


# --------------------------------------------------------------------------- files


FILE_FORMATS = {
    ".npy": "a square numeric matrix saved with numpy.save",
    ".npz": "a numpy.savez archive holding a square numeric matrix (key 'distances' or the first)",
    ".csv": "a square matrix of comma-separated numbers (nan marks unknown pairs)",
}


def load_distances(path: str | os.PathLike) -> np.ndarray:
    """A distance matrix from .npy, .npz (key 'distances' or the first array) or .csv.

    Raises:
        ValueError naming the path and what the format expects, for a suffix
        outside FILE_FORMATS, a file that does not parse as one (text or empty
        .npy, pickled objects, a broken archive, non-numbers in a .csv), an
        empty array, or one that is not real numbers (a bool matrix would fold
        as 0/1).
        A missing file raises FileNotFoundError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(f"{path} has suffix {suffix!r}; allowed: {', '.join(FILE_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {FILE_FORMATS[suffix]}")
    expected = f"expected {FILE_FORMATS[suffix]}"
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise ValueError(f"{path} holds no arrays; {expected}")
                key = "distances" if "distances" in archive.files else archive.files[0]
                array = archive[key]
        else:
            array = np.loadtxt(path, delimiter=",", ndmin=2)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path} could not be read ({error}); {expected}") from error
    if not isinstance(array, np.ndarray) or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        dtype = getattr(array, "dtype", type(array).__name__)
        raise ValueError(f"{path} holds an array of dtype {dtype}; {expected}")
    if array.size == 0:
        raise ValueError(f"{path} holds an empty array of shape {array.shape}; {expected}")
    return array


def fold_file(
    path: str | os.PathLike,
    dim: int = 2,
    folder: Folder | None = None,
    out_dir: str | os.PathLike = ".",
) -> np.ndarray:
    """Fold a distance matrix stored in a file and write the positions into `out_dir`.

    NaN entries in the file mark unknown pairs. Writes `positions.npy` and
    `positions.csv`, each atomically; a bad input raises ValueError before
    anything is written. (`python -m minifold.predict fold.input=...` also draws
    positions.png.)

    Returns:
        [N, dim] positions (NumPy float64)
    """
    distances = np.asarray(load_distances(path), dtype=np.float64)
    known = ~np.isnan(distances)
    mask = None if known.all() else known
    # NumPy in, NumPy out
    positions = cast(np.ndarray, fold(distances, dim=dim, mask=mask, folder=folder))
    # Imported here: minifold.atomic needs Lightning, which folding alone does not.
    from minifold.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "positions.npy") as temporary:
        np.save(temporary, positions)
    with atomic_path(out / "positions.csv") as temporary:
        np.savetxt(temporary, positions, delimiter=",")
    log.info("folded %s (%d points) into %s", path, len(positions), out)
    return positions
