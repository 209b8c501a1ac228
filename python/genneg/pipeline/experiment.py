"""The Gen-neG experiment, stage by stage, resumable (METHOD.md Algorithm; issue 4).

::

    baseline                      train D on the training set (best held-out ELBO kept)
    eval/baseline                 infraction, ELBO, MMD, N(r, p), sampling time
    for k in 1..K:
        iter{k}/data              balanced oracle-labelled samples of the model guided by c_1..c_{k-1}
        iter{k}/classifier        train c_k (importance-weighted, Eq. 9)
        eval/iter{k}              evaluate D guided by c_1..c_k
        (after k = 1) ablation/{mode}/...  and eval/ablation_{mode}
    distill                       student D_psi matches D_K (Eq. 12)
    eval/distilled
    report                        report.md and PNG plots

Each stage writes its outputs, then its completion marker (``genneg.io.RunDir``); a resumed run loads
the outputs of finished stages and reruns the first unfinished one from scratch with the same
``torch.Generator`` (seeded from the run seed and the stage name), so a killed-and-resumed run gives the
same numbers as an uninterrupted one.

The loop is generic over the data: a :class:`Task` bundles the data, the oracle, the network factories,
the sampler and the likelihood metric. :func:`checkerboard_task` builds the paper's 2-D task; another
experiment (traffic) provides its own task and calls :func:`run_gen_neg`.

Samples drawn to evaluate model ``k`` are unbiased draws from it, so they are also the first draws of
iteration ``k + 1``'s balanced data set (nothing is sampled twice).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.data.checkerboard import CheckerboardConfig, CheckerboardOracle, sample_checkerboard
from genneg.diffusion.edm import EDMConfig, EDMPrecond
from genneg.diffusion.samplers import heun_sample
from genneg.diffusion.schedules import make_sigmas
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.io.checkpoint import load_checkpoint, load_tensors, save_checkpoint, save_tensors
from genneg.io.config import config_to_dict
from genneg.io.rundir import RunDir, stage_generator, stage_seed
from genneg.metrics import infraction_rate, mmd, num_parallel_samples, reduction
from genneg.models.mlp import ResidualMLP
from genneg.oracles.base import evaluate_oracle, sample_verdicts
from genneg.pipeline.balanced import BalancedDataset, InfractionBudgetError, draw_balanced, draw_imbalanced
from genneg.pipeline.baseline import heldout_elbo, train_denoiser
from genneg.pipeline.classifier import train_classifier
from genneg.pipeline.distill import distillation_x0, train_distilled
from genneg.pipeline.plots import plot_classifier_maps, plot_progress, plot_samples
from genneg.pipeline.profiles import ExperimentConfig
from genneg.pipeline.report import EVAL_KIND, eval_rows, write_report

__all__ = [
    "EXPERIMENTS",
    "StageHook",
    "Task",
    "build_task",
    "checkerboard_task",
    "evaluate_model",
    "load_model",
    "model_names",
    "run_checkerboard",
    "run_experiment",
    "run_gen_neg",
    "write_run_report",
]

StageHook = Callable[[str, str], None]
"""``hook(stage, event)``, called with ``event`` in ``"start"``, ``"progress"``, ``"sampled"``, ``"done"``
(tests raise from it to kill a run mid-stage)."""


@dataclass
class Task:
    """What the Gen-neG loop needs to know about one data set.

    Attributes:
        name: experiment name (``"checkerboard"``).
        train_x: ``(N, *shape)`` float32 training data (all valid).
        heldout_x: ``(M, *shape)`` float32 held-out data for the likelihood and MMD.
        oracle: ``oracle(x) -> bool (n,) or (n, P)``, True = valid.
        edm: noise range and data scale shared by the denoiser, classifiers, ELBO and sampler.
        new_denoiser: builds a fresh baseline-shaped denoiser ``D(x, sigma)``.
        new_classifier: ``new_classifier(time_dependent) -> TimeClassifier``.
        sigmas: the sampler's ``(n+1,)`` noise schedule ending in 0.
        sample_batch_size: samples per sampler call.
        plot_bounds: ``(xmin, xmax, ymin, ymax)`` for 2-D plots, or None (no sample/probability maps).
        device: where the networks run.
    """

    name: str
    train_x: torch.Tensor
    heldout_x: torch.Tensor
    oracle: Callable[[Any], Any]
    edm: EDMConfig
    new_denoiser: Callable[[], nn.Module]
    new_classifier: Callable[[bool], nn.Module]
    sigmas: torch.Tensor
    sample_batch_size: int
    plot_bounds: tuple[float, float, float, float] | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int,
               generator: torch.Generator, *, progress: bool = False) -> torch.Tensor:
        """``(n, *shape)`` samples of ``model`` (a denoiser, guided or not): Heun on the PF-ODE from
        ``sigmas[0] · N(0, I)`` noise drawn from ``generator``, in batches."""
        out = []
        batches = range(0, n, self.sample_batch_size)
        for start in tqdm(batches, disable=not progress or len(batches) < 2, desc="sampling", leave=False):
            m = min(self.sample_batch_size, n - start)
            noise = torch.randn((m, *self.sample_shape), generator=generator, device=self.device)
            out.append(heun_sample(model, noise * float(self.sigmas[0]), self.sigmas))
        return torch.cat(out) if out else torch.empty((0, *self.sample_shape), device=self.device)

    def guide(self, denoiser: nn.Module, classifiers: Sequence[nn.Module], scale: float) -> nn.Module:
        """``D_K``: ``denoiser`` guided by the stack ``classifiers`` (each with guidance scale ``scale``)."""
        if not classifiers:
            return denoiser
        return GuidedDenoiser(denoiser, list(classifiers), [scale] * len(classifiers))

    def elbo(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, *,
             num_sigmas: int, seed: int) -> float:
        """Mean held-out ELBO (nats per point) with noise draws fixed by ``seed``."""
        return heldout_elbo(model, x, self.edm, num_sigmas=num_sigmas, seed=seed)


def checkerboard_task(config: ExperimentConfig) -> Task:
    """The paper's 2-D checkerboard task for ``config`` (data drawn from generators seeded by
    ``config.seed``: train and held-out sets are the same for every run with that seed)."""
    device = torch.device(config.device)
    board = CheckerboardConfig(grid=config.data.grid, low=config.data.low, high=config.data.high)
    train_x = sample_checkerboard(config.data.num_train, board,
                                  generator=stage_generator(config.seed, "data/train"))
    heldout_x = sample_checkerboard(config.data.num_heldout, board,
                                    generator=stage_generator(config.seed, "data/heldout"))
    edm = config.edm

    def new_denoiser() -> nn.Module:
        return EDMPrecond(ResidualMLP(config.denoiser), edm.sigma_data).to(device)

    def new_classifier(time_dependent: bool) -> nn.Module:
        return TimeClassifier(ResidualMLP(config.classifier_net), edm.sigma_data,
                              time_dependent=time_dependent).to(device)

    sigmas = make_sigmas(config.sampling.schedule, config.sampling.num_steps, edm.sigma_min, edm.sigma_max,
                         config.sampling.rho)
    margin = 0.25 * (board.high - board.low)
    bounds = (board.low - margin, board.high + margin, board.low - margin, board.high + margin)
    return Task(name="checkerboard", train_x=train_x.to(device), heldout_x=heldout_x.to(device),
                oracle=CheckerboardOracle(board), edm=edm, new_denoiser=new_denoiser,
                new_classifier=new_classifier, sigmas=sigmas, sample_batch_size=config.sampling.batch_size,
                plot_bounds=bounds, device=device)


EXPERIMENTS: dict[str, Callable[[ExperimentConfig], Task]] = {"checkerboard": checkerboard_task}


def build_task(config: ExperimentConfig) -> Task:
    """The task of ``config.experiment``."""
    if config.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {config.experiment!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[config.experiment](config)


# --------------------------------------------------------------------------------------------------
# model names and files


def model_names(config: ExperimentConfig) -> list[str]:
    """Names of every model a run produces: ``baseline``, ``iter1..K``, ``ablation_<mode>``, ``distilled``."""
    names = ["baseline"] + [f"iter{k}" for k in range(1, config.gen_neg.iterations + 1)]
    names += [f"ablation_{mode}" for mode in config.ablations]
    if config.distill.iterations > 0:
        names.append("distilled")
    return names


def _classifier_path(run: RunDir, name: str) -> Path:
    return run.path("checkpoints", f"classifier_{name}.safetensors")


def _load_classifier(task: Task, run: RunDir, name: str) -> nn.Module:
    classifier = task.new_classifier(True)
    _, meta = load_checkpoint(_classifier_path(run, name))
    if not meta.get("time_dependent", True):
        classifier = task.new_classifier(False)
    load_checkpoint(_classifier_path(run, name), classifier)
    return classifier.eval()


def _load_denoiser(task: Task, run: RunDir, name: str) -> nn.Module:
    denoiser = task.new_denoiser()
    load_checkpoint(run.path("checkpoints", f"{name}.safetensors"), denoiser)
    return denoiser.eval()


def load_model(run_dir: str | Path, name: str) -> tuple[Task, ExperimentConfig, nn.Module]:
    """Rebuild a finished model of a run: ``baseline``, ``iter<k>``, ``ablation_<mode>`` or ``distilled``.

    Returns ``(task, config, model)`` where ``model`` is a denoiser ``D(x, sigma)`` (guided for ``iter<k>``
    and ablations).
    """
    run = RunDir(run_dir, resume=True)
    config = run.read_config(ExperimentConfig)
    task = build_task(config)
    if name not in model_names(config):
        raise ValueError(f"unknown model {name!r}; this run has {model_names(config)}")
    if name in ("baseline", "distilled"):
        return task, config, _load_denoiser(task, run, name)
    baseline = _load_denoiser(task, run, "baseline")
    if name.startswith("iter"):
        k = int(name[4:])
        classifiers = [_load_classifier(task, run, f"iter{j}") for j in range(1, k + 1)]
    else:
        classifiers = [_load_classifier(task, run, name)]
    return task, config, task.guide(baseline, classifiers, config.gen_neg.guidance_scale)


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate_model(
    task: Task, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], config: ExperimentConfig, *,
    num_samples: int | None = None, progress: bool = False, hook: StageHook | None = None, stage: str = "",
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Infraction rate (95% Wilson interval), held-out ELBO, MMD², ``N(r, p)`` and sampling time of one
    model. The initial noise and the ELBO's noise draws come from generators seeded by the run seed only,
    so every model of a run is measured on the same draws (paired comparisons).

    Returns:
        ``(metrics, samples (n, *shape), valid (n,) bool)``.
    """
    n = config.eval.num_samples if num_samples is None else num_samples
    generator = stage_generator(config.seed, "eval/noise", task.device)
    start = time.perf_counter()
    samples = task.sample(model, n, generator, progress=progress)
    seconds = time.perf_counter() - start
    if hook is not None:
        hook(stage, "sampled")
    valid = sample_verdicts(evaluate_oracle(task.oracle, samples))
    rate = infraction_rate(valid)
    heldout = task.heldout_x
    elbo = task.elbo(model, heldout[: config.eval.elbo_points], num_sigmas=config.eval.elbo_num_sigmas,
                     seed=stage_seed(config.seed, "eval/elbo"))
    m = min(config.eval.mmd_points, n, heldout.shape[0])
    finite = torch.isfinite(samples[:m]).flatten(1).all(dim=1)
    mmd2 = mmd(samples[:m][finite], heldout[:m]) if int(finite.sum()) >= 2 else math.nan
    n_parallel = num_parallel_samples(rate.rate, config.eval.p) if rate.rate < 1 else None
    metrics = {
        "infraction": rate.rate, "infraction_low": rate.low, "infraction_high": rate.high,
        "infractions": rate.count, "num_samples": rate.total, "elbo": elbo, "mmd": mmd2,
        "n_parallel": n_parallel, "sample_seconds": seconds, "sample_ms_per_1k": 1e6 * seconds / max(n, 1),
    }
    return metrics, samples, valid


