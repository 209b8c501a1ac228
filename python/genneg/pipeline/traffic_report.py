"""The traffic task's report: the Table-1-like table, its notes, and the PNG renders of scenes coloured by
verdict (METHOD.md 8 "Traffic")."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genneg.data.traffic import save_scene_grid, tokens_to_scenes
from genneg.data.traffic.scene_set import Cond
from genneg.io.checkpoint import load_tensors
from genneg.io.rundir import RunDir, stage_generator
from genneg.pipeline.traffic_profiles import TRAFFIC_ABLATIONS

__all__ = ["format_traffic_table", "render_scenes", "traffic_notes", "traffic_rows"]


def traffic_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One evaluation record per model (the last wins), ordered as Table 1: baseline, ablations
    (time-independent, w/o IS, imbalanced), Gen-neG iterations, distilled."""
    by_model: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "eval":
            by_model[r["model"]] = dict(r)
    group_order = {"baseline": 0, "ablation": 1, "gen_neg": 2, "distilled": 3}
    ablation_order = {f"ablation_{m}": i for i, m in enumerate(TRAFFIC_ABLATIONS)}

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        return (group_order.get(r["group"], 9), ablation_order.get(r["model"], 0), r.get("iteration") or 0)

    return sorted(by_model.values(), key=key)


_LABELS = {"ablation_time_independent": "time-independent guidance", "ablation_no_is": "w/o IS",
           "ablation_imbalanced": "imbalanced", "baseline": "baseline", "distilled": "distilled"}


def format_traffic_table(rows: Sequence[dict[str, Any]], p: float) -> str:
    """The Table-1-like Markdown table of evaluation rows."""
    def pct(x: float | None, digits: int = 1) -> str:
        return "n/a" if x is None else f"{100 * x:.{digits}f}%"

    def num(x: float | None) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"

    header = ("| model | collision (scene / vehicle) | offroad (scene / vehicle) "
              "| infraction per scene (95% CI) | infraction per vehicle | r-ELBO / vehicle "
              f"| N(r, {p:g}) | reduction | s / batch | parameters |")
    lines = [header, "|" + "---|" * 10]
    for r in traffic_rows(rows):
        label = _LABELS.get(r["model"], f"Gen-neG iteration {r.get('iteration')}")
        red = "—" if r["group"] == "baseline" else pct(r.get("reduction"), 0)
        secs = r.get("sample_seconds_per_batch")
        lines.append(
            f"| {label} | {pct(r['collision'])} / {pct(r['collision_vehicle'], 2)} | "
            f"{pct(r['offroad'])} / {pct(r['offroad_vehicle'], 2)} | "
            f"{pct(r['infraction'])} [{pct(r['infraction_low'])}, {pct(r['infraction_high'])}] | "
            f"{pct(r['infraction_vehicle'], 2)} | {num(r['r_elbo'])} | {r.get('n_parallel') or 'n/a'} | "
            f"{red} | "
            f"{'n/a' if secs is None else f'{secs:.2f}'} (batch {r.get('batch_size')}) | "
            f"{r['parameters']:,} |")
    return "\n".join(lines) + "\n"



