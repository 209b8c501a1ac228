"""``Task``: the one interface between the Gen-neG loop and a problem (issue 11; DESIGN.md "One loop").

The loop (:mod:`genneg.pipeline.experiment`) owns stage order, seeding, resume, the data budget policy,
pooling of evaluation samples, the report skeleton and model files. A task owns what differs between
problems, through the hooks below. A new problem is a subclass that fills them in; nothing in the package
needs editing (register it with :func:`genneg.pipeline.registry.register_experiment` or a
``genneg.experiments`` entry point, or hand it to :func:`genneg.train` directly).

Life cycle (the loop calls, in order)::

    task.make_config(profile)            a data-independent recipe with the data-dependent fields derived
    task.prepare(config, data_dir)       only if task.writes_data: write the data into the run ("data" stage)
    task.setup(config, data_dir)         load data, build schedules; every hook below is usable after it
    task.new_denoiser() ... task.evaluate(...)

Conditioning (DESIGN.md "One conditioning convention"): per-sample conditioning is a dict ``cond`` of
tensors whose leading dimension is the batch, passed by keyword to every model, classifier and oracle:
``model(x, sigma_or_t, **cond)``, ``oracle(x, **cond)``. Unconditioned tasks use ``cond = None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from genneg.diffusion.edm import EDMConfig
from genneg.pipeline.balanced import BalancedDataset

__all__ = ["Cond", "EvalOutput", "Task"]

Cond = dict[str, torch.Tensor]

EvalOutput = tuple[dict[str, Any], dict[str, torch.Tensor]]
"""``(metrics, tensors)`` of :meth:`Task.evaluate`: metrics (JSON-ready; must hold ``infraction``,
``infraction_low``, ``infraction_high`` and ``n_parallel``) and the tensors saved as the model's
evaluation samples (``x`` when the samples are unconditioned draws that later iterations may reuse)."""


class Task:
    """What the Gen-neG loop needs to know about one problem (see the module docstring).

    Class attributes:
        name: the experiment name written into the run's config.
        config_class: the frozen-dataclass type of the run's config. The loop reads ``seed``,
            ``num_threads``, ``gen_neg`` (``iterations``, ``num_samples``, ``max_draws``, ``guidance_scale``,
            ``budget_policy``, ``distill_init``), ``classifier`` (a
            :class:`~genneg.pipeline.classifier.ClassifierConfig`), ``ablations``, ``distill`` (a
            :class:`~genneg.pipeline.distill.DistillConfig`) and ``eval.p`` from it.
        writes_data: whether :meth:`prepare` writes the data into the run (a ``data`` stage).
        pools_eval_samples: evaluation samples of model ``k`` are unconditioned draws from it, so they are
            also the first draws of iteration ``k + 1``'s data (False for conditioned tasks whose evaluation
            contexts differ from the training contexts).
        shards_evaluation: :meth:`evaluate` is a collective that every data-parallel rank calls (it shares
            the work among them and returns the same metrics on every rank); False: the loop calls it on
            rank 0 alone.
    """

    name: ClassVar[str] = "task"
    config_class: ClassVar[type] = object
    writes_data: ClassVar[bool] = False
    pools_eval_samples: ClassVar[bool] = False
    shards_evaluation: ClassVar[bool] = False

    config: Any
    device: torch.device

    @classmethod
    def from_arrays(cls, train_x: Any, oracle: Callable[..., Any] | str, **kwargs: Any) -> Task:
        """A user's task from data and an oracle: :meth:`genneg.pipeline.arrays.ArrayTask.from_arrays`."""
        from genneg.pipeline.arrays import ArrayTask

        return ArrayTask.from_arrays(train_x, oracle, **kwargs)

    # configuration and data --------------------------------------------------------------------------
    def make_config(self, profile: str) -> Any:
        """The run config of ``profile`` (``tiny``, ``quick``, ``paper``) for this task's data."""
        raise NotImplementedError

    def reference(self) -> dict[str, Any]:
        """JSON that reopens this task (saved as the run's ``task.json``): ``{"experiment": name}`` for a
        registered experiment, ``{"factory": "module:function"}`` for a user factory."""
        return {"experiment": self.name}

    def prepare(self, config: Any, data_dir: Path, *, progress: bool = False) -> dict[str, Any] | None:
        """Write the data into ``data_dir`` (only called when :attr:`writes_data`); returns stage info."""
        return None

    def setup(self, config: Any, data_dir: Path) -> None:
        """Load the data and build what the hooks need; sets ``config`` and ``device``."""
        raise NotImplementedError

    @property
    def generator_device(self) -> torch.device:
        """Device of the stage generators the loop hands to the hooks."""
        return self.device

    # networks ----------------------------------------------------------------------------------------
    def new_denoiser(self) -> nn.Module:
        """A fresh baseline-shaped model (the sampler's network), on :attr:`device`."""
        raise NotImplementedError

    def new_classifier(self, time_dependent: bool) -> nn.Module:
        """A fresh classifier ``c(x, sigma, **cond) -> logits`` (time-independent for the ablation)."""
        raise NotImplementedError

    def initialise(self, module: nn.Module, generator: torch.Generator) -> None:
        """Re-initialise a fresh network from ``generator`` (default: keep the constructor's weights, which
        the loop builds right after seeding PyTorch with the stage's init seed)."""

    def num_parameters(self, module: nn.Module) -> int:
        """Trainable parameters of ``module`` (the report's parameter count)."""
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    # training ----------------------------------------------------------------------------------------
    def train_baseline(self, model: nn.Module, generator: torch.Generator, *, progress: bool = False,
                       on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train ``model`` in place on the training set; returns a JSON-ready summary (``best_iteration``,
        ``iterations_run``, ...). ``on_eval(record)`` is called at each held-out evaluation."""
        raise NotImplementedError

    # sampling and the oracle ------------------------------------------------------------------------
    def with_sampling(self, config: Any, **changes: Any) -> Any:
        """``config`` with sampling options replaced, for sampling and evaluating a finished run otherwise
        (``genneg sample|eval --sampler --steps --schedule --sigma-max``). Keys: ``sampler``, ``num_steps``,
        ``schedule``, ``sigma_max``, ``rho``; a None value keeps the run's. The default offers no choice.

        Raises:
            ValueError: an option or value this task does not offer (named).
        """
        given = sorted(k for k, v in changes.items() if v is not None)
        if given:
            raise ValueError(f"task {self.name!r} offers no choice of sampling options, got {given}")
        return config

    @property
    def sample_batch_size(self) -> int:
        """Samples per sampler call (also the oracle's batch in the data stage)."""
        raise NotImplementedError

    def sample(self, model: Callable[..., torch.Tensor], n: int, generator: torch.Generator, *,
               cond: Cond | None = None, progress: bool = False) -> torch.Tensor:
        """``(n, *shape)`` samples of ``model`` (plain or guided) in the contexts ``cond`` (``n`` rows)."""
        raise NotImplementedError

    def train_contexts(self, n: int, generator: torch.Generator) -> Cond | None:
        """``n`` conditioning rows for drawing training-time samples (None: unconditioned)."""
        return None

    def eval_contexts(self, n: int) -> Cond | None:
        """The first ``n`` evaluation contexts (fixed for every model of a run; None: unconditioned)."""
        return None

    def oracle(self, x: torch.Tensor, **cond: torch.Tensor) -> Any:
        """Verdicts ``(n,)`` or ``(n, P)`` bool, True = valid."""
        raise NotImplementedError

    part_mask_fn: Callable[..., torch.Tensor] | None = None
    """For per-part oracles with padding: ``part_mask_fn(x, **cond) -> (n, P)`` bool, True = real part."""

    # classifiers and guidance ------------------------------------------------------------------------
    @property
    def classifier_noise(self) -> EDMConfig:
        """Noise range (and ``sigma_data``) classifiers are trained over."""
        raise NotImplementedError

    @property
    def classifier_noise_levels(self) -> torch.Tensor | None:
        """Discrete noise levels to train classifiers on (None: log-uniform over :attr:`classifier_noise`)."""
        return None

    def classifier_examples(self, dataset: BalancedDataset) -> BalancedDataset:
        """The classifier's training examples from a labelled set (e.g. symmetry copies); default: as is."""
        return dataset

    def guide(self, model: nn.Module, classifiers: Sequence[nn.Module], scale: float) -> nn.Module:
        """The model guided by the stack ``classifiers`` (each with guidance scale ``scale``)."""
        raise NotImplementedError

    # distillation ------------------------------------------------------------------------------------
    @property
    def distill_noise(self) -> Any:
        """What :func:`~genneg.pipeline.distill.train_distilled` takes as its noise process (an
        ``EDMConfig`` or a ``DDPMSchedule``)."""
        raise NotImplementedError

    def distillation_data(self, sample_teacher: Callable[[int], tuple[torch.Tensor, Cond | None]],
                          generator: torch.Generator) -> tuple[torch.Tensor, Cond | None]:
        """The ``x0`` pool (and its conditioning) of distillation: the training set, or teacher samples
        (``sample_teacher(n) -> (x, cond)``) as ``config.distill.x0_source`` says."""
        raise NotImplementedError

    # evaluation and report ---------------------------------------------------------------------------
    def evaluate(self, model: Callable[..., torch.Tensor], *, num_samples: int | None = None,
                 progress: bool = False, on_sampled: Callable[[], None] | None = None) -> EvalOutput:
        """Metrics of one model on the run's fixed evaluation noise and contexts (paired comparisons)."""
        raise NotImplementedError

    def format_table(self, rows: Sequence[dict[str, Any]]) -> str:
        """The report's Markdown table of evaluation rows."""
        raise NotImplementedError

    def report_notes(self, run: Any) -> list[str]:
        """Task-specific lines under the report's title."""
        return []

    def pictures(self, run: Any, rows: Sequence[dict[str, Any]],
                 load_model: Callable[[str], nn.Module]) -> list[str]:
        """Write the run's PNG pictures into ``run``; returns their file names (relative to the report)."""
        return []
