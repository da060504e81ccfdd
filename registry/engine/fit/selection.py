"""Which layer pairs are fitted and which λ is kept: the ``pairs`` argument, ConTrans' pair rule
(:func:`relative_depth_pair`) and the validation choices of λ and of the source layer.

Layer indices are 0-based decoder block indices (see the package docstring).
"""

from __future__ import annotations

import numpy as np

from crx.registry.engine.fit.checks import check_int
from crx.registry.errors import InvalidInput

#: Validation R² values closer than this count as a tie when ``"auto"`` picks a source layer.
AUTO_TIE_TOLERANCE = 1e-9


def relative_depth_pair(n_source_layers: int, n_target_layers: int, target_layer: int) -> int:
    """The source block at the same relative depth as ``target_layer`` (ConTrans' pair rule).

    Relative depth of 0-based block ``i`` of ``L`` is ``(i + 1)/L`` (the last block is depth 1),
    which is ConTrans' ``hidden_states`` index ``h``/L with ``h = i + 1``. The source block is
    ``round((lt + 1)·Ls/Lt) − 1`` (halves round up, clamped to the source's blocks), computed in
    integers. ConTrans' 24 → 30 (hidden-state indices, 32 → 40 layers, depth 0.75) is
    ``relative_depth_pair(32, 40, 29) == 23``; SmolLM2 (30) → Gemma-3-270m (18) block 13 gives 22.
    """
    check_int(n_source_layers, "the number of source layers", minimum=1)
    check_int(n_target_layers, "the number of target layers", minimum=1)
    check_int(target_layer, "the target layer", minimum=0)
    if target_layer >= n_target_layers:
        raise InvalidInput(
            f"target layer {target_layer} is out of range: the target has {n_target_layers} "
            f"layers (0..{n_target_layers - 1})"
        )
    hidden = (2 * (target_layer + 1) * n_source_layers + n_target_layers) // (2 * n_target_layers)
    return min(max(hidden - 1, 0), n_source_layers - 1)


def resolve_pairs(pairs: object, n_src: int, n_tgt: int) -> tuple[str, list[tuple[int, int]]]:
    """``(mode, pairs)``: ``"auto"`` with no pairs, or ``"all"``/``"explicit"`` with the list."""
    if isinstance(pairs, str):
        if pairs == "auto":
            return "auto", []
        if pairs == "all":
            return "all", [(ls, lt) for ls in range(n_src) for lt in range(n_tgt)]
        raise InvalidInput(
            f"pairs must be 'auto', 'all' or a list of (source layer, target layer), got {pairs!r}"
        )
    try:
        items = list(pairs)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidInput(
            f"pairs must be 'auto', 'all' or a list of (source layer, target layer), got {pairs!r}"
        ) from None
    if not items:
        raise InvalidInput("no layer pairs given")
    out: list[tuple[int, int]] = []
    for item in items:
        try:
            ls, lt = item
        except (TypeError, ValueError):
            raise InvalidInput(
                f"layer pair {item!r} is not a (source layer, target layer) pair"
            ) from None
        for layer, side, count in ((ls, "source", n_src), (lt, "target", n_tgt)):
            if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
                raise InvalidInput(f"{side} layer {layer!r} in pair {item!r} is not an integer")
            if not 0 <= layer < count:
                raise InvalidInput(
                    f"{side} layer {layer} in pair ({ls}, {lt}) is out of range: the {side} "
                    f"has {count} layers (0..{count - 1})"
                )
        pair = (int(ls), int(lt))
        if pair in out:
            raise InvalidInput(f"layer pair {pair} is listed twice")
        out.append(pair)
    return "explicit", out


def pick_lambda(scores: np.ndarray) -> np.ndarray:
    """Per row, the column with the best score; ties go to the larger λ (the later column)."""
    s = np.where(np.isnan(scores), -np.inf, scores)[:, ::-1]
    return np.asarray(s.shape[1] - 1 - np.argmax(s, axis=1), dtype=np.int64)


def pick_source(val_r2: np.ndarray, n_src: int, n_tgt: int, lt: int) -> int:
    """Best validation R²; near-ties to the closest relative depth, then the shallower block."""
    if np.all(np.isnan(val_r2)):
        return relative_depth_pair(n_src, n_tgt, lt)
    best = np.nanmax(val_r2)
    candidates = [ls for ls in range(n_src) if val_r2[ls] >= best - AUTO_TIE_TOLERANCE]
    # |(ls+1)/Ls − (lt+1)/Lt| scaled by Ls·Lt, so it is an exact integer
    return min(candidates, key=lambda ls: (abs((ls + 1) * n_tgt - (lt + 1) * n_src), ls))
