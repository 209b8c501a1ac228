"""The oracle demo: exact collision and offroad checks on generated traffic scenes, timed, and drawn.

Valid scenes come from the procedural generator; a copy with every vehicle jittered (position and
heading) gives the oracle something to find. Timings are medians of repeated calls, single-threaded and
on all cores.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OracleDemoResult", "format_oracle_demo", "run_oracle_demo"]


@dataclass(frozen=True)
class OracleDemoResult:
    """What the demo measured.

    Attributes:
        num_scenes, num_vehicles: scenes checked and real vehicles in them.
        collision_ms, offroad_ms: median time of one call over all scenes, ``{"1 thread": ms,
            "N threads": ms}``.
        collision_rate, offroad_rate: fraction of real vehicles flagged in the jittered scenes.
        picture: the PNG written.
    """

    num_scenes: int
    num_vehicles: int
    collision_ms: dict[str, float]
    offroad_ms: dict[str, float]
    collision_rate: float
    offroad_rate: float
    picture: Path


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run_oracle_demo(out_dir: str | Path, *, num_scenes: int = 2000, seed: int = 0, repeats: int = 5,
                    jitter_m: float = 0.6, jitter_rad: float = 0.15) -> OracleDemoResult:
    """Generate scenes, jitter them, check them with the C++ oracles, time it and draw a picture.

    Args:
        out_dir: where ``oracle_demo.png`` is written.
        num_scenes: scenes generated (64 vehicle slots each) on 8 procedural maps.
        seed: seeds maps, scenes and jitter.
        repeats: timed calls per figure (median reported).
        jitter_m, jitter_rad: std of the position (metres) and heading (radians) jitter.
    """
    import genneg_ext
    from genneg.data.traffic import RoadNetworkConfig, SceneConfig, generate_road_maps, generate_scenes
    from genneg.data.traffic.render import save_scene_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = generate_road_maps(RoadNetworkConfig(), 8, seed)
    scenes = generate_scenes(maps, num_scenes, SceneConfig(), seed)
    rng = np.random.default_rng(seed)
    boxes = scenes.boxes.astype(np.float64)
    boxes[..., :2] += rng.normal(0.0, jitter_m, boxes[..., :2].shape)
    boxes[..., 4] += rng.normal(0.0, jitter_rad, boxes[..., 4].shape)
    valid = scenes.valid
    by_map = [np.flatnonzero(scenes.map_index == m) for m in range(len(maps))]

    def check(threads: int) -> tuple[np.ndarray, np.ndarray]:
        collision = genneg_ext.collisions(boxes, valid, threads=threads)
        offroad = np.zeros_like(collision)
        for m, rows in enumerate(by_map):
            if rows.size:
                d = maps[m].drivable_map
                offroad[rows] = genneg_ext.offroad(boxes[rows], d.drivable, d.origin_m, d.resolution_m,
                                                   valid[rows], threads=threads)
        return collision, offroad

    cores = genneg_ext.available_cores()
    collision, offroad = check(0)
    timings_c, timings_o = {}, {}
    for label, threads in (("1 thread", 1), (f"{cores} threads", 0)):
        timings_c[label] = _median_ms(lambda t=threads: genneg_ext.collisions(boxes, valid, threads=t),
                                      repeats)
        timings_o[label] = _median_ms(lambda t=threads: check(t)[1], repeats)

    shown = list(range(min(8, num_scenes)))
    w = SceneConfig().window_m / 2
    windows = np.array([[c[0] - w, c[0] + w, c[1] - w, c[1] + w] for c in scenes.centre_m[shown]])
    picture = save_scene_grid(
        out / "oracle_demo.png",
        [maps[scenes.map_index[s]].drivable_map for s in shown],
        boxes[shown], valid[shown],
        verdicts=[{"collision": collision[s], "offroad": offroad[s]} for s in shown],
        windows_m=windows,
        titles=[f"{maps[scenes.map_index[s]].name}: {int(collision[s].sum())} coll., "
                f"{int(offroad[s].sum())} off" for s in shown],
    )
    n_vehicles = int(valid.sum())
    return OracleDemoResult(
        num_scenes=num_scenes, num_vehicles=n_vehicles, collision_ms=timings_c, offroad_ms=timings_o,
        collision_rate=float(collision.sum() / max(n_vehicles, 1)),
        offroad_rate=float(offroad.sum() / max(n_vehicles, 1)), picture=picture,
    )


def format_oracle_demo(result: OracleDemoResult) -> str:
    """A few lines for the terminal."""
    lines = [f"oracle demo: {result.num_scenes} scenes, {result.num_vehicles} vehicles "
             f"(jittered; {os.cpu_count()} CPU cores)"]
    for label in result.collision_ms:
        lines.append(f"  {label:>10}: collisions {result.collision_ms[label]:8.2f} ms, "
                     f"offroad {result.offroad_ms[label]:8.2f} ms")
    lines.append(f"  flagged: {100 * result.collision_rate:.1f}% colliding, "
                 f"{100 * result.offroad_rate:.1f}% offroad vehicles")
    lines.append(f"  picture: {result.picture} (blue valid, red colliding, orange offroad, dark red both)")
    return "\n".join(lines)
