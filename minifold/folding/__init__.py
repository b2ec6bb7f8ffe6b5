"""Folding: turn (partial, noisy) pairwise distances into coordinates, batched.

One job per module, each importing only those above it in this list:

- `threads`: how the CPU's threads share a fold (one intra-op thread where
  torch's per-op barriers stall, a pool of workers where work splits)
- `starts`: where a fold starts (shortest-path completion, classical MDS,
  random and perturbed starts)
- `objectives`: what it minimises (stress, relative weights, distogram likelihood)
- `optimize`: how (batched SMACOF; batched L-BFGS with its line search)
- `options`: the declarative option rules the Folder's table uses
- `folder`: `Folder` (options, then the pipeline start -> SMACOF -> L-BFGS)
  and `FoldResult`
- `api`: `fold` and `fold_file` for one matrix, `load_distances`

Importing this package loads torch and NumPy only: no Lightning, no
matplotlib (`fold_file` imports its writers when called).
"""

from minifold.folding.api import (
    FILE_FORMATS,
    SYMMETRY_TOLERANCE,
    fold,
    fold_file,
    load_distances,
)
from minifold.folding.folder import DTYPES, Folder, FoldResult
from minifold.folding.objectives import (
    _DistogramLikelihood,
    _Stress,
    confidence_weights,
    problem_scale,
    relative_fit_error,
    relative_weights,
)
from minifold.folding.optimize import lbfgs, smacof
from minifold.folding.starts import (
    EIGH_UP_TO,
    EXACT_PATHS_UP_TO,
    classical_mds,
    complete_distances,
    random_start,
    shortest_paths,
    top_eigenpairs,
)

__all__ = [
    "DTYPES",
    "EIGH_UP_TO",
    "EXACT_PATHS_UP_TO",
    "FILE_FORMATS",
    "SYMMETRY_TOLERANCE",
    "FoldResult",
    "Folder",
    "_DistogramLikelihood",
    "_Stress",
    "classical_mds",
    "complete_distances",
    "confidence_weights",
    "fold",
    "fold_file",
    "lbfgs",
    "load_distances",
    "problem_scale",
    "random_start",
    "relative_fit_error",
    "relative_weights",
    "shortest_paths",
    "smacof",
    "top_eigenpairs",
]