def traffic_notes(run: RunDir, config: Any, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's traffic lines: data, DDPM and evaluation settings, diverged models, the targets."""
    data = run.stage_info("data") if run.is_done("data") else {}
    notes = [
        f"data: {data.get('maps', '?')} road maps ({data.get('carla_maps', 0)} CARLA), "
        f"{config.data.num_train} training and {config.data.num_heldout} held-out scenes, "
        f"{data.get('train_vehicles_per_scene', float('nan')):.1f} vehicles per scene "
        f"(≤ {config.data.max_vehicles} slots), window {config.data.window_m:g} m",
        f"DDPM: T = {config.ddpm.num_steps} ({config.ddpm.schedule}), {config.gen_neg.sample_steps} "
        "ancestral sampling steps",
        f"evaluation: {config.eval.num_scenes} scenes per model on held-out contexts (same noise for every "
        f"model); r-ELBO on {config.eval.r_elbo_scenes} held-out scenes × {config.eval.r_elbo_timesteps} "
        "timesteps (same draws), per real vehicle; N(r, p) from the per-scene rate",
    ]
    by_model = {r["model"]: r for r in rows}
    base_elbo = by_model.get("baseline", {}).get("r_elbo")
    for r in rows:
        value = r.get("r_elbo")
        if base_elbo is not None and value is not None and (not math.isfinite(value)
                                                              or value < 100 * min(base_elbo, -1e-3)):
            notes.append(f"{_LABELS.get(r['model'], r['model'])}: sampling diverged (r-ELBO {value:.3g} per "
                         "vehicle, over 100× the baseline's): its guidance term moves ε by orders of "
                         "magnitude more than the noise; for the time-independent classifier the gradient of "
                         "log c(x̂0) is taken through x̂0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)")
    if "baseline" in by_model and "iter2" in by_model:
        b, i2 = by_model["baseline"], by_model["iter2"]
        ratio = i2["infraction"] / b["infraction"] if b["infraction"] > 0 else math.nan
        elbo_change = (i2["r_elbo"] - b["r_elbo"]) / abs(b["r_elbo"]) if b["r_elbo"] else math.nan
        notes.append(f"after two iterations: infraction {ratio:.2f}× the baseline's (target ≤ 0.5: "
                     f"{'met' if ratio <= 0.5 else 'NOT met'}), r-ELBO change {100 * elbo_change:+.1f}% "
                     f"(target ≥ -5%: {'met' if elbo_change >= -0.05 else 'NOT met'})")
    return notes


def render_scenes(task: Any, run: RunDir, rows: Sequence[dict[str, Any]],
                  load_model: Callable[[str], nn.Module]) -> list[str]:
    """PNG grids: samples of each model coloured by verdict; the same noise without and with guidance (the
    last iteration), at contexts where the baseline infracts. Returns the file names."""
    cfg = task.config
    guided_name = f"iter{cfg.gen_neg.iterations}"
    files = []
    k = min(cfg.eval.render_scenes, cfg.eval.num_scenes)
    cond = {key: v[:k] for key, v in task.eval_contexts(cfg.eval.num_scenes).items()}
    half = 0.5 * cfg.data.window_m

    def windows_of(c: Cond) -> np.ndarray:
        centres = c["centre_m"].cpu().numpy()
        return np.stack([centres[:, 0] - half, centres[:, 0] + half,
                         centres[:, 1] - half, centres[:, 1] + half], axis=1)

    def maps_of(c: Cond) -> list:
        return [task.road_maps[int(m)].drivable_map for m in c["map_index"].cpu().numpy()]

    def grid(path: Path, tokens: torch.Tensor, cond_: Cond, titles: list[str]) -> None:
        v = task.scene_oracle.details(tokens, **cond_)
        boxes, _ = tokens_to_scenes(torch.nan_to_num(tokens).cpu().numpy(), cond_["centre_m"].cpu().numpy(),
                                    task.norm)
        verdicts = [{"collision": v.collision[i].cpu().numpy(), "offroad": v.offroad[i].cpu().numpy()}
                    for i in range(tokens.shape[0])]
        save_scene_grid(path, maps_of(cond_), boxes, cond_["valid"].cpu().numpy(), verdicts,
                        windows_of(cond_), columns=min(4, tokens.shape[0]), titles=titles)

    for row in traffic_rows(rows):
        file = run.path("samples", f"{row['model']}.safetensors")
        if not file.is_file():
            continue
        tokens = load_tensors(file)["tokens"][:k].to(task.device)
        name = f"scenes_{row['model']}.png"
        grid(run.path(name), tokens, cond, [f"{row['model']} #{i}" for i in range(k)])
        files.append(name)
    # The same noise without and with guidance: the evaluation samples of both models (one noise draw per
    # context, shared by every model), at the first contexts where the baseline infracts.
    base_file = run.path("samples", "baseline.safetensors")
    guided_file = run.path("samples", f"{guided_name}.safetensors")
    all_cond = task.eval_contexts(cfg.eval.num_scenes)
    if base_file.is_file() and guided_file.is_file():
        saved = load_tensors(base_file)
        bad = ((saved["collision"] | saved["offroad"]) & all_cond["valid"].cpu()).any(1)
        order = torch.cat([torch.nonzero(bad).flatten(), torch.nonzero(~bad).flatten()])
        pick = order[: min(4, order.numel())]
        both = [saved["tokens"][pick], load_tensors(guided_file)["tokens"][pick]]
    else:
        pick = torch.arange(min(4, k))
        sub = {key: v[pick] for key, v in all_cond.items()}
        both = [task.sample(load_model(m), int(pick.numel()), stage_generator(cfg.seed, "render/noise"),
                            cond=sub).cpu() for m in ("baseline", guided_name)]
    pair_cond = {key: v[pick.to(v.device)] for key, v in all_cond.items()}
    tokens = torch.cat(both).to(task.device)
    cond2 = {key: torch.cat([v, v]) for key, v in pair_cond.items()}
    titles = [f"{name}, scene {int(i)}" for name in ("baseline", guided_name) for i in pick]
    grid(run.path("guided_vs_baseline.png"), tokens, cond2, titles)
    files.append("guided_vs_baseline.png")
    return files
