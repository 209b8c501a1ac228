"""Drawing scenes on their maps (matplotlib; callers pick the backend, files are written with Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genneg.oracles.drivable_map import DrivableMap

__all__ = ["VERDICT_COLOURS", "render_scene", "save_scene_grid"]

#: Face colours by verdict: valid, collision, offroad, collision and offroad; no verdict given.
VERDICT_COLOURS = {
    "valid": "#2b8cbe",
    "collision": "#e34a33",
    "offroad": "#fdae61",
    "both": "#a50f15",
    "unknown": "#969696",
}


def _corners(boxes: np.ndarray) -> np.ndarray:
    x, y, length, width, heading = np.moveaxis(np.asarray(boxes, dtype=np.float64), -1, 0)
    c, s = np.cos(heading), np.sin(heading)
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    dx = signs[:, 0] * 0.5 * length[..., None]
    dy = signs[:, 1] * 0.5 * width[..., None]
    cx = x[..., None] + dx * c[..., None] - dy * s[..., None]
    cy = y[..., None] + dx * s[..., None] + dy * c[..., None]
    return np.stack([cx, cy], axis=-1)


def render_scene(
    ax,
    drivable_map: DrivableMap,
    boxes: np.ndarray,
    valid: np.ndarray,
    verdicts: dict[str, np.ndarray] | np.ndarray | None = None,
    window_m: tuple[float, float, float, float] | None = None,
) -> None:
    """Draw one scene: drivable cells light grey, the rest dark, each vehicle as a box with a heading tick.

    Args:
        ax: a matplotlib ``Axes``.
        drivable_map: the scene's map.
        boxes: ``(A, 5)`` float: x m, y m, length m, width m, heading rad.
        valid: ``(A,)`` bool; padding slots are not drawn.
        verdicts: ``None`` (all grey), a bool ``(A,)`` array (True = valid: blue, False = red), or a dict
            with bool ``(A,)`` arrays ``"collision"`` and ``"offroad"`` (True = infracting).
        window_m: ``(x_min, x_max, y_min, y_max)`` to show; default: the vehicles' extent plus 8 m.
    """
    from matplotlib.collections import PolyCollection

    boxes = np.asarray(boxes, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must have shape (A, 5), got {boxes.shape}")
    if valid.shape != boxes.shape[:1]:
        raise ValueError(f"valid must have shape {boxes.shape[:1]}, got {valid.shape}")
    a = boxes.shape[0]
    colours = np.full(a, VERDICT_COLOURS["unknown"], dtype=object)
    if isinstance(verdicts, dict):
        col = np.asarray(verdicts["collision"], dtype=bool)
        off = np.asarray(verdicts["offroad"], dtype=bool)
        if col.shape != (a,) or off.shape != (a,):
            raise ValueError(f"verdict arrays must have shape ({a},), got {col.shape} and {off.shape}")
        colours[:] = VERDICT_COLOURS["valid"]
        colours[col] = VERDICT_COLOURS["collision"]
        colours[off] = VERDICT_COLOURS["offroad"]
        colours[col & off] = VERDICT_COLOURS["both"]
    elif verdicts is not None:
        ok = np.asarray(verdicts, dtype=bool)
        if ok.shape != (a,):
            raise ValueError(f"verdicts must have shape ({a},), got {ok.shape}")
        colours[:] = np.where(ok, VERDICT_COLOURS["valid"], VERDICT_COLOURS["collision"])

    ax.imshow(
        drivable_map.drivable,
        origin="lower",
        extent=drivable_map.extent_m,
        cmap="gray",
        vmin=-0.6,
        vmax=1.25,
        interpolation="nearest",
    )
    corners = _corners(boxes[valid])
    ax.add_collection(
        PolyCollection(list(corners), facecolors=list(colours[valid]), edgecolors="black", linewidths=0.4)
    )
    front = 0.5 * (corners[:, 0] + corners[:, 3])
    centre = boxes[valid, :2]
    for p, q in zip(centre, front):
        ax.plot([p[0], q[0]], [p[1], q[1]], color="black", linewidth=0.5)
    if window_m is None and valid.any():
        lo, hi = corners.reshape(-1, 2).min(0) - 8.0, corners.reshape(-1, 2).max(0) + 8.0
        window_m = (lo[0], hi[0], lo[1], hi[1])
    if window_m is not None:
        ax.set_xlim(window_m[0], window_m[1])
        ax.set_ylim(window_m[2], window_m[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def save_scene_grid(
    path: str | Path,
    drivable_maps: list[DrivableMap],
    boxes: np.ndarray,
    valid: np.ndarray,
    verdicts: list[dict[str, np.ndarray] | np.ndarray | None] | None = None,
    windows_m: np.ndarray | None = None,
    columns: int = 4,
    titles: list[str] | None = None,
) -> Path:
    """Render scenes side by side into a PNG (Agg canvas; written to a temporary name, then renamed).

    Args:
        path: output ``.png`` path.
        drivable_maps: one map per scene.
        boxes: ``(S, A, 5)`` float; valid: ``(S, A)`` bool.
        verdicts: per scene, as for :func:`render_scene`.
        windows_m: ``(S, 4)`` view windows ``(x_min, x_max, y_min, y_max)``; default per scene extent.
        columns: panels per row.
        titles: one title per panel.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    boxes = np.asarray(boxes)
    s = boxes.shape[0]
    if len(drivable_maps) != s:
        raise ValueError(f"need one map per scene: {len(drivable_maps)} maps for {s} scenes")
    rows = max(int(np.ceil(s / columns)), 1)
    fig = Figure(figsize=(3.2 * min(columns, s), 3.2 * rows))
    FigureCanvasAgg(fig)
    for k in range(s):
        ax = fig.add_subplot(rows, min(columns, s), k + 1)
        render_scene(
            ax,
            drivable_maps[k],
            boxes[k],
            np.asarray(valid)[k],
            None if verdicts is None else verdicts[k],
            None if windows_m is None else tuple(windows_m[k]),
        )
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(path)
    return path
