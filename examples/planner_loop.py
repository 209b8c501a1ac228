"""A small closed planning loop on a generated map: each tick the ego asks a FastSampler for a valid
completion of the scene it sees, plans its speed against it, and the scene advances.

    .venv/bin/python examples/planner_loop.py                  # trains a tiny traffic DDPM first (~1 min)
    .venv/bin/python examples/planner_loop.py --model m.safetensors   # reuse a net saved with --save

The world: a procedural crossroads (``genneg.data.traffic.roads``) with vehicles placed by the scene
generator; vehicle 0 is the ego. Every tick (``--dt-s`` seconds):

1. the scene window is centred on the ego; the ego and the vehicles within ``--sight-m`` metres are
   known (fixed by inpainting), ``--hidden`` more slots are sampled: the vehicles the ego cannot see;
2. ``FastSampler`` draws N completions in parallel under a deadline and returns the first one the
   traffic oracle accepts (no collision, nothing offroad), or ``ok=False`` with the reason;
3. the planner brakes when a seen or hypothesised vehicle is ahead in its lane within ``--gap-m``,
   else speeds up to ``--target-speed-mps``;
4. every vehicle moves along its heading and turns with the nearest lane; timing is printed.

The model is a scene transformer ε-model (``genneg.models.scene_transformer``) trained here for
``--train-seconds`` on generated valid scenes (a toy: its samples are often invalid, which is what the
oracle and the rounds are for), or loaded from ``--model``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genneg.data.traffic import (
    RoadNetworkConfig,
    SceneConfig,
    TokenNormalisation,
    crop_maps,
    generate_road_map,
    generate_scenes,
    scenes_to_tokens,
)
from genneg.diffusion import DDPMConfig, DDPMSchedule
from genneg.io.checkpoint import load_checkpoint, save_checkpoint
from genneg.models.scene_transformer import SceneTransformer, SceneTransformerConfig
from genneg.oracles import TrafficOracle
from genneg.planning.fast_sampler import FastSampler, SamplerConfig
from genneg.planning.traffic import SceneTokenOracle, decode_tokens, scene_condition

SLOTS = 12
MAP_CELLS = 32
NET = SceneTransformerConfig(width=32, heads=2, blocks=2, mlp_ratio=2)


def train(
    road, norm: TokenNormalisation, schedule: DDPMSchedule, seconds: float, seed: int
) -> SceneTransformer:
    """ε-prediction on generated valid scenes of ``road`` for ``seconds`` (masked to present vehicles)."""
    t0 = time.perf_counter()
    scenes = generate_scenes(
        [road], 600, SceneConfig(max_vehicles=SLOTS, min_vehicles=3, proposals_per_scene=96), seed
    )
    tokens = torch.from_numpy(
        scenes_to_tokens(scenes.boxes, scenes.speeds, scenes.valid, scenes.centre_m, norm)
    )
    crops = torch.from_numpy(
        crop_maps(road.drivable_map, scenes.centre_m, 2 * norm.position_scale_m, MAP_CELLS).astype(np.float32)
    )[:, None]
    valid = torch.from_numpy(scenes.valid)
    print(
        f"training data: {len(scenes)} scenes, {int(valid.sum())} vehicles ({time.perf_counter() - t0:.1f} s)"
    )
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SceneTransformer(NET)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    abar = schedule.alphas_cumprod.to(torch.float32)
    step, losses = 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(len(scenes), (32,), generator=g)
        x0, v, m = tokens[idx], valid[idx], crops[idx]
        t = torch.randint(schedule.num_steps, (32,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t][:, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        err = (net(x_t, t, v, m) - eps).pow(2).sum(-1)
        loss = (err * v).sum() / v.sum().clamp(min=1) / 7
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 200 == 0:
            print(
                f"  step {step:5d}  loss {np.mean(losses[-200:]):.3f}  ({time.perf_counter() - start:.0f} s)"
            )
    print(
        f"trained {step} steps in {time.perf_counter() - start:.0f} s, "
        f"final loss {np.mean(losses[-100:]):.3f}"
    )
    return net.eval()


def lane_heading(points: np.ndarray, headings: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Heading (rad) of the nearest lane point to each ``xy (V, 2)``."""
    d2 = ((xy[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return headings[np.argmin(d2, axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a net saved with --save (skips training)")
    parser.add_argument("--save", type=Path, default=None, help="save the trained net here")
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--dt-s", type=float, default=0.5)
    parser.add_argument("--sight-m", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=2, help="unseen vehicle slots to sample")
    parser.add_argument("--gap-m", type=float, default=12.0)
    parser.add_argument("--target-speed-mps", type=float, default=8.0)
    parser.add_argument("--num-parallel", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--deadline-ms", type=float, default=250.0)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    road = generate_road_map("crossroads", RoadNetworkConfig(lanes_per_direction=(1, 1)), seed=args.seed)
    norm = TokenNormalisation()
    schedule = DDPMSchedule(DDPMConfig(num_steps=200))
    if args.model is not None:
        net = SceneTransformer(NET)
        load_checkpoint(args.model, net)
        net.eval()
    else:
        net = train(road, norm, schedule, args.train_seconds, args.seed)
        if args.save is not None:
            save_checkpoint(args.save, net, {"config": NET.to_json(), "slots": SLOTS, "map_cells": MAP_CELLS})

    oracle = TrafficOracle(road.drivable_map)
    sampler = FastSampler(
        net,
        SceneTokenOracle(oracle),
        sample_shape=(SLOTS, 7),
        ddpm_schedule=schedule,
        seed=args.seed,
        config=SamplerConfig(
            num_parallel=args.num_parallel,
            num_steps=args.steps,
            max_rounds=args.max_rounds,
            deadline_ms=args.deadline_ms,
        ),
    )

    # the world: the densest generated scene; vehicle 0 is the ego
    world = generate_scenes([road], 16, SceneConfig(max_vehicles=SLOTS, min_vehicles=6), args.seed + 1)
    row = int(np.argmax(world.valid.sum(axis=1)))
    present = world.valid[row]
    boxes = world.boxes[row][present].astype(np.float64)  # (V, 5): x, y, length, width, heading
    speeds = world.speeds[row][present].astype(np.float64)
    speeds[0] = args.target_speed_mps
    points, headings = road.lane_points(0.5)

    print(
        f"map {road.name}: {len(boxes)} vehicles, N={sampler.num_parallel} parallel samples, "
        f"{args.steps} DDPM steps, deadline {args.deadline_ms:.0f} ms"
    )
    print(" tick  ego speed  seen  ok  reason      rounds  valid%   total ms  model ms  oracle ms  gap ahead")
    totals = []
    for tick in range(args.ticks):
        ego = boxes[0]
        centre = (float(ego[0]), float(ego[1]))
        dist = np.hypot(boxes[:, 0] - ego[0], boxes[:, 1] - ego[1])
        seen = [i for i in np.argsort(dist)[1:] if dist[i] <= args.sight_m][: SLOTS - 1 - args.hidden]
        known_ids = [0, *seen]
        k = len(known_ids)
        world_tokens = scenes_to_tokens(
            boxes[None, known_ids],
            speeds[None, known_ids],
            np.ones((1, k), dtype=bool),
            np.asarray([centre]),
            norm,
        )[0]
        tokens = torch.zeros(SLOTS, 7)
        tokens[:k] = torch.from_numpy(world_tokens)
        known = torch.zeros(SLOTS, dtype=torch.bool)
        known[:k] = True
        valid = known.clone()
        valid[k : k + args.hidden] = True
        cond = scene_condition(
            tokens, known, valid, road.drivable_map, centre, norm=norm, map_cells=MAP_CELLS
        )
        result = sampler(cond)
        totals.append(result.times.total_ms)

        # plan: brake for anything in the ego's lane ahead (seen, or hypothesised by the chosen sample)
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

        print(
            f"{tick:5d}  {speeds[0]:6.2f}m/s  {len(seen):4d}  {'yes' if result.ok else 'no ':3s} "
            f"{result.reason or '-':10s}  {result.rounds:6d}  {100 * result.valid_fraction:6.1f}  "
            f"{result.times.total_ms:9.1f}  {result.times.model_ms:8.1f}  {result.times.oracle_ms:9.2f}  "
            f"{gap:8.1f}m",
            flush=True,
        )

        # the scene advances: constant speeds, headings follow the nearest lane
        boxes[:, 0] += speeds * np.cos(boxes[:, 4]) * args.dt_s
        boxes[:, 1] += speeds * np.sin(boxes[:, 4]) * args.dt_s
        boxes[:, 4] = lane_heading(points, headings, boxes[:, :2])
        x0, x1, y0, y1 = road.drivable_map.extent_m
        inside = (
            (boxes[:, 0] > x0 + 5) & (boxes[:, 0] < x1 - 5) & (boxes[:, 1] > y0 + 5) & (boxes[:, 1] < y1 - 5)
        )
        if not inside[0]:
            print("the ego left the map; stopping")
            break
        boxes, speeds = boxes[inside], speeds[inside]
    if totals:
        t = np.asarray(totals)
        print(
            f"planning call: p50 {np.median(t):.1f} ms, max {t.max():.1f} ms over {len(t)} ticks "
            f"(deadline {args.deadline_ms:.0f} ms)"
        )


if __name__ == "__main__":
    sys.exit(main())