# --------------------------------------------------------------------------------------------------
# the loop


class _Runner:
    """Runs stages in order, skipping finished ones (see the module docstring)."""

    def __init__(self, task: Task, config: ExperimentConfig, run: RunDir, progress: bool,
                 hook: StageHook | None) -> None:
        self.task, self.config, self.run, self.progress, self.hook = task, config, run, progress, hook
        self.started = time.perf_counter()

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"[genneg {time.perf_counter() - self.started:7.1f}s] {text}", file=sys.stderr, flush=True)

    def _event(self, stage: str, event: str) -> None:
        if self.hook is not None:
            self.hook(stage, event)

    def stage(self, name: str, body: Callable[[torch.Generator], dict[str, Any] | None]) -> bool:
        """Run ``body(generator)`` unless ``name`` has finished; returns True when it ran."""
        if self.run.is_done(name):
            self._say(f"{name}: done earlier, loaded")
            return False
        self._say(f"{name}: start")
        self._event(name, "start")
        t0 = time.perf_counter()
        info = body(stage_generator(self.config.seed, name, self.task.device)) or {}
        self.run.mark_done(name, {"seconds": time.perf_counter() - t0, **info})
        self._event(name, "done")
        self._say(f"{name}: done in {time.perf_counter() - t0:.1f}s")
        return True

    # stages ------------------------------------------------------------------------------------------
    def baseline(self) -> nn.Module:
        task, cfg, run = self.task, self.config, self.run
        path = run.path("checkpoints", "baseline.safetensors")

        def body(g: torch.Generator) -> dict[str, Any]:
            denoiser = task.new_denoiser()
            init = torch.Generator().manual_seed(stage_seed(cfg.seed, "baseline/init"))
            _init_from(denoiser, init)

            def on_eval(entry: dict[str, Any]) -> None:
                run.log("baseline", {"kind": "train", **entry})
                self._event("baseline", "progress")

            result = train_denoiser(denoiser, task.train_x, task.heldout_x[: cfg.eval.elbo_points],
                                    cfg.baseline, task.edm, g, progress=self.progress, on_eval=on_eval)
            summary = {"best_iteration": result.best_iteration, "best_elbo": result.best_elbo,
                       "iterations_run": result.iterations_run}
            save_checkpoint(path, denoiser, {"stage": "baseline", **summary})
            run.log("baseline", {"kind": "train_summary", **summary})
            return summary

        self.stage("baseline", body)
        return _load_denoiser(task, run, "baseline")

    def evaluate(self, name: str, group: str, iteration: int | None, model: nn.Module,
                 baseline_n: int | None) -> dict[str, Any]:
        stage = f"eval/{name}"
        path = self.run.path("samples", f"{name}.safetensors")

        def body(g: torch.Generator) -> dict[str, Any]:
            metrics, samples, valid = evaluate_model(self.task, model, self.config, progress=self.progress,
                                                     hook=self.hook, stage=stage)
            save_tensors(path, {"x": samples, "valid": valid})
            n = metrics["n_parallel"]
            red = reduction(n, baseline_n) if n is not None and baseline_n is not None else None
            if group == "baseline":
                red = 0.0
            record = {"kind": EVAL_KIND, "model": name, "group": group, "iteration": iteration,
                      "reduction": red, **metrics}
            self.run.log(stage, record)
            return {"infraction": metrics["infraction"]}

        self.stage(stage, body)
        record = self.run.records(stage)[-1]
        self._say(f"{name}: infraction {100 * record['infraction']:.2f}% "
                  f"[{100 * record['infraction_low']:.2f}, {100 * record['infraction_high']:.2f}], "
                  f"ELBO {record['elbo']:.3f}, N={record['n_parallel']}")
        return record

    def _pool_sampler(self, model: nn.Module, pool_name: str | None, g: torch.Generator
                      ) -> Callable[[int], torch.Tensor]:
        """``sample_fn(n)`` serving the evaluation samples of ``model`` first, then fresh draws."""
        pool = load_tensors(self.run.path("samples", f"{pool_name}.safetensors"))["x"] if pool_name else None
        state = {"offset": 0}

        def sample_fn(n: int) -> torch.Tensor:
            parts = []
            if pool is not None and state["offset"] < pool.shape[0]:
                take = pool[state["offset"]: state["offset"] + n].to(self.task.device)
                state["offset"] += take.shape[0]
                parts.append(take)
            missing = n - sum(p.shape[0] for p in parts)
            if missing > 0:
                parts.append(self.task.sample(model, missing, g, progress=self.progress))
            return torch.cat(parts)

        return sample_fn

    def data(self, stage: str, model: nn.Module, pool_name: str | None, balanced: bool) -> BalancedDataset:
        cfg = self.config
        path = self.run.path(stage, "dataset.safetensors")

        def body(g: torch.Generator) -> dict[str, Any]:
            sample_fn = self._pool_sampler(model, pool_name, g)
            if balanced:
                dataset = self._draw_balanced(sample_fn, g)
            else:
                dataset = draw_imbalanced(sample_fn, self.task.oracle, cfg.gen_neg.num_samples,
                                          batch_size=cfg.sampling.batch_size, progress=self.progress)
            dataset.save(path)
            info = {"pi_neg": dataset.pi_neg, "num_drawn": dataset.num_drawn, "num_pos": dataset.num_pos,
                    "num_neg": dataset.num_neg, "balanced": balanced,
                    "shrunk": bool(dataset.extra.get("shrunk", False))}
            self.run.log(stage, {"kind": "data", **info})
            return info

        self.stage(stage, body)
        return BalancedDataset.load(path, device=self.task.device)

    def _draw_balanced(self, sample_fn: Callable[[int], torch.Tensor], g: torch.Generator) -> BalancedDataset:
        """``draw_balanced``; with ``gen_neg.budget_policy == "shrink"``, a model too rare in one class for
        the budget gets, instead of an error, every example of that class among exactly ``max_draws``
        draws and ``N/2`` of the other (the loss weights ``pi_y / f_y`` follow the actual mix)."""
        cfg = self.config.gen_neg
        drawn: list[torch.Tensor] = []

        def recording(n: int) -> torch.Tensor:
            x = sample_fn(n)
            drawn.append(x)
            return x

        try:
            return draw_balanced(recording, self.task.oracle, cfg.num_samples,
                                 batch_size=self.config.sampling.batch_size, max_draws=cfg.max_draws,
                                 generator=g, progress=self.progress)
        except InfractionBudgetError as err:
            if cfg.budget_policy != "shrink":
                raise
            self._say(f"balanced data: {err}; shrinking the set to what {cfg.max_draws} draws hold")
        total = sum(x.shape[0] for x in drawn)
        while total < cfg.max_draws:
            n = min(self.config.sampling.batch_size, cfg.max_draws - total)
            drawn.append(sample_fn(n))
            total += n
        x = torch.cat(drawn)
        valid = sample_verdicts(evaluate_oracle(self.task.oracle, x))
        half = cfg.num_samples // 2
        pos = torch.nonzero(valid).flatten()[:half]
        neg = torch.nonzero(~valid).flatten()[:half]
        if pos.numel() == 0 or neg.numel() == 0:
            raise InfractionBudgetError(float((~valid).float().mean()), cfg.max_draws, drawn=total,
                                        needed=math.inf, label="negative" if neg.numel() == 0 else "positive",
                                        rate_upper=1.0, missing=half)
        keep = torch.cat([pos, neg])
        keep = keep[torch.randperm(keep.numel(), generator=g).to(x.device)]
        pi_neg = float((~valid).float().mean())
        # up to N/2 of each class; the importance weights pi_y / f_y correct for the actual class mix
        return BalancedDataset(x=x[keep], labels=valid[keep], part_labels=None, pi_pos=1.0 - pi_neg,
                               pi_neg=pi_neg, num_drawn=total, balanced=True, extra={"shrunk": True})

    def classifier(self, stage: str, name: str, dataset: BalancedDataset, mode: str) -> nn.Module:
        cfg, task = self.config, self.task
        time_dependent = mode != "time_independent"

        def body(g: torch.Generator) -> dict[str, Any]:
            classifier = task.new_classifier(time_dependent)
            _init_from(classifier, torch.Generator().manual_seed(stage_seed(cfg.seed, f"{stage}/init")))
            config = dataclasses.replace(cfg.classifier, mode=mode)
            history = train_classifier(classifier, dataset, config, task.edm, generator=g,
                                       progress=self.progress)
            losses = [float(v) for v in (history or [])]
            tail = losses[-max(1, len(losses) // 10):] if losses else []
            info = {"mode": mode, "time_dependent": time_dependent,
                    "final_loss": sum(tail) / len(tail) if tail else None}
            save_checkpoint(_classifier_path(self.run, name), classifier, {"stage": stage, **info})
            self.run.log(stage, {"kind": "classifier", **info})
            return info

        self.stage(stage, body)
        return _load_classifier(task, self.run, name)

    def distill(self, teacher: nn.Module, teacher_pool: str) -> nn.Module:
        cfg, task, run = self.config, self.task, self.run

        def body(g: torch.Generator) -> dict[str, Any]:
            student = task.new_denoiser()
            if cfg.gen_neg.distill_init == "baseline":
                load_checkpoint(run.path("checkpoints", "baseline.safetensors"), student)
            else:
                _init_from(student, torch.Generator().manual_seed(stage_seed(cfg.seed, "distill/init")))
            x0 = distillation_x0(cfg.distill, task.train_x, self._pool_sampler(teacher, teacher_pool, g))
            history = train_distilled(student, teacher, x0, cfg.distill, task.edm, generator=g,
                                      progress=self.progress)
            losses = [float(v) for v in (history or [])]
            info = {"x0_source": cfg.distill.x0_source, "num_x0": int(x0.shape[0]),
                    "final_loss": sum(losses[-50:]) / len(losses[-50:]) if losses else None}
            save_checkpoint(run.path("checkpoints", "distilled.safetensors"), student,
                            {"stage": "distill", **info})
            run.log("distill", {"kind": "distill", **info})
            return info

        self.stage("distill", body)
        return _load_denoiser(task, run, "distilled")


def _init_from(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``module``'s parameters from ``generator`` (PyTorch's default schemes), so that a
    stage's initial weights depend only on its seed, not on what ran before it in the process."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            bound = 1.0 / math.sqrt(sub.in_features)
            with torch.no_grad():
                sub.weight.copy_((torch.rand(sub.weight.shape, generator=generator) * 2 - 1) * bound)
                if sub.bias is not None:
                    sub.bias.copy_((torch.rand(sub.bias.shape, generator=generator) * 2 - 1) * bound)


def run_gen_neg(task: Task, config: ExperimentConfig, run: RunDir, *, progress: bool = True,
                hook: StageHook | None = None) -> list[dict[str, Any]]:
    """Run (or resume) every stage of the Gen-neG experiment for ``task`` in ``run``.

    Returns the evaluation records (one per model, ordered as in the report).
    """
    runner = _Runner(task, config, run, progress, hook)
    gamma = config.gen_neg.guidance_scale
    baseline = runner.baseline()
    base_record = runner.evaluate("baseline", "baseline", 0, baseline, None)
    baseline_n = base_record["n_parallel"]
    classifiers: list[nn.Module] = []
    first_data: BalancedDataset | None = None
    previous = "baseline"
    for k in range(1, config.gen_neg.iterations + 1):
        current = task.guide(baseline, classifiers, gamma)
        dataset = runner.data(f"iter{k}/data", current, previous, balanced=True)
        classifiers.append(runner.classifier(f"iter{k}/classifier", f"iter{k}", dataset,
                                             config.classifier.mode))
        runner.evaluate(f"iter{k}", "gen_neg", k, task.guide(baseline, classifiers, gamma), baseline_n)
        previous = f"iter{k}"
        if k == 1:
            first_data = dataset
            for mode in config.ablations:
                data = first_data
                if mode == "imbalanced":
                    data = runner.data("ablation/imbalanced/data", baseline, "baseline", balanced=False)
                clf = runner.classifier(f"ablation/{mode}/classifier", f"ablation_{mode}", data, mode)
                runner.evaluate(f"ablation_{mode}", "ablation", 1, task.guide(baseline, [clf], gamma),
                                baseline_n)
    if config.distill.iterations > 0:
        teacher = task.guide(baseline, classifiers, gamma)
        student = runner.distill(teacher, previous)
        runner.evaluate("distilled", "distilled", config.gen_neg.iterations, student, baseline_n)
    runner._say("report: writing")
    write_run_report(run, task=task)
    return eval_rows(run.records())


def write_run_report(run: RunDir, *, task: Task | None = None) -> Path:
    """(Re)write ``report.md`` and the PNG plots of a run from its records, samples and checkpoints."""
    config = run.read_config(ExperimentConfig)
    task = build_task(config) if task is None else task
    records = run.records()
    rows = eval_rows(records)
    plots: list[str] = []
    if rows:
        plot_progress(run.path("progress.png"), rows)
        plots.append("progress.png")
    if task.plot_bounds is not None and len(task.sample_shape) == 1 and task.sample_shape[0] == 2:
        panels = [("training data", task.train_x.cpu().numpy(),
                   sample_verdicts(evaluate_oracle(task.oracle, task.train_x)).cpu().numpy())]
        for row in rows:
            file = run.path("samples", f"{row['model']}.safetensors")
            if file.is_file():
                t = load_tensors(file)
                panels.append((row["model"], t["x"].numpy(), t["valid"].numpy()))
        plot_samples(run.path("samples.png"), panels, bounds=task.plot_bounds)
        plots.append("samples.png")
        names = [f"iter{k}" for k in range(1, config.gen_neg.iterations + 1)]
        names += [f"ablation_{m}" for m in config.ablations]
        found = [(n, _load_classifier(task, run, n)) for n in names if _classifier_path(run, n).is_file()]
        time_dependent = [(n, c) for n, c in found if getattr(c, "time_dependent", True)]
        if time_dependent:
            plot_classifier_maps(run.path("classifiers.png"), time_dependent, config.eval.plot_sigmas,
                                 task.plot_bounds)
            plots.append("classifiers.png")
    base = run.stage_info("baseline") if run.is_done("baseline") else {}
    seconds = sum(run.stage_info(s).get("seconds", 0.0) for s in run.completed_stages())
    cfg = config_to_dict(config)
    notes = [
        f"experiment `{config.experiment}`, profile `{config.profile}`, seed {config.seed}, device "
        f"`{config.device}`",
        f"compute time over all stages: {seconds:.0f} s",
        f"baseline: {base.get('iterations_run', '?')} iterations, weights of iteration "
        f"{base.get('best_iteration', '?')} kept (best held-out ELBO)",
        f"sampling: {config.sampling.num_steps} Heun steps, {config.sampling.schedule} schedule; "
        f"evaluation on {config.eval.num_samples} samples, ELBO on {config.eval.elbo_points} held-out "
        f"points × {config.eval.elbo_num_sigmas} noise levels",
        f"Gen-neG: {config.gen_neg.iterations} iterations of {config.gen_neg.num_samples} balanced samples, "
        f"classifier {cfg['classifier']}",
    ]
    for k in range(1, config.gen_neg.iterations + 1):
        recs = run.records(f"iter{k}/data")
        if recs:
            notes.append(f"iteration {k} data: {recs[-1]['num_drawn']} draws, estimated infraction rate "
                         f"{100 * recs[-1]['pi_neg']:.2f}%")
    if rows:
        return _write(run, config, rows, notes, plots)
    return run.path("report.md")


def _write(run: RunDir, config: ExperimentConfig, rows: list[dict[str, Any]], notes: list[str],
           plots: list[str]) -> Path:
    path = run.path("report.md")
    write_report(path, rows, title=f"Gen-neG on {config.experiment} ({config.profile} profile)",
                 p=config.eval.p, notes=notes, plots=plots)
    return path


def run_experiment(config: ExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                   overwrite: bool = False, progress: bool = True, hook: StageHook | None = None
                   ) -> list[dict[str, Any]]:
    """Run ``config.experiment`` into ``run_dir`` (see :func:`run_gen_neg`).

    With ``resume=True`` the run continues from its last finished stage; ``config`` must equal the saved
    one (``genneg.io.RunStateError`` otherwise).
    """
    run = RunDir(run_dir, resume=resume, overwrite=overwrite)
    run.write_config(config)
    previous_threads = torch.get_num_threads()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    try:
        task = build_task(config)
        return run_gen_neg(task, config, run, progress=progress, hook=hook)
    finally:
        torch.set_num_threads(previous_threads)


def run_checkerboard(config: ExperimentConfig, run_dir: str | Path, resume: bool = False, **kwargs: Any
                     ) -> list[dict[str, Any]]:
    """The checkerboard experiment (``config.experiment`` must be ``"checkerboard"``)."""
    if config.experiment != "checkerboard":
        raise ValueError(f"run_checkerboard got experiment {config.experiment!r}")
    return run_experiment(config, run_dir, resume=resume, **kwargs)
