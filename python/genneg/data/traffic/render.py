"""Drawing scenes on their maps (matplotlib; callers pick the backend, files are written with Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genneg.oracles.drivable_map import DrivableMap

__all__ = [
    "VERDICT_COLOURS",
    "VERDICT_LABELS",
    "legend_handles",
    "render_scene",
    "save_scene_grid",
    "scene_grid_figure",
]

#: Face colours by verdict: valid, collision, offroad, collision and offroad; no verdict given.
VERDICT_COLOURS = {
    "valid": "#2b8cbe",
    "collision": "#e34a33",
    "offroad": "#fdae61",
    "both": "#a50f15",
    "unknown": "#969696",
}

#: Legend text of each verdict colour.
VERDICT_LABELS = {
    "valid": "valid vehicle",
    "collision": "collision",
    "offroad": "offroad",
    "both": "collision and offroad",
    "unknown": "vehicle (no verdict)",
}

# The map's grey levels: imshow(drivable, cmap="gray", vmin=-0.6, vmax=1.25) below.
_MAP_VMIN, _MAP_VMAX = -0.6, 1.25


def _map_grey(value: float) -> tuple[float, float, float]:
    g = (value - _MAP_VMIN) / (_MAP_VMAX - _MAP_VMIN)
    return (g, g, g)


def legend_handles(verdict_keys: set[str] | None = None) -> list:
    """Patches for a legend: the drivable and non-drivable map cells, then each verdict colour used
    (``verdict_keys``, keys of :data:`VERDICT_COLOURS`; default all)."""
    from matplotlib.patches import Patch

    keys = [k for k in VERDICT_COLOURS if verdict_keys is None or k in verdict_keys]
    handles = [
        Patch(facecolor=_map_grey(1.0), edgecolor="black", linewidth=0.4, label="drivable"),
        Patch(facecolor=_map_grey(0.0), edgecolor="black", linewidth=0.4, label="not drivable"),
    ]
    handles += [
        Patch(facecolor=VERDICT_COLOURS[k], edgecolor="black", linewidth=0.4, label=VERDICT_LABELS[k])
        for k in keys
    ]
    return handles


def _verdict_keys(verdicts: dict[str, np.ndarray] | np.ndarray | None, valid: np.ndarray) -> set[str]:
    """The colour keys :func:`render_scene` uses for these verdicts."""
    valid = np.asarray(valid, dtype=bool)
    if verdicts is None:
        return {"unknown"} if valid.any() else set()
    if isinstance(verdicts, dict):
        col = np.asarray(verdicts["collision"], dtype=bool)[valid]
        off = np.asarray(verdicts["offroad"], dtype=bool)[valid]
        keys = {"valid"} if (~col & ~off).any() else set()
        keys |= {"collision"} if (col & ~off).any() else set()
        keys |= {"offroad"} if (off & ~col).any() else set()
        keys |= {"both"} if (col & off).any() else set()
        return keys
    ok = np.asarray(verdicts, dtype=bool)[valid]
    return ({"valid"} if ok.any() else set()) | ({"collision"} if (~ok).any() else set())


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
    """Draw one scene: drivable cells light grey, the rest dark, each vehicle as a box with a heading tick;
    axes in metres (map frame). :func:`legend_handles` explains the colours.

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
        vmin=_MAP_VMIN,
        vmax=_MAP_VMAX,
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
    ax.set_xlabel("x (m)", fontsize=7)
    ax.set_ylabel("y (m)", fontsize=7)
    ax.tick_params(labelsize=6)


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
    """Render scenes side by side into a PNG (Agg canvas; written to a temporary name, then renamed), with
    a legend of the map and verdict colours and metres on the axes (:func:`scene_grid_figure`).

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
    fig = scene_grid_figure(drivable_maps, boxes, valid, verdicts, windows_m, columns, titles)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(path)
    return path


def scene_grid_figure(
    drivable_maps: list[DrivableMap],
    boxes: np.ndarray,
    valid: np.ndarray,
    verdicts: list[dict[str, np.ndarray] | np.ndarray | None] | None = None,
    windows_m: np.ndarray | None = None,
    columns: int = 4,
    titles: list[str] | None = None,
):
    """The matplotlib ``Figure`` (Agg canvas) :func:`save_scene_grid` writes; arguments as there."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    boxes = np.asarray(boxes)
    s = boxes.shape[0]
    if len(drivable_maps) != s:
        raise ValueError(f"need one map per scene: {len(drivable_maps)} maps for {s} scenes")
    rows = max(int(np.ceil(s / columns)), 1)
    fig = Figure(figsize=(3.2 * min(columns, s), 3.2 * rows + 0.6))
    FigureCanvasAgg(fig)
    used: set[str] = set()
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
        used |= _verdict_keys(None if verdicts is None else verdicts[k], np.asarray(valid)[k])
    handles = legend_handles(used)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (3.2 * rows + 0.6), 1, 1))
    return fig
