"""The one Gen-neG loop, stage by stage, resumable, for every task (METHOD.md Algorithm; issues 4, 11).

::

    data                          only for tasks that write their data into the run (traffic, user arrays)
    baseline                      train the model on the training set (best held-out likelihood kept)
    eval/baseline                 infraction, likelihood, N(r, p), sampling time (the task's metrics)
    for k in 1..K:
        iter{k}/data              balanced oracle-labelled samples of the model guided by c_1..c_{k-1}
        iter{k}/classifier        train c_k (importance-weighted, Eq. 9)
        eval/iter{k}              evaluate the model guided by c_1..c_k
        (after k = 1) ablation/{mode}/...  and eval/ablation_{mode}
    distill                       student matches the guided teacher (Eq. 12); skipped when
                                  distill.iterations == 0
    eval/distilled
    report                        report.md and the task's pictures

Each stage writes its outputs, then its completion marker (``genneg.io.RunDir``); a resumed run loads
the outputs of finished stages and reruns the first unfinished one from scratch with the same
``torch.Generator`` (seeded from the run seed and the stage name), and every fresh network is built right
after seeding PyTorch with its stage's init seed (and re-initialised by :meth:`Task.initialise` from a
generator with that seed), so a killed-and-resumed run gives the same numbers as an uninterrupted one.

Everything that differs between problems is a :class:`~genneg.pipeline.task.Task` hook; the loop holds
stage order, seeding, resume, the budget policy, pooling of evaluation samples, model files and the
report skeleton. Samples drawn to evaluate model ``k`` of an unconditioned task are unbiased draws from
it, so they are also the first draws of iteration ``k + 1``'s balanced data set.

The run directory records what reopens it: ``config.json`` and ``task.json`` (the task's reference:
a registered experiment name, a ``module:function`` task factory, or a user's array task with its
oracle's reference; :func:`open_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genneg.io.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from genneg.io.config import apply_overrides, config_to_dict
from genneg.io.rundir import RunDir, RunStateError, stage_generator, stage_seed
from genneg.metrics import reduction
from genneg.pipeline import distributed
from genneg.pipeline.balanced import BalancedDataset, draw_balanced, draw_imbalanced
from genneg.pipeline.classifier import train_classifier
from genneg.pipeline.distill import train_distilled
from genneg.pipeline.plots import plot_progress
from genneg.pipeline.registry import absolute_reference, get_experiment, import_object
from genneg.pipeline.report import EVAL_KIND, eval_rows
from genneg.pipeline.task import Cond, Task

__all__ = [
    "StageHook",
    "build_task",
    "classifier_path",
    "load_classifier",
    "load_model",
    "model_names",
    "open_run",
    "resume_run",
    "run_experiment",
    "run_gen_neg",
    "run_task",
    "train",
    "write_run_report",
]

StageHook = Callable[[str, str], None]
"""``hook(stage, event)``, called with ``event`` in ``"start"``, ``"progress"``, ``"sampled"``, ``"done"``
(tests raise from it to kill a run mid-stage)."""

TASK_FILE = "task.json"


def build_task(config: Any) -> Task:
    """A fresh task of the registered experiment ``config.experiment`` (not yet set up)."""
    return get_experiment(config.experiment).task_factory()


# --------------------------------------------------------------------------------------------------
# model names and files


def model_names(config: Any) -> list[str]:
    """Names of every model a run produces: ``baseline``, ``iter1..K``, ``ablation_<mode>``, ``distilled``."""
    names = ["baseline"] + [f"iter{k}" for k in range(1, config.gen_neg.iterations + 1)]
    names += [f"ablation_{mode}" for mode in config.ablations]
    if config.distill.iterations > 0:
        names.append("distilled")
    return names


def classifier_path(run: RunDir, name: str) -> Path:
    """The checkpoint of classifier ``name`` (``iter<k>`` or ``ablation_<mode>``)."""
    return run.path("checkpoints", f"classifier_{name}.safetensors")


def load_classifier(task: Task, run: RunDir, name: str) -> nn.Module:
    """Classifier ``name`` of a run, in eval mode (time-independent when it was trained so)."""
    _, meta = load_checkpoint(classifier_path(run, name))
    classifier = task.new_classifier(bool(meta.get("time_dependent", True)))
    load_checkpoint(classifier_path(run, name), classifier)
    return classifier.eval()


def _load_denoiser(task: Task, run: RunDir, name: str) -> nn.Module:
    model = task.new_denoiser()
    load_checkpoint(run.path("checkpoints", f"{name}.safetensors"), model)
    return model.eval()


def _build_model(task: Task, run: RunDir, config: Any, name: str) -> nn.Module:
    if name in ("baseline", "distilled"):
        return _load_denoiser(task, run, name)
    baseline = _load_denoiser(task, run, "baseline")
    if name.startswith("iter"):
        classifiers = [load_classifier(task, run, f"iter{j}") for j in range(1, int(name[4:]) + 1)]
    else:
        classifiers = [load_classifier(task, run, name)]
    return task.guide(baseline, classifiers, config.gen_neg.guidance_scale)


def _task_from_reference(reference: dict[str, Any], data_dir: Path,
                         oracle: Callable[..., Any] | None) -> Task:
    if reference.get("factory"):
        task = import_object(reference["factory"])()
        if not isinstance(task, Task):
            raise TypeError(f"task factory {reference['factory']} returned {type(task).__name__}, not a Task")
        if oracle is not None:
            raise ValueError("oracle= cannot replace the oracle of a task built by a factory")
        recorded = reference.get("fingerprint")
        if recorded and hasattr(task, "fingerprint") and task.fingerprint() != recorded:
            raise RunStateError(f"task factory {reference['factory']} now returns other data than the run "
                                "was trained on (fingerprint differs)")
        return task
    if reference.get("kind") == "arrays":
        from genneg.pipeline.arrays import ArrayTask

        task = ArrayTask.reopen(reference, data_dir, oracle)
        if reference.get("fingerprint") and task.fingerprint() != reference["fingerprint"]:
            raise RunStateError(f"the arrays in {data_dir} do not match the run's recorded fingerprint")
        return task
    if oracle is not None:
        raise ValueError(f"oracle= is only for user array tasks; this run is the registered experiment "
                         f"{reference.get('experiment')!r}, whose oracle is part of the package")
    return get_experiment(reference["experiment"]).task_factory()


def open_run(run_dir: str | Path, *, oracle: Callable[..., Any] | None = None,
             sampling: Mapping[str, Any] | None = None) -> tuple[Task, Any, RunDir]:
    """Reopen a run: its task rebuilt from ``task.json`` (or, for runs written before it existed, from the
    config's registered experiment), set up with the saved config.

    Args:
        run_dir: the run directory.
        oracle: for a user array task whose oracle has no importable reference (a lambda): the oracle.
        sampling: sampling options instead of the run's (``sampler``, ``num_steps``, ``schedule``,
            ``sigma_max``, ``rho``: :meth:`Task.with_sampling`; None values keep the run's). The run on
            disk is not changed.

    Raises:
        RunStateError: no run there, or its data no longer match the run.
        TaskImportError: the task factory or oracle recorded with the run does not import (named).
    """
    run = RunDir(run_dir, read_only=True)
    task_file = run.root / TASK_FILE
    if task_file.is_file():
        reference = json.loads(task_file.read_text())
    else:
        reference = {"experiment": json.loads(run.config_path.read_text()).get("experiment", "checkerboard")}
    task = _task_from_reference(reference, run.root / "data", oracle)
    config = run.read_config(task.config_class)
    if sampling:
        config = task.with_sampling(config, **sampling)
    task.setup(config, run.root / "data")
    return task, config, run


def load_model(run_dir: str | Path, name: str, *, oracle: Callable[..., Any] | None = None,
               sampling: Mapping[str, Any] | None = None) -> tuple[Task, Any, nn.Module]:
    """Rebuild a finished model of a run: ``baseline``, ``iter<k>``, ``guided`` (= the last iteration),
    ``ablation_<mode>`` or ``distilled``.

    Returns ``(task, config, model)``; ``model`` is the task's sampler network, guided by its classifier
    stack for ``iter<k>`` and ablations. ``oracle``, ``sampling``: see :func:`open_run`.

    Raises:
        ValueError: a model name the run does not have.
    """
    task, config, run = open_run(run_dir, oracle=oracle, sampling=sampling)
    name = {"guided": f"iter{config.gen_neg.iterations}"}.get(name, name)
    if name not in model_names(config):
        raise ValueError(f"unknown model {name!r}; this run has {model_names(config)} (and 'guided')")
    needed = "distilled" if name == "distilled" else "baseline"
    if not (run.root / "checkpoints" / f"{needed}.safetensors").is_file():
        raise RunStateError(f"{run.root}: model {name!r} has not been trained yet")
    return task, config, _build_model(task, run, config, name)


# --------------------------------------------------------------------------------------------------
# the loop


@contextlib.contextmanager
def _intra_op_threads(num_threads: int) -> Iterator[None]:
    """PyTorch intra-op threads set to ``num_threads`` for the block; 0: the cores per local rank when
    several ranks share the machine (:func:`~genneg.pipeline.distributed.threads_per_rank`), else
    unchanged."""
    previous = torch.get_num_threads()
    if num_threads == 0 and distributed.world().local_world_size > 1:
        num_threads = distributed.threads_per_rank()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Runner:
    """Runs stages in order, skipping finished ones (see the module docstring).

    Data-parallel (:mod:`genneg.pipeline.distributed`): every rank runs every stage; rank 0 alone writes
    (checkpoints, datasets, samples, ``metrics.jsonl``, markers) and the others read what it wrote after
    the barrier that ends each stage."""

    def __init__(self, task: Task, config: Any, run: RunDir, progress: bool, hook: StageHook | None) -> None:
        self.task, self.config, self.run, self.progress, self.hook = task, config, run, progress, hook
        self.world = distributed.world()
        self.main = self.world.is_main
        self.progress = progress and self.main
        self.started = time.perf_counter()

    def log(self, stage: str, record: dict[str, Any]) -> None:
        """Append a metric record (rank 0)."""
        if self.main:
            self.run.log(stage, record)

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[genneg {self.config.experiment} {time.perf_counter() - self.started:7.1f}s] {text}",
                  file=sys.stderr, flush=True)

    def _event(self, stage: str, event: str) -> None:
        if self.hook is not None:
            self.hook(stage, event)

    def stage(self, name: str, body: Callable[[torch.Generator], dict[str, Any] | None]) -> bool:
        """Run ``body(generator)`` unless ``name`` has finished; returns True when it ran."""
        if self.run.is_done(name):
            self.say(f"{name}: done earlier, loaded")
            return False
        self.say(f"{name}: start")
        self._event(name, "start")
        t0 = time.perf_counter()
        info = body(stage_generator(self.config.seed, name, self.task.generator_device)) or {}
        if self.main:
            self.run.mark_done(name, {"seconds": time.perf_counter() - t0, **self.world.record(), **info})
        distributed.barrier()  # the other ranks read the stage's outputs after this
        self._event(name, "done")
        self.say(f"{name}: done in {time.perf_counter() - t0:.1f}s")
        return True

    def fresh(self, factory: Callable[[], nn.Module], init_stage: str) -> nn.Module:
        """A network built right after seeding PyTorch with ``init_stage``'s seed, then re-initialised by
        the task from a generator with that seed: its weights depend on the stage alone."""
        seed = stage_seed(self.config.seed, init_stage)
        torch.manual_seed(seed)
        module = factory()
        self.task.initialise(module, torch.Generator().manual_seed(seed))
        return module

    # stages ------------------------------------------------------------------------------------------
    def data_files(self) -> None:
        data_dir = self.run.root / "data"

        def body(g: torch.Generator) -> dict[str, Any]:
            if not self.main:
                return {}
            data_dir.mkdir(exist_ok=True)
            return self.task.prepare(self.config, data_dir, progress=self.progress) or {}

        self.stage("data", body)

    def baseline(self) -> nn.Module:
        task, run = self.task, self.run

        def body(g: torch.Generator) -> dict[str, Any]:
            model = self.fresh(task.new_denoiser, "baseline/init")

            def on_eval(entry: dict[str, Any]) -> None:
                self.log("baseline", {"kind": "train", **entry})
                self._event("baseline", "progress")

            summary = task.train_baseline(model, g, progress=self.progress, on_eval=on_eval)
            if self.main:
                save_checkpoint(run.path("checkpoints", "baseline.safetensors"), model,
                                {"stage": "baseline", **summary})
            self.log("baseline", {"kind": "train_summary", **summary})
            return summary

        self.stage("baseline", body)
        return _load_denoiser(task, run, "baseline")

    def evaluate(self, name: str, group: str, iteration: int | None, model: nn.Module, parameters: int,
                 baseline_n: int | None) -> dict[str, Any]:
        stage = f"eval/{name}"

        def body(g: torch.Generator) -> dict[str, Any]:
            if not (self.main or self.task.shards_evaluation):  # evaluated on rank 0 alone
                return {}
            metrics, tensors = self.task.evaluate(model, progress=self.progress,
                                                  on_sampled=lambda: self._event(stage, "sampled"))
            if not self.main:  # a sharded evaluation: the same metrics on every rank; rank 0 writes
                return {}
            save_tensors(self.run.path("samples", f"{name}.safetensors"), tensors)
            n = metrics["n_parallel"]
            red = 0.0 if group == "baseline" else (
                reduction(n, baseline_n) if n is not None and baseline_n is not None else None)
            self.run.log(stage, {"kind": EVAL_KIND, "model": name, "group": group, "iteration": iteration,
                                 "reduction": red, "parameters": parameters, **metrics})
            return {"infraction": metrics["infraction"]}

        self.stage(stage, body)
        record = self.run.records(stage)[-1]
        self.say(f"{name}: infraction {100 * record['infraction']:.2f}% "
                 f"[{100 * record['infraction_low']:.2f}, {100 * record['infraction_high']:.2f}], "
                 f"N={record['n_parallel']}")
        return record

    def sampler(self, model: nn.Module, pool_name: str | None, stage: str
                ) -> Callable[[int, int], tuple[torch.Tensor, Cond | None]]:
        """``sample_fn(n, start) -> (x, cond)``: rows ``start .. start + n - 1`` of the stage's stream of
        draws: ``n`` training contexts (None for unconditioned tasks) and a sample of ``model`` in each,
        drawn from a generator seeded by the run seed, ``stage`` and ``start`` (so any rank can draw any
        batch: a batch of the same rows is the same on every rank and for every world size); for tasks
        that pool, the evaluation samples of ``pool_name`` are the stream's first rows."""
        task = self.task
        pool = None
        if pool_name and task.pools_eval_samples:
            pool = load_tensors(self.run.path("samples", f"{pool_name}.safetensors"))["x"]

        def sample_fn(n: int, start: int) -> tuple[torch.Tensor, Cond | None]:
            g = stage_generator(self.config.seed, f"{stage}/rows{start}", task.generator_device)
            cond = task.train_contexts(n, g)
            parts = []
            if pool is not None and start < pool.shape[0]:
                parts.append(pool[start: start + n].to(task.device))
            missing = n - sum(p.shape[0] for p in parts)
            if missing > 0:
                parts.append(task.sample(model, missing, g, cond=cond, progress=self.progress))
            return torch.cat(parts), cond

        return sample_fn

    def data(self, stage: str, model: nn.Module, pool_name: str | None, balanced: bool) -> BalancedDataset:
        cfg, task = self.config, self.task
        path = self.run.path(stage, "dataset.safetensors")

        def body(g: torch.Generator) -> dict[str, Any]:
            sampler = self.sampler(model, pool_name, stage)

            def sample_fn(n: int, start: int) -> Any:
                x, cond = sampler(n, start)
                return x if cond is None else (x, cond)

            if balanced:
                gen_neg = cfg.gen_neg
                dataset = draw_balanced(sample_fn, task.oracle, gen_neg.num_samples,
                                        batch_size=task.sample_batch_size, max_draws=gen_neg.max_draws,
                                        part_mask_fn=task.part_mask_fn, generator=g, progress=self.progress,
                                        shrink=gen_neg.budget_policy == "shrink")
                if dataset.extra.get("shrunk"):
                    self.say(f"balanced data: a class too rare for max_draws={gen_neg.max_draws}; the set "
                             f"shrank to {dataset.num_pos} valid and {dataset.num_neg} invalid examples")
            else:
                dataset = draw_imbalanced(sample_fn, task.oracle, cfg.gen_neg.num_samples,
                                          batch_size=task.sample_batch_size, part_mask_fn=task.part_mask_fn,
                                          progress=self.progress)
            if self.main:
                dataset.save(path)
            info = {"pi_neg": dataset.pi_neg, "num_drawn": dataset.num_drawn, "num_pos": dataset.num_pos,
                    "num_neg": dataset.num_neg, "balanced": balanced,
                    "shrunk": bool(dataset.extra.get("shrunk", False))}
            self.log(stage, {"kind": "data", **info})
            return info

        self.stage(stage, body)
        return BalancedDataset.load(path, device=task.device)

    def classifier(self, stage: str, name: str, dataset: BalancedDataset, mode: str) -> nn.Module:
        cfg, task = self.config, self.task
        time_dependent = mode != "time_independent"

        def body(g: torch.Generator) -> dict[str, Any]:
            classifier = self.fresh(lambda: task.new_classifier(time_dependent), f"{stage}/init")
            history = train_classifier(classifier, task.classifier_examples(dataset),
                                       dataclasses.replace(cfg.classifier, mode=mode), task.classifier_noise,
                                       generator=g, progress=self.progress,
                                       noise_levels=task.classifier_noise_levels)
            losses = [float(v) for v in (history or [])]
            tail = losses[-max(1, len(losses) // 10):] if losses else []
            info = {"mode": mode, "time_dependent": time_dependent,
                    "final_loss": sum(tail) / len(tail) if tail else None}
            if self.main:
                save_checkpoint(classifier_path(self.run, name), classifier, {"stage": stage, **info})
            self.log(stage, {"kind": "classifier", **info})
            return info

        self.stage(stage, body)
        return load_classifier(task, self.run, name)

    def distill(self, teacher: nn.Module, teacher_pool: str) -> nn.Module:
        cfg, task, run = self.config, self.task, self.run

        def body(g: torch.Generator) -> dict[str, Any]:
            if cfg.gen_neg.distill_init == "baseline":
                student = task.new_denoiser()
                load_checkpoint(run.path("checkpoints", "baseline.safetensors"), student)
            else:
                student = self.fresh(task.new_denoiser, "distill/init")
            student.train()
            sampler = self.sampler(teacher, teacher_pool, "distill/teacher")

            def sample_teacher(n: int) -> tuple[torch.Tensor, Cond | None]:
                """``n`` teacher samples, drawn data-parallel and gathered in row order: like the data
                stage's, the task's sampling batch is the global batch, each rank's call taking its share."""
                batches = distributed.map_batches(n, distributed.rank_batch(task.sample_batch_size),
                                                  lambda s, m: sampler(m, s))
                x = torch.cat([b[0].to(task.device) for b in batches])
                conds = [b[1] for b in batches]
                cond = None if conds[0] is None else {
                    k: torch.cat([c[k].to(task.device) for c in conds]) for k in conds[0]}
                return x, cond

            x0, cond = task.distillation_data(sample_teacher, g)
            history = train_distilled(student, teacher, x0, cfg.distill, task.distill_noise, generator=g,
                                      progress=self.progress, cond=cond)
            losses = [float(v) for v in (history or [])]
            info = {"x0_source": cfg.distill.x0_source, "num_x0": int(x0.shape[0]),
                    "final_loss": sum(losses[-50:]) / len(losses[-50:]) if losses else None}
            if self.main:
                save_checkpoint(run.path("checkpoints", "distilled.safetensors"), student,
                                {"stage": "distill", **info})
            self.log("distill", {"kind": "distill", **info})
            return info

        self.stage("distill", body)
        return _load_denoiser(task, run, "distilled")


def run_gen_neg(task: Task, config: Any, run: RunDir, *, progress: bool = True,
                hook: StageHook | None = None) -> list[dict[str, Any]]:
    """Run (or resume) every stage of the Gen-neG loop for ``task`` in ``run`` (``config`` already saved
    there), with ``config.num_threads`` PyTorch intra-op threads.

    Returns the evaluation records (one per model, ordered as in the report).
    """
    with _intra_op_threads(config.num_threads):
        runner = _Runner(task, config, run, progress, hook)
        if task.writes_data:
            runner.data_files()
        task.setup(config, run.root / "data")
        gamma = config.gen_neg.guidance_scale
        baseline = runner.baseline()
        base_params = task.num_parameters(baseline)
        baseline_n = runner.evaluate("baseline", "baseline", 0, baseline, base_params, None)["n_parallel"]
        classifiers: list[nn.Module] = []
        previous = "baseline"
        for k in range(1, config.gen_neg.iterations + 1):
            current = task.guide(baseline, classifiers, gamma)
            dataset = runner.data(f"iter{k}/data", current, previous, balanced=True)
            classifiers.append(runner.classifier(f"iter{k}/classifier", f"iter{k}", dataset,
                                                 config.classifier.mode))
            params = base_params + sum(task.num_parameters(c) for c in classifiers)
            runner.evaluate(f"iter{k}", "gen_neg", k, task.guide(baseline, classifiers, gamma), params,
                            baseline_n)
            previous = f"iter{k}"
            if k == 1:
                for mode in config.ablations:
                    data = dataset
                    if mode == "imbalanced":
                        data = runner.data("ablation/imbalanced/data", baseline, "baseline", balanced=False)
                    clf = runner.classifier(f"ablation/{mode}/classifier", f"ablation_{mode}", data, mode)
                    runner.evaluate(f"ablation_{mode}", "ablation", 1, task.guide(baseline, [clf], gamma),
                                    base_params + task.num_parameters(clf), baseline_n)
        if config.distill.iterations > 0:
            student = runner.distill(task.guide(baseline, classifiers, gamma), previous)
            runner.evaluate("distilled", "distilled", config.gen_neg.iterations, student,
                            task.num_parameters(student), baseline_n)
        runner.say("report: writing")
        if runner.main:
            write_run_report(run, task=task)
        distributed.barrier()
        return eval_rows(run.records())


# --------------------------------------------------------------------------------------------------
# the report


def write_run_report(run: RunDir, *, task: Task | None = None) -> Path:
    """(Re)write ``report.md`` and the task's pictures from a run's records, samples and checkpoints.

    Raises:
        ValueError: the run has no evaluation records yet.
    """
    if task is None:
        task, config, _ = open_run(run.root)
    else:
        config = task.config
    rows = eval_rows(run.records())
    if not rows:
        raise ValueError(f"{run.root}: no evaluation records to report (run the experiment first)")
    likelihood = getattr(task, "likelihood_key", "elbo")
    plots = ["progress.png"]
    plot_progress(run.path("progress.png"), rows, likelihood=likelihood,
                  likelihood_label=getattr(task, "likelihood_label", "held-out ELBO (nats)"))
    plots += task.pictures(run, rows, lambda name: _build_model(task, run, config, name))
    base = run.stage_info("baseline") if run.is_done("baseline") else {}
    seconds = sum(run.stage_info(s).get("seconds", 0.0) for s in run.completed_stages())
    threads = config.num_threads or torch.get_num_threads()
    notes = [
        f"experiment `{config.experiment}`, profile `{config.profile}`, seed {config.seed}, device "
        f"`{config.device}`, {threads} PyTorch thread(s)",
        f"compute time over all stages: {seconds:.0f} s",
        f"baseline: {base.get('iterations_run', '?')} iterations, weights of iteration "
        f"{base.get('best_iteration', '?')} kept (best held-out likelihood)",
        f"Gen-neG: {config.gen_neg.iterations} iterations of {config.gen_neg.num_samples} balanced samples, "
        f"classifier {config.classifier.iterations} iterations (batch {config.classifier.batch_size}), "
        f"guidance scale {config.gen_neg.guidance_scale:g}",
    ]
    infos = [run.stage_info(s) for s in run.completed_stages()]
    worlds = sorted({(int(i.get("world_size", 1)), str(i.get("backend", "none"))) for i in infos})
    notes.append("processes: " + "; ".join(f"world size {n} (backend {backend})" for n, backend in worlds)
                 + " (per stage: the markers in stages/)")
    notes += task.report_notes(run)
    for k in range(1, config.gen_neg.iterations + 1):
        recs = run.records(f"iter{k}/data")
        if recs:
            notes.append(f"iteration {k} data: {recs[-1]['num_drawn']} draws, estimated infraction rate "
                         f"{100 * recs[-1]['pi_neg']:.2f}%")
    base_row = next((r for r in rows if r.get("group") == "baseline"), None)
    for r in rows:
        if base_row is not None and r is not base_row and r["infraction_low"] > base_row["infraction_high"]:
            notes.append(f"**{r['model']} infracts more than the baseline** ({100 * r['infraction']:.2f}% "
                         f"against {100 * base_row['infraction']:.2f}%, 95% intervals apart): its "
                         "classifier(s) or student are likely undertrained (raise classifier.iterations or "
                         "distill.iterations)")
    title = getattr(task, "title", config.experiment)
    text = [f"# Gen-neG on {title} ({config.profile} profile)\n"]
    text += [f"- {n}" for n in notes]
    text += ["", task.format_table(rows)]
    text += [f"![{name}]({name})\n" for name in plots]
    path = run.path("report.md")
    atomic_write_text(path, "\n".join(text))
    return path


# --------------------------------------------------------------------------------------------------
# entry points


def _check_same_task(root: Path, reference: dict[str, Any]) -> None:
    """Refuse to resume ``root`` with another task than the one it holds (nothing is read or written)."""
    task_file = root / TASK_FILE
    if task_file.is_file():
        saved = json.loads(task_file.read_text())
    else:
        saved = {"experiment": json.loads((root / "config.json").read_text()).get("experiment")}
    if saved.get("experiment") != reference.get("experiment") and not reference.get("factory"):
        raise RunStateError(f"{root} holds a {saved.get('experiment')!r} run, not "
                            f"{reference.get('experiment')!r}")
    if task_file.is_file() and saved != reference:
        keys = sorted(k for k in set(saved) | set(reference) if saved.get(k) != reference.get(k))
        raise RunStateError(f"{root} holds a run of another task or other data (task.json differs in "
                            f"{keys}); use a new run directory")


def run_task(task: Task, config: Any, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
             progress: bool = True, hook: StageHook | None = None, reference: dict[str, Any] | None = None
             ) -> list[dict[str, Any]]:
    """Run (or resume) ``task`` with ``config`` into ``run_dir``; returns the evaluation rows.

    Args:
        reference: what ``task.json`` records to reopen the run (default: ``task.reference()``).

    Raises:
        RunStateError: a run exists there without ``resume``/``overwrite``; on resume, a config or task
            that differs from the saved one (nothing is written then).
    """
    if not isinstance(config, task.config_class):
        raise TypeError(f"task {task.name!r} takes a {task.config_class.__name__}, got "
                        f"{type(config).__name__}")
    reference = task.reference() if reference is None else reference
    world = distributed.init_from_env(config.device)
    if resume and (Path(run_dir) / "config.json").is_file():
        _check_same_task(Path(run_dir), reference)
    error: BaseException | None = None
    if world.is_main:  # rank 0 opens (or creates) the run and writes; the others then read it
        try:
            run = RunDir(run_dir, resume=resume, overwrite=overwrite)
            run.write_config(config)
            text = json.dumps(reference, indent=2, sort_keys=True) + "\n"
            if not ((run.root / TASK_FILE).is_file() and (run.root / TASK_FILE).read_text() == text):
                atomic_write_text(run.root / TASK_FILE, text)  # a resumed run rewrites nothing it need not
        except (RunStateError, OSError) as err:
            error = err
    failed = distributed.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failed is not None:
        raise RunStateError(f"rank 0 could not open the run in {run_dir}: {failed}")
    if not world.is_main:
        run = RunDir(run_dir, read_only=True)
    return run_gen_neg(task, config, run, progress=progress, hook=hook)


def resume_run(run_dir: str | Path, *, progress: bool = True, hook: StageHook | None = None,
               oracle: Callable[..., Any] | None = None) -> list[dict[str, Any]]:
    """Continue the run in ``run_dir`` from its last finished stage with the task and config it records
    (``task.json``, ``config.json``): nothing needs to be given again. ``oracle``: see :func:`open_run`."""
    root = Path(run_dir)
    if not (root / "config.json").is_file():
        raise RunStateError(f"cannot resume: {root} holds no run (no config.json)")
    task_file = root / TASK_FILE
    reference = (json.loads(task_file.read_text()) if task_file.is_file()
                 else {"experiment": json.loads((root / "config.json").read_text()).get("experiment")})
    task = _task_from_reference(reference, root / "data", oracle)
    config = RunDir(root, read_only=True).read_config(task.config_class)
    return run_task(task, config, root, resume=True, progress=progress, hook=hook, reference=reference)


def run_experiment(config: Any, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, hook: StageHook | None = None) -> list[dict[str, Any]]:
    """Run the registered experiment ``config.experiment`` into ``run_dir`` (see :func:`run_task`)."""
    return run_task(build_task(config), config, run_dir, resume=resume, overwrite=overwrite,
                    progress=progress, hook=hook)


def train(
    task: Task | str,
    *,
    run_dir: str | Path,
    profile: str | None = None,
    config: Any = None,
    seed: int | None = None,
    threads: int | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    hook: StageHook | None = None,
) -> list[dict[str, Any]]:
    """Train Gen-neG on a task: the public entry point (``genneg.train``).

    Args:
        task: a :class:`~genneg.pipeline.task.Task` (e.g. ``genneg.Task.from_arrays(x, oracle=f)``), a
            registered experiment name (``"checkerboard"``, ``"traffic"``), or a task factory reference
            ``"package.module:function"`` / ``"path/to/file.py:function"`` (recorded, so the run reopens
            through it).
        run_dir: the run directory (report, checkpoints, samples, ``metrics.jsonl``).
        profile: ``tiny``, ``quick`` or ``paper`` (default ``quick``; on resume the saved config is used).
        config: a full config instead of a profile.
        seed, threads: override the config's ``seed`` / ``num_threads``.
        overrides: ``"section.field=value"`` strings (:func:`genneg.io.config.apply_overrides`).
        resume: continue the run in ``run_dir`` from its last finished stage.
        overwrite: start afresh in a directory that holds a run.
        progress: progress bars and stage messages on stderr.

    Returns:
        The evaluation rows (one per model).

    Raises:
        ValueError: bad profile, overrides or config; RunStateError: see :func:`run_task`;
        TaskImportError: a factory reference that does not import.
    """
    reference = None
    if isinstance(task, str):
        if ":" in task:
            task = absolute_reference(task)
            reference = {"factory": task}
            made = import_object(task)()
            if not isinstance(made, Task):
                raise TypeError(f"task factory {task} returned {type(made).__name__}, not a Task")
            task_obj: Task = made
        else:
            task_obj = get_experiment(task).task_factory()
    else:
        task_obj = task
    if reference is not None and hasattr(task_obj, "fingerprint"):
        reference["fingerprint"] = task_obj.fingerprint()
    root = Path(run_dir)
    if resume and (root / "config.json").is_file():
        _check_same_task(root, task_obj.reference() if reference is None else reference)
    if config is None:
        if resume and (root / "config.json").is_file():
            config = RunDir(root, read_only=True).read_config(task_obj.config_class)
            if profile is not None and profile != config.profile:
                raise ValueError(f"{root} was run with profile {config.profile!r}, not {profile!r}")
        else:
            config = task_obj.make_config(profile or "quick")
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    if threads is not None:
        config = dataclasses.replace(config, num_threads=threads)
    config = apply_overrides(config, list(overrides))
    _ = config_to_dict(config)  # a config that cannot be saved fails here, before the run directory
    return run_task(task_obj, config, root, resume=resume, overwrite=overwrite, progress=progress, hook=hook,
                    reference=reference)
