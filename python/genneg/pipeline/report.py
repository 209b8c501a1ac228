"""The run's ``report.md``: one table row per evaluated model.

Rows (in this order): the baseline, each Gen-neG iteration, each ablation, the distilled model. Columns:
infraction rate with its 95% Wilson interval, held-out ELBO (nats per point, same noise draws for every
model), MMD² to held-out data, ``N(r, p)`` (parallel samples for one valid sample with probability
``p``) and its reduction versus the baseline, and sampling time (ms per 1,000 samples on the run's device).

The rows are built from the evaluation records of ``metrics.jsonl`` (see :func:`eval_rows`), so a report
can be regenerated from a finished run directory without recomputing anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from genneg.io.checkpoint import atomic_write_text

__all__ = ["EVAL_KIND", "eval_rows", "format_table", "write_report"]

EVAL_KIND = "eval"
_GROUP_ORDER = {"baseline": 0, "gen_neg": 1, "ablation": 2, "distilled": 3}


def eval_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation records (``kind == "eval"``) of a run, one per model (the last one wins), ordered
    baseline, iterations, ablations, distilled."""
    by_model: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == EVAL_KIND:
            by_model[record["model"]] = dict(record)
    def order(r: dict[str, Any]) -> tuple[int, int, str]:
        return _GROUP_ORDER.get(r.get("group", ""), 9), r.get("iteration") or 0, r["model"]

    return sorted(by_model.values(), key=order)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _num(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def format_table(rows: Sequence[Mapping[str, Any]], p: float) -> str:
    """A Markdown table of :func:`eval_rows` output; ``p`` is the success probability of ``N(r, p)``."""
    header = ("| model | infraction (95% CI) | held-out ELBO (nats) | ΔELBO vs baseline | MMD² | "
              f"N(r, {p:g}) | reduction vs baseline | sampling (ms / 1k) |")
    lines = [header, "|" + "---|" * 8]
    base_elbo = next((r.get("elbo") for r in rows if r.get("group") == "baseline"), None)
    for r in rows:
        delta = "—" if base_elbo is None or r.get("group") == "baseline" or r.get("elbo") is None else (
            f"{r['elbo'] - base_elbo:+.3f}")
        infraction = f"{_pct(r['infraction'])} [{_pct(r['infraction_low'])}, {_pct(r['infraction_high'])}]"
        reduction = "—" if r.get("group") == "baseline" else _num(
            None if r.get("reduction") is None else 100 * r["reduction"], ".0f") + "%"
        lines.append(
            f"| {r['model']} | {infraction} | {_num(r.get('elbo'), '.3f')} | {delta} | "
            f"{_num(r.get('mmd'), '.2e')} | "
            f"{r.get('n_parallel', 'n/a')} | {reduction} | {_num(r.get('sample_ms_per_1k'), '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    path: str | os.PathLike[str],
    records: Iterable[Mapping[str, Any]],
    *,
    title: str,
    p: float,
    notes: Sequence[str] = (),
    plots: Sequence[str] = (),
) -> str:
    """Write ``report.md`` (atomically) and return its text.

    Args:
        path: target file.
        records: the run's metric records (``RunDir.records()``).
        title: first heading.
        p: the ``p`` of ``N(r, p)`` (for the column header).
        notes: lines placed under the title (profile, seed, wall time, config summary).
        plots: file names of PNGs, relative to the report, embedded below the table.
    """
    rows = eval_rows(records)
    if not rows:
        raise ValueError("no evaluation records to report (run the experiment first)")
    parts = [f"# {title}\n"]
    parts += [f"- {n}" for n in notes]
    parts += ["", format_table(rows, p)]
    parts += [f"![{name}]({name})\n" for name in plots]
    text = "\n".join(parts)
    atomic_write_text(path, text)
    return text
