"""Affine maps between two models' residual streams: ConTrans step 2, pure linear algebra.

Input: the last-token states of the same N texts in both models, ``X`` ``[N, Ls, ds]`` (source,
every decoder block) and ``Y`` ``[N, Lt, dt]`` (target, every decoder block). Output: one
:class:`FittedMap` ``target ≈ W·source + b`` per chosen (source layer, target layer) pair, with
metrics on rows the fit never saw. No model, no file, no database: numpy or torch in (or states
read a layer at a time, :class:`LayeredStates`, so a fit never holds every layer), numpy out.

Layer indices are **0-based decoder block indices** (block ``i``'s output). ConTrans' code indexes
``hidden_states``, where 0 is the embedding output, so its hidden-state ``h`` is our block
``h - 1``: its fixed pair 24 → 30 for LLaMA 7B (32 blocks) → 13B (40 blocks) is our 23 → 29.

The package owns the whole fit, one job a module; everything callers use is imported from here:

- :mod:`.fitting`: :func:`fit_pairs`, the entry point, which ties the others together;
- :mod:`.splits`: the train / validation / test split (:func:`split_indices`, ``DEFAULT_SPLIT``);
- :mod:`.solvers`: the solver, λ grid and precision options (``SOLVERS``, ``DEFAULT_LAMBDAS``,
  ``PRECISIONS``, :func:`resolve_precision`), the split states and the per-source-block solver
  interface;
- :mod:`.ridge`: the ridge solver and its λ sweep, float32 or float64 (the default solver);
- :mod:`.lstsq`: ConTrans' ``lstsq-svd`` solver;
- :mod:`.selection`: which layer pairs (:func:`relative_depth_pair`, the ``pairs`` argument) and
  the validation choices of λ and of the ``"auto"`` source block (``AUTO_TIE_TOLERANCE``);
- :mod:`.metrics`: R², MSE and cosine (``R2_DEFINITION``, ``COSINE_DEFINITION``);
- :mod:`.maps`: :class:`FittedMap` and :func:`map_vector`;
- :mod:`.checks`: the argument checks the modules share.
"""

from crx.registry.engine.fit.checks import LayeredStates, TensorStates
from crx.registry.engine.fit.fitting import Progress, fit_pairs
from crx.registry.engine.fit.maps import FittedMap, map_vector
from crx.registry.engine.fit.metrics import COSINE_DEFINITION, R2_DEFINITION
from crx.registry.engine.fit.selection import AUTO_TIE_TOLERANCE, relative_depth_pair
from crx.registry.engine.fit.solvers import (
    DEFAULT_LAMBDAS,
    PRECISIONS,
    SOLVERS,
    resolve_precision,
)
from crx.registry.engine.fit.splits import DEFAULT_SPLIT, split_indices

__all__ = [
    "AUTO_TIE_TOLERANCE",
    "COSINE_DEFINITION",
    "DEFAULT_LAMBDAS",
    "DEFAULT_SPLIT",
    "PRECISIONS",
    "R2_DEFINITION",
    "SOLVERS",
    "FittedMap",
    "LayeredStates",
    "Progress",
    "TensorStates",
    "fit_pairs",
    "map_vector",
    "relative_depth_pair",
    "resolve_precision",
    "split_indices",
]
