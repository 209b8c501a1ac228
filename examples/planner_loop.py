"""A small closed planning loop with the models a Gen-neG traffic run trained: each tick the ego asks
FastSampler for a valid completion of the scene it sees, plans its speed against it, and the scene advances.

    .venv/bin/python examples/planner_loop.py --run-dir runs/traffic     # a finished `genneg train traffic`
    .venv/bin/python examples/planner_loop.py                            # trains the tiny profile (~1 min)
                                                                         # into --cache-dir, then reuses it

The models are the run's own, loaded with ``FastSampler.from_run``: ``guided`` (the baseline DDPM scene
transformer guided by the run's whole classifier stack) and ``distilled`` (the stack distilled into one
network), or any model of the run (``--models baseline,iter1,...``). Every model is called as
``model(x, sigma, **cond)`` with the planner's conditioning: the map crop around the ego and the present
vehicle slots reach the network and every classifier by keyword, and the ego and the vehicles it sees are
fixed by inpainting (``genneg.planning.traffic.scene_condition``).

The world: a road map of the run with vehicles placed by the scene generator; vehicle 0 is the ego.
Every tick (``--dt-s`` seconds):

1. the scene window is centred on the ego; the ego and the vehicles within ``--sight-m`` metres are
   known (fixed), ``--hidden`` more slots are sampled: the vehicles the ego cannot see;
2. each model's ``FastSampler`` draws N completions in parallel under a deadline and returns the first one
   the traffic oracle accepts (no collision, nothing offroad), or ``ok=False`` with the reason;
3. the planner (driving with the first model listed) brakes when a seen or hypothesised vehicle is ahead
   in its lane within ``--gap-m``, else speeds up to ``--target-speed-mps``;
4. every vehicle moves along its heading and turns with the nearest lane; timing is printed per model.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from genneg.data.traffic import SceneConfig, generate_scenes, scenes_to_tokens
from genneg.pipeline.experiment import open_run, run_experiment
from genneg.pipeline.traffic import TrafficTask
from genneg.pipeline.traffic_profiles import get_traffic_profile
from genneg.planning.fast_sampler import FastSampler
from genneg.planning.traffic import decode_tokens, scene_condition


def trained_run(run_dir: Path | None, cache_dir: Path) -> Path:
    """``run_dir`` when given; else the tiny traffic profile trained into ``cache_dir`` (resumed when a
    previous call was interrupted, reused when finished)."""
    if run_dir is not None:
        return run_dir
    if not (cache_dir / "report.md").is_file():
        print(f"training the tiny traffic profile into {cache_dir} (about a minute)", flush=True)
        run_experiment(get_traffic_profile("tiny"), cache_dir, resume=cache_dir.exists(), progress=False)
    return cache_dir


def lane_heading(points: np.ndarray, headings: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Heading (rad) of the nearest lane point to each ``xy (V, 2)``."""
    d2 = ((xy[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return headings[np.argmin(d2, axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished traffic run (read only)")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/planner-loop-tiny"),
                        help="where the tiny profile is trained when no --run-dir is given")
    parser.add_argument("--models", default="guided,distilled", help="models of the run, comma-separated")
    parser.add_argument("--map-index", type=int, default=0, help="which of the run's road maps")
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--dt-s", type=float, default=0.5)
    parser.add_argument("--sight-m", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=1, help="unseen vehicle slots to sample")
    parser.add_argument("--gap-m", type=float, default=12.0)
    parser.add_argument("--target-speed-mps", type=float, default=8.0)
    parser.add_argument("--num-parallel", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    parser.add_argument("--deadline-ms", type=float, default=2000.0)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run_dir = trained_run(args.run_dir, args.cache_dir)
    task, config, _ = open_run(run_dir)
    if not isinstance(task, TrafficTask):
        raise SystemExit(f"{run_dir} is a {config.experiment!r} run, not a traffic run")
    road = task.road_maps[args.map_index]
    norm = task.norm
    slots = config.data.max_vehicles
    if args.hidden >= slots:
        raise SystemExit(f"--hidden {args.hidden} leaves no slot for the ego ({slots} slots)")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    samplers = {
        name: FastSampler.from_run(run_dir, name, num_parallel=args.num_parallel, num_steps=args.steps,
                                   deadline_ms=args.deadline_ms, max_rounds=args.max_rounds, seed=args.seed,
                                   drivable_map=road.drivable_map)
        for name in names
    }

    # the world: the densest generated scene on the map; vehicle 0 is the ego
    world = generate_scenes([road], 16, SceneConfig(window_m=config.data.window_m, max_vehicles=slots,
                                                    min_vehicles=min(slots, 3)), args.seed + 1)
    row = int(np.argmax(world.valid.sum(axis=1)))
    present = world.valid[row]
    boxes = world.boxes[row][present].astype(np.float64)  # (V, 5): x, y, length, width, heading
    speeds = world.speeds[row][present].astype(np.float64)
    speeds[0] = args.target_speed_mps
    points, headings = road.lane_points(0.5)
    driver = names[0]

    first = samplers[driver]
    rates = ", ".join(f"{n} (r={samplers[n].infraction_rate:.3f})" for n in names)
    print(f"run {run_dir} ({config.profile} profile), map {road.name}: {len(boxes)} vehicles, {slots} slots, "
          f"N={first.num_parallel} parallel samples, {len(first.levels) - 1} ancestral steps, deadline "
          f"{args.deadline_ms:.0f} ms; models {rates}; the ego drives with {driver}")
    print(" tick  ego speed  seen  model        ok  reason    rounds  valid%  total ms  model ms  guid ms"
          "  gap")
    totals: dict[str, list[float]] = {name: [] for name in names}
    for tick in range(args.ticks):
        ego = boxes[0]
        centre = (float(ego[0]), float(ego[1]))
        dist = np.hypot(boxes[:, 0] - ego[0], boxes[:, 1] - ego[1])
        seen = [i for i in np.argsort(dist)[1:] if dist[i] <= args.sight_m][: slots - 1 - args.hidden]
        known_ids = [0, *seen]
        k = len(known_ids)
        world_tokens = scenes_to_tokens(boxes[None, known_ids], speeds[None, known_ids],
                                        np.ones((1, k), dtype=bool), np.asarray([centre]), norm)[0]
        tokens = torch.zeros(slots, 7)
        tokens[:k] = torch.from_numpy(world_tokens)
        known = torch.zeros(slots, dtype=torch.bool)
        known[:k] = True
        valid = known.clone()
        valid[k : k + args.hidden] = True
        cond = scene_condition(tokens, known, valid, road.drivable_map, centre, norm=norm,
                               map_cells=config.data.crop_cells, crop_margin_m=config.data.crop_margin_m)
        results = {name: sampler(cond) for name, sampler in samplers.items()}

        # plan with the driver's sample: brake for anything in the ego's lane ahead (seen, or hypothesised)
        result = results[driver]
        others = boxes[seen][:, :2] if seen else np.zeros((0, 2))
        if result.ok:
            sampled = decode_tokens(result.sample[None], centre, norm)[0].numpy()
            others = np.concatenate([others, sampled[k : k + args.hidden, :2]])
        rel = others - ego[None, :2]
        c, s = math.cos(ego[4]), math.sin(ego[4])
        ahead, side = rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c
        in_lane = (ahead > 0) & (np.abs(side) < 2.0)
        gap = float(ahead[in_lane].min()) if in_lane.any() else math.inf
        if gap < args.gap_m or not result.ok:  # no valid completion: be careful
            speeds[0] = max(0.0, speeds[0] - 3.0 * args.dt_s)
        else:
            speeds[0] = min(args.target_speed_mps, speeds[0] + 1.5 * args.dt_s)

        for name, r in results.items():
            totals[name].append(r.times.total_ms)
            print(
                f"{tick:5d}  {speeds[0]:6.2f}m/s  {len(seen):4d}  {name:11s}  {'yes' if r.ok else 'no ':3s} "
                f"{r.reason or '-':8s}  {r.rounds:6d}  {100 * r.valid_fraction:6.1f}  "
                f"{r.times.total_ms:8.1f}  "
                f"{r.times.model_ms:8.1f}  {r.times.guidance_ms:7.1f}  {gap:5.1f}m",
                flush=True,
            )

        # the scene advances: constant speeds, headings follow the nearest lane
        boxes[:, 0] += speeds * np.cos(boxes[:, 4]) * args.dt_s
        boxes[:, 1] += speeds * np.sin(boxes[:, 4]) * args.dt_s
        boxes[:, 4] = lane_heading(points, headings, boxes[:, :2])
        x0, x1, y0, y1 = road.drivable_map.extent_m
        inside = ((boxes[:, 0] > x0 + 5) & (boxes[:, 0] < x1 - 5) & (boxes[:, 1] > y0 + 5)
                  & (boxes[:, 1] < y1 - 5))
        if not inside[0]:
            print("the ego left the map; stopping")
            break
        boxes, speeds = boxes[inside], speeds[inside]
    for name, values in totals.items():
        if values:
            t = np.asarray(values)
            print(f"{name}: planning call p50 {np.median(t):.1f} ms, max {t.max():.1f} ms over {len(t)} "
                  f"ticks (deadline {args.deadline_ms:.0f} ms)")


if __name__ == "__main__":
    sys.exit(main())
