"""The motion task's report: the Table-2-like table, its notes, stick-figure filmstrips coloured by verdict
and lowest-joint heights over time (issue 15)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genneg.io.checkpoint import load_tensors
from genneg.io.rundir import RunDir
from genneg.pipeline.motion_profiles import MOTION_ABLATIONS

__all__ = ["format_motion_table", "motion_notes", "motion_rows", "render_motions"]

_LABELS = {"ablation_time_independent": "time-independent guidance", "ablation_no_is": "w/o IS",
           "ablation_imbalanced": "imbalanced", "baseline": "baseline", "distilled": "distilled"}


def motion_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One evaluation record per model (the last wins): baseline, ablations, iterations, distilled."""
    by_model: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "eval":
            by_model[r["model"]] = dict(r)
    group_order = {"baseline": 0, "ablation": 1, "gen_neg": 2, "distilled": 3}
    ablation_order = {f"ablation_{m}": i for i, m in enumerate(MOTION_ABLATIONS)}

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        return (group_order.get(r["group"], 9), ablation_order.get(r["model"], 0), r.get("iteration") or 0)

    return sorted(by_model.values(), key=key)


def _label(r: dict[str, Any]) -> str:
    return _LABELS.get(r["model"], f"Gen-neG iteration {r.get('iteration')}")


def format_motion_table(rows: Sequence[dict[str, Any]], p: float) -> str:
    """The Table-2-like Markdown table of evaluation rows."""
    def pct(x: float | None, digits: int = 1) -> str:
        return "n/a" if x is None else f"{100 * x:.{digits}f}%"

    def num(x: float | None, fmt: str = ".3f") -> str:
        return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)

    header = ("| model | infraction per clip (95% CI) | infraction per frame | r-ELBO / frame | FID | KID "
              f"| foot skating | floating | lowest joint (m) | N(r, {p:g}) | reduction | s / batch "
              "| parameters |")
    lines = [header, "|" + "---|" * 13]
    for r in motion_rows(rows):
        red = "—" if r["group"] == "baseline" else pct(r.get("reduction"), 0)
        secs = r.get("sample_seconds_per_batch")
        lines.append(
            f"| {_label(r)} | {pct(r['infraction'])} [{pct(r['infraction_low'])}, "
            f"{pct(r['infraction_high'])}] | {pct(r['infraction_frame'], 2)} | {num(r['r_elbo'])} "
            f"| {num(r['fid'])} | {num(r['kid'], '.4f')} | {pct(r['skating'], 2)} | {pct(r['floating'], 2)} "
            f"| {num(r['lowest_height_m'])} | {r.get('n_parallel') or 'n/a'} | {red} | "
            f"{'n/a' if secs is None else f'{secs:.2f}'} (batch {r.get('batch_size')}) | "
            f"{r['parameters']:,} |")
    return "\n".join(lines) + "\n"


def motion_notes(task: Any, run: RunDir, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's motion lines: data, oracle, metric definitions, the data's own metrics, the targets."""
    cfg = task.config
    data = run.stage_info("data") if run.is_done("data") else {}
    q = task.quality
    ref = task.data_reference()
    dropped = (f", {data['dropped_windows']} windows dropped (below the floor)"
               if "dropped_windows" in data else "")
    notes = [
        f"data: {cfg.data.source}, {data.get('train_clips', '?')} training and "
        f"{data.get('heldout_clips', '?')} held-out clips of {cfg.data.frames} frames at {task.fps:g} fps, "
        f"{task.skeleton.num_joints} joints" + dropped,
        f"oracle: a clip is invalid iff a joint is more than {100 * cfg.oracle.tolerance_m:g} cm below the "
        "floor in some frame; infraction per frame counts frames",
        f"DDPM: T = {cfg.ddpm.num_steps} ({cfg.ddpm.schedule}), {cfg.gen_neg.sample_steps} ancestral steps; "
        f"evaluation: {cfg.eval.num_clips} clips per model (same noise for every model), r-ELBO on "
        f"{cfg.eval.r_elbo_clips} held-out clips × {cfg.eval.r_elbo_timesteps} timesteps (same draws), per "
        "frame",
        f"foot skating: a foot joint below {100 * q.contact_height_m:g} cm in two consecutive frames moving "
        f"faster than {q.skate_speed_m_s:g} m/s horizontally (GMD's 2.5 cm per frame at 20 fps); floating: "
        f"frames in airborne runs (lowest joint above {100 * q.float_height_m:g} cm) longer than "
        f"{q.max_flight_s:g} s",
        "FID / KID: against the held-out clips, in the standardised 64-d features of a 1-D temporal CNN "
        "trained on the training clips to recognise the motion family (not HumanML3D's evaluator)",
        f"held-out data against as many training clips: FID {ref['fid']:.3f}, KID {ref['kid']:.4f}, skating "
        f"{100 * ref['skating']:.2f}%, floating {100 * ref['floating']:.2f}%, lowest joint "
        f"{ref['lowest_height_m']:.3f} m",
    ]
    by_model = {r["model"]: r for r in rows}
    if "baseline" in by_model and "iter1" in by_model:
        b, i1 = by_model["baseline"], by_model["iter1"]
        ratio = i1["infraction"] / b["infraction"] if b["infraction"] > 0 else math.nan
        change = (i1["r_elbo"] - b["r_elbo"]) / abs(b["r_elbo"]) if b["r_elbo"] else math.nan
        notes.append(f"after one iteration: infraction {ratio:.2f}× the baseline's (target ≤ 0.5: "
                     f"{'met' if ratio <= 0.5 else 'NOT met'}), r-ELBO change {100 * change:+.1f}% "
                     f"(target ≥ -5%: {'met' if change >= -0.05 else 'NOT met'}), skating "
                     f"{100 * b['skating']:.2f}% -> {100 * i1['skating']:.2f}%, floating "
                     f"{100 * b['floating']:.2f}% -> {100 * i1['floating']:.2f}%")
    return notes


def _draw_stick(ax: Any, pose: np.ndarray, parents: Sequence[int], colour: str, offset: float) -> None:
    """Side view of one pose ``(J, 3)``: forward (z) to the right, up (y) up, shifted by ``offset`` m."""
    for j, p in enumerate(parents):
        if p >= 0:
            ax.plot([pose[p, 2] + offset, pose[j, 2] + offset], [pose[p, 1], pose[j, 1]], color=colour,
                    lw=1.2)


def render_motions(task: Any, run: RunDir, rows: Sequence[dict[str, Any]]) -> list[str]:
    """``filmstrips.png``: per model, the same clips (same noise) as stick figures at six frames, red where
    the frame is invalid; ``lowest_joint.png``: lowest-joint height over time of those clips per model,
    with the floor and the tolerance. Clips are those where the baseline infracts first. Returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = [r for r in motion_rows(rows) if run.path("samples", f"{r['model']}.safetensors").is_file()]
    if not ordered:
        return []
    saved = {r["model"]: load_tensors(run.path("samples", f"{r['model']}.safetensors")) for r in ordered}
    base = saved.get("baseline", saved[ordered[0]["model"]])
    bad = ~base["frame_valid"].all(1)
    order = torch.cat([torch.nonzero(bad).flatten(), torch.nonzero(~bad).flatten()])
    pick = order[: task.config.eval.render_clips]
    frames = base["x"].shape[1]
    shown = np.linspace(0, frames - 1, 6).round().astype(int)
    parents = task.skeleton.parents
    tol = task.config.oracle.tolerance_m
    fig, axes = plt.subplots(len(ordered), len(pick), figsize=(3.2 * len(pick), 2.2 * len(ordered)),
                             squeeze=False)
    fig2, axes2 = plt.subplots(1, len(ordered), figsize=(3.2 * len(ordered), 2.6), squeeze=False)
    t = np.arange(frames) / task.fps
    for i, r in enumerate(ordered):
        x = saved[r["model"]]["x"][pick]
        ok = saved[r["model"]]["frame_valid"][pick].numpy()
        pos = task.positions(torch.nan_to_num(x).to(task.device)).cpu().numpy()
        for c in range(len(pick)):
            ax = axes[i, c]
            for s, f in enumerate(shown):
                _draw_stick(ax, pos[c, f] - np.array([0, 0, pos[c, f, 0, 2]]), parents,
                            "tab:green" if ok[c, f] else "tab:red", offset=1.0 * s)
            ax.axhline(0.0, color="k", lw=0.8)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_title(f"{_label(r)}, clip {int(pick[c])}", fontsize=7)
            axes2[0, i].plot(t, pos[c, :, :, 1].min(-1), lw=1)
        axes2[0, i].axhline(0.0, color="k", lw=0.8)
        axes2[0, i].axhline(-tol, color="tab:red", lw=0.8, ls="--")
        axes2[0, i].set_title(_label(r), fontsize=8)
        axes2[0, i].set_xlabel("time (s)")
    axes2[0, 0].set_ylabel("lowest joint (m)")
    fig.tight_layout()
    fig.savefig(run.path("filmstrips.png"), dpi=90)
    fig2.tight_layout()
    fig2.savefig(run.path("lowest_joint.png"), dpi=90)
    plt.close(fig)
    plt.close(fig2)
    return ["filmstrips.png", "lowest_joint.png"]
