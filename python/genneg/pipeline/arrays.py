"""Tasks over plain arrays: EDM denoisers and time-dependent classifiers on ``(N, *shape)`` data.

:class:`VectorTask` is the machinery (EDM preconditioning, residual-MLP networks by default, Heun PF-ODE
sampling, ELBO, MMD, 2-D plots) shared by the paper's checkerboard (:mod:`genneg.pipeline.checkerboard`)
and by a user's own problem, :class:`ArrayTask`: data as an array, tensor or file, and an oracle that is
any Python/NumPy/torch callable (the paper: "an oracle is a plain function written by domain experts")::

    task = genneg.Task.from_arrays(train_x, oracle=is_valid)
    genneg.train(task, profile="quick", run_dir="runs/mine")
    model = genneg.load("runs/mine", "distilled")

Profiles are data-independent recipes (:mod:`genneg.pipeline.profiles`); :meth:`ArrayTask.make_config`
derives the data-dependent fields (dimension, ``sigma_data`` and the noise range scaled with it, the split
sizes) and they are saved with the run. The arrays are written into the run directory (``data`` stage),
so a run reopens without the original files; the oracle is recorded by reference (``module:function`` or
``path/to/file.py:function``) and re-imported on reopening.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.diffusion.edm import EDMConfig, EDMPrecond
from genneg.diffusion.samplers import get_sampler
from genneg.diffusion.schedules import make_sigmas
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.io.checkpoint import load_tensors, save_tensors
from genneg.io.rundir import stage_generator, stage_seed
from genneg.metrics import infraction_rate, mmd, num_parallel_samples
from genneg.models.mlp import ResidualMLP
from genneg.oracles.base import evaluate_oracle, sample_verdicts, verdicts_tensor
from genneg.pipeline.baseline import heldout_elbo, train_denoiser
from genneg.pipeline.distill import distillation_x0
from genneg.pipeline.distributed import map_batches
from genneg.pipeline.profiles import DataConfig, ExperimentConfig, get_profile
from genneg.pipeline.registry import TaskImportError, absolute_reference, import_object, object_reference
from genneg.pipeline.report import format_table
from genneg.pipeline.task import Cond, EvalOutput, Task

__all__ = ["ArrayTask", "OracleError", "VectorTask", "load_array"]

_SAMPLER_NAMES = {"heun": "Heun", "euler": "Euler", "dpmpp_2m": "DPM-Solver++(2M)", "unipc": "UniPC-2M"}

NetFactory = Callable[[ExperimentConfig], nn.Module]
"""``factory(config) -> F``: a raw network ``F(x_in (B, *shape), c_noise (B,))`` (the denoiser's output has
the sample's shape; the classifier's is ``(B,)`` or ``(B, 1)`` logits), wrapped in EDM preconditioning /
:class:`~genneg.guidance.TimeClassifier` by the task."""


class OracleError(RuntimeError):
    """The user's oracle raised; the message names the batch and its rows (the oracle's exception is
    chained as ``__cause__``)."""


class _Flat(nn.Module):
    """Runs a network on flattened samples: ``(B, *shape) -> (B, d)`` in, and (``reshape_output``) back."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...], reshape_output: bool) -> None:
        super().__init__()
        self.net, self.shape, self.reshape_output = net, tuple(shape), reshape_output

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        out = self.net(x.flatten(1), c_noise)
        return out.reshape(x.shape[0], *self.shape) if self.reshape_output else out


def _init_from(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every ``nn.Linear`` of ``module`` from ``generator`` (PyTorch's default scheme), so that
    a stage's initial weights depend only on its seed, not on what ran before it in the process."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            bound = 1.0 / math.sqrt(sub.in_features)
            with torch.no_grad():
                sub.weight.copy_((torch.rand(sub.weight.shape, generator=generator) * 2 - 1) * bound)
                if sub.bias is not None:
                    sub.bias.copy_((torch.rand(sub.bias.shape, generator=generator) * 2 - 1) * bound)


class VectorTask(Task):
    """EDM Gen-neG on ``(N, *shape)`` float data (subclasses provide the data and the oracle).

    The denoiser is ``EDMPrecond(F)`` and each classifier ``TimeClassifier(F_c)`` with ``F``, ``F_c``
    residual MLPs (``config.denoiser``, ``config.classifier_net``) unless network factories are given.
    Sampling: the PF-ODE solver of ``config.sampling`` (Heun by default). Metrics: infraction rate (95%
    Wilson interval), held-out ELBO (nats per point), MMD², ``N(r, p)``, sampling time (METHOD.md 7).
    """

    config_class: ClassVar[type] = ExperimentConfig
    pools_eval_samples: ClassVar[bool] = True
    shards_evaluation: ClassVar[bool] = True
    title: ClassVar[str] = "arrays"

    train_x: torch.Tensor
    heldout_x: torch.Tensor
    plot_bounds: tuple[float, float, float, float] | None = None
    denoiser_net: NetFactory | None = None
    classifier_net: NetFactory | None = None

    def _setup_common(self, config: ExperimentConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        edm = config.edm
        sigma_max = edm.sigma_max if config.sampling.sigma_max is None else config.sampling.sigma_max
        self.sigmas = make_sigmas(config.sampling.schedule, config.sampling.num_steps, edm.sigma_min,
                                  sigma_max, config.sampling.rho)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def edm(self) -> EDMConfig:
        return self.config.edm

    # networks ----------------------------------------------------------------------------------------
    def _raw(self, factory: NetFactory | None, kind: str) -> nn.Module:
        if factory is not None:
            return factory(self.config)
        net = ResidualMLP(self.config.denoiser if kind == "denoiser" else self.config.classifier_net)
        if len(self.sample_shape) != 1:
            net = _Flat(net, self.sample_shape, reshape_output=kind == "denoiser")
        return net

    def new_denoiser(self) -> nn.Module:
        return EDMPrecond(self._raw(self.denoiser_net, "denoiser"), self.edm.sigma_data).to(self.device)

    def new_classifier(self, time_dependent: bool) -> nn.Module:
        return TimeClassifier(self._raw(self.classifier_net, "classifier"), self.edm.sigma_data,
                              time_dependent=time_dependent).to(self.device)

    def initialise(self, module: nn.Module, generator: torch.Generator) -> None:
        _init_from(module, generator)

    def train_baseline(self, model: nn.Module, generator: torch.Generator, *, progress: bool = False,
                       on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        result = train_denoiser(model, self.train_x, self.heldout_x[: cfg.eval.elbo_points], cfg.baseline,
                                self.edm, generator, progress=progress, on_eval=on_eval)
        return {"best_iteration": result.best_iteration, "best_elbo": result.best_elbo,
                "iterations_run": result.iterations_run}

    # sampling ----------------------------------------------------------------------------------------
    def with_sampling(self, config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
        """``config`` with fields of ``config.sampling`` replaced (``sampler``: a key of
        ``genneg.diffusion.SAMPLERS``, ``num_steps``, ``schedule``, ``sigma_max``, ``rho``; None keeps the
        run's). ``ValueError`` names an unknown option, a bad sampler or a bad value."""
        allowed = {"sampler", "num_steps", "schedule", "sigma_max", "rho"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ValueError(f"unknown sampling option(s) {unknown}; choose from {sorted(allowed)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "sampler" in changes:
            get_sampler(changes["sampler"])
        if changes.get("schedule", "log_linear") not in ("log_linear", "karras"):
            raise ValueError(f"unknown schedule {changes['schedule']!r}; expected 'log_linear' or 'karras'")
        return dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, **changes))

    @property
    def sample_batch_size(self) -> int:
        return self.config.sampling.batch_size

    def sample(self, model: Callable[..., torch.Tensor], n: int, generator: torch.Generator, *,
               cond: Cond | None = None, progress: bool = False) -> torch.Tensor:
        """``(n, *shape)`` samples: the PF-ODE solved by ``config.sampling.sampler`` (default Heun) from
        ``sigmas[0] · N(0, I)`` noise drawn from ``generator``, in batches of
        ``config.sampling.batch_size``."""
        sampler = get_sampler(self.config.sampling.sampler)
        out = []
        batches = range(0, n, self.sample_batch_size)
        for start in tqdm(batches, disable=not progress or len(batches) < 2, desc="sampling", leave=False):
            m = min(self.sample_batch_size, n - start)
            noise = torch.randn((m, *self.sample_shape), generator=generator, device=self.device)
            out.append(sampler(model, noise * float(self.sigmas[0]), self.sigmas))
        return torch.cat(out) if out else torch.empty((0, *self.sample_shape), device=self.device)

    # classifiers, guidance, distillation -------------------------------------------------------------
    @property
    def classifier_noise(self) -> EDMConfig:
        return self.edm

    def guide(self, model: nn.Module, classifiers: Sequence[nn.Module], scale: float) -> nn.Module:
        if not classifiers:
            return model
        return GuidedDenoiser(model, list(classifiers), [scale] * len(classifiers))

    @property
    def distill_noise(self) -> EDMConfig:
        return self.edm

    def distillation_data(self, sample_teacher: Callable[[int], tuple[torch.Tensor, Cond | None]],
                          generator: torch.Generator) -> tuple[torch.Tensor, Cond | None]:
        x0 = distillation_x0(self.config.distill, self.train_x, lambda n: sample_teacher(n)[0])
        return x0, None

    # evaluation --------------------------------------------------------------------------------------
    def elbo(self, model: Callable[..., torch.Tensor], x: torch.Tensor, *, num_sigmas: int,
             seed: int) -> float:
        """Mean held-out ELBO (nats per point) with noise draws fixed by ``seed``."""
        return heldout_elbo(model, x, self.edm, num_sigmas=num_sigmas, seed=seed)

    def evaluate(self, model: Callable[..., torch.Tensor], *, num_samples: int | None = None,
                 progress: bool = False, on_sampled: Callable[[], None] | None = None) -> EvalOutput:
        """Infraction rate (95% Wilson interval), held-out ELBO, MMD², ``N(r, p)`` and sampling time. The
        initial noise and the ELBO's draws come from generators seeded by the run seed only, so every model
        of a run is measured on the same draws (paired comparisons). Tensors: ``x`` samples, ``valid``.
        Data-parallel: sampling batches and ELBO chunks are shared among the ranks
        (:func:`genneg.pipeline.distributed.map_batches`); every rank returns the same metrics."""
        config = self.config
        n = config.eval.num_samples if num_samples is None else num_samples

        def batch(first: int, m: int) -> torch.Tensor:  # data-parallel: any rank can draw any batch
            return self.sample(model, m, stage_generator(config.seed, f"eval/noise/rows{first}", self.device))

        start = time.perf_counter()
        samples = torch.cat([x.to(self.device) for x in map_batches(n, self.sample_batch_size, batch)])
        seconds = time.perf_counter() - start
        if on_sampled is not None:
            on_sampled()
        valid = sample_verdicts(evaluate_oracle(self.oracle, samples))
        rate = infraction_rate(valid)
        heldout = self.heldout_x
        elbo = self.elbo(model, heldout[: config.eval.elbo_points], num_sigmas=config.eval.elbo_num_sigmas,
                         seed=stage_seed(config.seed, "eval/elbo"))
        m = min(config.eval.mmd_points, n, heldout.shape[0])
        finite = torch.isfinite(samples[:m]).flatten(1).all(dim=1)
        mmd2 = mmd(samples[:m][finite], heldout[:m]) if int(finite.sum()) >= 2 else math.nan
        n_parallel = num_parallel_samples(rate.rate, config.eval.p) if rate.rate < 1 else None
        metrics = {
            "infraction": rate.rate, "infraction_low": rate.low, "infraction_high": rate.high,
            "infractions": rate.count, "num_samples": rate.total, "elbo": elbo, "mmd": mmd2,
            "n_parallel": n_parallel, "sample_seconds": seconds,
            "sample_ms_per_1k": 1e6 * seconds / max(n, 1),
        }
        return metrics, {"x": samples, "valid": valid}

    def format_table(self, rows: Sequence[dict[str, Any]]) -> str:
        return format_table(rows, self.config.eval.p)

    def report_notes(self, run: Any) -> list[str]:
        config = self.config
        return [
            f"data: {self.train_x.shape[0]} training and {self.heldout_x.shape[0]} held-out points of shape "
            f"{tuple(self.sample_shape)}; sigma_data {config.edm.sigma_data:.4g}",
            f"sampling: {config.sampling.num_steps} {_SAMPLER_NAMES[config.sampling.sampler]} steps, "
            f"{config.sampling.schedule} schedule; "
            f"evaluation on {config.eval.num_samples} samples, ELBO on "
            f"{min(config.eval.elbo_points, self.heldout_x.shape[0])} held-out points × "
            f"{config.eval.elbo_num_sigmas} noise levels",
        ]

    def pictures(self, run: Any, rows: Sequence[dict[str, Any]],
                 load_model: Callable[[str], nn.Module]) -> list[str]:
        """Vector data: samples per model coloured by verdict (for more than 2 coordinates, their
        projection on the first two, said in the panel titles); 2-D data: also the classifiers'
        probability maps."""
        from genneg.pipeline.plots import plot_classifier_maps, plot_samples

        if self.plot_bounds is None or len(self.sample_shape) != 1 or self.sample_shape[0] < 2:
            return []
        plots = []
        projected = "" if self.sample_shape == (2,) else " (x0, x1 projection)"
        panels = [(f"training data{projected}", self.train_x[:, :2].cpu().numpy(),
                   sample_verdicts(evaluate_oracle(self.oracle, self.train_x)).cpu().numpy())]
        for row in rows:
            file = run.path("samples", f"{row['model']}.safetensors")
            if file.is_file():
                t = load_tensors(file)
                panels.append((f"{row['model']}{projected}", t["x"][:, :2].numpy(), t["valid"].numpy()))
        plot_samples(run.path("samples.png"), panels, bounds=self.plot_bounds)
        plots.append("samples.png")
        if self.sample_shape != (2,):
            return plots
        from genneg.pipeline.experiment import classifier_path, load_classifier

        names = [f"iter{k}" for k in range(1, self.config.gen_neg.iterations + 1)]
        names += [f"ablation_{m}" for m in self.config.ablations]
        found = [(n, load_classifier(self, run, n)) for n in names if classifier_path(run, n).is_file()]
        time_dependent = [(n, c) for n, c in found if getattr(c, "time_dependent", True)]
        if time_dependent:
            plot_classifier_maps(run.path("classifiers.png"), time_dependent, self.config.eval.plot_sigmas,
                                 self.plot_bounds)
            plots.append("classifiers.png")
        return plots


# --------------------------------------------------------------------------------------------------
# a user's arrays


def load_array(source: Any, *, what: str = "data") -> np.ndarray:
    """An array from a NumPy array, a torch tensor, a sequence, or a ``.npy``, ``.npz`` or ``.safetensors``
    file (a file with several arrays must hold one named ``x``).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unsupported file type, or a file with several arrays none of which is ``x``.
        TypeError: non-numeric data.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what}: no file {path}")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".npz", ".safetensors"):
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    arrays = {k: archive[k] for k in archive.files}
            else:
                arrays = {k: v.numpy() for k, v in load_tensors(path).items()}
            if len(arrays) == 1:
                array = next(iter(arrays.values()))
            elif "x" in arrays:
                array = arrays["x"]
            else:
                raise ValueError(f"{what}: {path} holds arrays {sorted(arrays)}; name the data array 'x'")
        else:
            raise ValueError(f"{what}: unsupported file type {path.suffix!r} ({path}); use .npy, .npz or "
                             ".safetensors")
    elif isinstance(source, torch.Tensor):
        array = source.detach().cpu().numpy()
    else:
        array = np.asarray(source)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"{what}: expected real numbers, got dtype {array.dtype}")
    return array


def _checked(array: np.ndarray, what: str) -> torch.Tensor:
    if array.ndim < 2:
        raise ValueError(f"{what}: expected an (N, d) array (N points of dimension d), got shape "
                         f"{array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"{what}: needs at least 2 points, got {array.shape[0]}")
    if any(s == 0 for s in array.shape[1:]):
        raise ValueError(f"{what}: empty sample shape {array.shape[1:]}")
    finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        rows = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        raise ValueError(f"{what}: {bad.size} row(s) hold NaN or inf: rows {rows}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _plot_bounds(x: torch.Tensor) -> tuple[float, float, float, float] | None:
    """``(xmin, xmax, ymin, ymax)`` of the first two coordinates of vector data (a quarter of their range
    as margin); None for data with fewer than 2 coordinates or not flat."""
    if x.ndim != 2 or x.shape[1] < 2:
        return None
    x = x[:, :2]
    low, high = x.min(0).values, x.max(0).values
    pad = 0.25 * (high - low)
    return (float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1]))


OracleInput = Literal["numpy", "torch"]


def _call_oracle(oracle: Callable[..., Any], x: torch.Tensor, oracle_input: OracleInput) -> torch.Tensor:
    """``oracle`` on a copy of ``x`` (a NumPy array or a CPU tensor as ``oracle_input`` says, so that an
    oracle that writes into its input changes nothing of ours), its answer checked."""
    arg = x.detach().cpu().numpy().copy() if oracle_input == "numpy" else x.detach().clone()
    return verdicts_tensor(oracle(arg), x.shape[0], x.device)


class _CheckedOracle:
    """The user's oracle, called in batches; an exception becomes :class:`OracleError` naming the call and
    its rows (the original chained), a malformed answer a ``ValueError``."""

    def __init__(self, oracle: Callable[..., Any], oracle_input: OracleInput) -> None:
        self.oracle, self.oracle_input = oracle, oracle_input
        self.calls = 0

    def __call__(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        try:
            return _call_oracle(self.oracle, x, self.oracle_input)
        except ValueError as err:
            raise ValueError(f"oracle call {self.calls} on {x.shape[0]} samples: {err}") from err
        except Exception as err:
            raise OracleError(f"the oracle raised {type(err).__name__} on call {self.calls} "
                              f"({x.shape[0]} samples of shape {tuple(x.shape[1:])}): {err}") from err


def _check_oracle_on(oracle: Callable[..., Any], x: torch.Tensor, oracle_input: OracleInput, *,
                     what: str = "train_x", batch_size: int = 10_000) -> torch.Tensor:
    """Verdicts ``(n,)`` of ``oracle`` on ``x`` in batches; errors name the batch index and its rows."""
    out = []
    for index, start in enumerate(range(0, x.shape[0], batch_size)):
        batch = x[start: start + batch_size]
        rows = f"rows {start}-{start + batch.shape[0] - 1}"
        try:
            verdicts = _call_oracle(oracle, batch, oracle_input)
        except ValueError as err:
            raise ValueError(f"oracle on {what} batch {index} ({rows}): {err}") from err
        except Exception as err:
            raise OracleError(f"the oracle raised {type(err).__name__} on {what} batch {index} ({rows}): "
                              f"{err}") from err
        out.append(sample_verdicts(verdicts))
    return torch.cat(out)


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside this package (warnings point at the user's line)."""
    import inspect

    package = str(Path(__file__).resolve().parents[1])
    level = 1
    for frame in inspect.stack()[1:]:
        level += 1
        if not str(Path(frame.filename).resolve()).startswith(package):
            return level
    return level


def _oracle_file_reference(oracle: Callable[..., Any]) -> str | None:
    """``/abs/path/file.py:qualname`` of a module-level function (reopens a run from any directory even
    when its module was only importable from the training directory)."""
    import inspect

    qualname = getattr(oracle, "__qualname__", "")
    try:
        source = inspect.getsourcefile(oracle)
    except TypeError:
        return None
    if not source or "<" in qualname or not qualname:
        return None
    return f"{Path(source).resolve()}:{qualname}"


class ArrayTask(VectorTask):
    """A user's problem: data as an ``(N, *shape)`` array and an oracle callable (see the module docstring).

    Build it with :meth:`from_arrays` (validates everything before any work starts).
    """

    name: ClassVar[str] = "arrays"
    writes_data: ClassVar[bool] = True

    def __init__(self, train_x: torch.Tensor, heldout_x: torch.Tensor, oracle: Callable[..., Any], *,
                 name: str = "arrays", oracle_reference: str | None = None,
                 oracle_input: OracleInput = "numpy", denoiser_net: NetFactory | None = None,
                 classifier_net: NetFactory | None = None) -> None:
        self.train_x, self.heldout_x = train_x, heldout_x
        self.user_oracle = oracle
        self.oracle_input = oracle_input
        self._oracle = _CheckedOracle(oracle, oracle_input)
        self.title = self.experiment_name = name
        self.oracle_reference = oracle_reference
        self.denoiser_net, self.classifier_net = denoiser_net, classifier_net
        self.plot_bounds = _plot_bounds(train_x)
        self.device = torch.device("cpu")

    @classmethod
    def from_arrays(
        cls,
        train_x: Any,
        oracle: Callable[..., Any] | str,
        *,
        heldout_x: Any = None,
        heldout_fraction: float = 0.1,
        name: str = "arrays",
        oracle_input: OracleInput = "numpy",
        denoiser_net: NetFactory | None = None,
        classifier_net: NetFactory | None = None,
    ) -> ArrayTask:
        """A task from data and an oracle.

        Args:
            train_x: ``(N, *shape)`` valid training data: NumPy array, torch tensor, or a ``.npy`` /
                ``.npz`` / ``.safetensors`` file; converted to float32.
            oracle: ``oracle(x) -> (n,)`` or ``(n, P)`` bool (True = valid) taking a torch tensor or, if it
                raises ``TypeError`` on one, a NumPy array; or its reference ``"module:function"`` /
                ``"path/to/file.py:function"``. A module-level function is recorded by reference so that
                the run reopens by itself; a lambda or closure must be passed again to reopen the run.
            heldout_x: held-out data (same sample shape); default: a ``heldout_fraction`` of ``train_x``
                (at least 2 points), split off by a fixed permutation (seed 0).
            name: the experiment name shown in the run's config and report.
            oracle_input: what the oracle is called with: ``"numpy"`` (a float32 ``(n, *shape)`` NumPy
                array, the default) or ``"torch"`` (a CPU float32 tensor). Always a copy: an oracle may
                write into it. (NumPy and torch differ silently on some calls, e.g. ``std``, so the
                package never guesses.)
            denoiser_net, classifier_net: network factories for structured samples (default: residual MLPs
                on the flattened sample).

        Raises:
            ValueError: non-finite rows (named), fewer than 2 points, a held-out set of another shape, an
                oracle answer of the wrong shape or type (with the batch), an oracle that rejects every
                training point, a name taken by a registered experiment.
            OracleError: the oracle raised on a training batch (its exception chained).
            TaskImportError: an oracle reference that does not import.
            TypeError: non-numeric data.
        """
        from genneg.pipeline.registry import experiment_names

        if name in experiment_names():
            raise ValueError(f"name {name!r} is a registered experiment; choose another name for your task")
        if oracle_input not in ("numpy", "torch"):
            raise ValueError(f"oracle_input must be 'numpy' or 'torch', got {oracle_input!r}")
        if isinstance(oracle, str):
            reference: str | None = absolute_reference(oracle)
            oracle = import_object(reference)
        else:
            reference = object_reference(oracle)
        if not callable(oracle):
            raise TypeError(f"oracle must be callable, got {type(oracle).__name__}")
        data = _checked(load_array(train_x, what="train_x"), "train_x")
        if bool((data == data[0]).all()):
            raise ValueError(f"train_x holds {data.shape[0]} identical points: nothing to learn")
        heldout = None
        if heldout_x is not None:
            heldout = _checked(load_array(heldout_x, what="heldout_x"), "heldout_x")
            if heldout.shape[1:] != data.shape[1:]:
                raise ValueError(f"heldout_x has sample shape {tuple(heldout.shape[1:])} but train_x has "
                                 f"{tuple(data.shape[1:])}")
        elif not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
        # the oracle on the data as given (row numbers in errors are the caller's)
        for what, x in (("train_x", data), ("heldout_x", heldout)):
            if x is None:
                continue
            invalid = int((~_check_oracle_on(oracle, x, oracle_input, what=what)).sum())
            if invalid == x.shape[0]:
                raise ValueError(f"the oracle says all {invalid} points of {what} are invalid: the data and "
                                 "the oracle do not match (True must mean valid)")
            if invalid:
                warnings.warn(f"the oracle rejects {invalid} of the {x.shape[0]} points of {what}; Gen-neG "
                              "assumes valid data", stacklevel=_caller_stacklevel())
        if heldout is None:
            n_held = max(2, round(heldout_fraction * data.shape[0]))
            if data.shape[0] - n_held < 2:
                raise ValueError(f"train_x has {data.shape[0]} points: too few to split off a held-out set "
                                 f"of {n_held} and keep 2 for training; pass heldout_x")
            perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))
            data, heldout = data[perm[n_held:]], data[perm[:n_held]]
        if reference is None:
            warnings.warn("the oracle has no importable reference (a lambda, closure or instance): the run "
                          "can be reopened or resumed only by passing the same oracle again (oracle=)",
                          stacklevel=_caller_stacklevel())
        return cls(data, heldout, oracle, name=name, oracle_reference=reference, oracle_input=oracle_input,
                   denoiser_net=denoiser_net, classifier_net=classifier_net)

    # the Task hooks --------------------------------------------------------------------------------------
    def oracle(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self._oracle(x)

    def fingerprint(self) -> str:
        """SHA-256 of the training and held-out data (recorded with the run; a reopened task must match)."""
        h = hashlib.sha256()
        for t in (self.train_x, self.heldout_x):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    def make_config(self, profile: str) -> ExperimentConfig:
        """The profile's recipe with the data-dependent fields derived: sample dimension, ``sigma_data``
        (the training set's standard deviation) with the noise range scaled by ``sigma_data / 0.5`` (the
        profiles' ranges are EDM's, for data of standard deviation 0.5), the split sizes, and the ELBO and
        MMD sizes capped by the held-out set."""
        base = get_profile(profile)
        d = int(np.prod(self.sample_shape))
        sigma_data = float(self.train_x.std())
        scale = sigma_data / base.edm.sigma_data
        held = int(self.heldout_x.shape[0])
        return dataclasses.replace(
            base,
            experiment=self.experiment_name,
            data=DataConfig(num_train=int(self.train_x.shape[0]), num_heldout=held),
            edm=EDMConfig(sigma_min=base.edm.sigma_min * scale, sigma_max=base.edm.sigma_max * scale,
                          sigma_data=sigma_data),
            denoiser=dataclasses.replace(base.denoiser, dim_in=d, dim_out=d),
            classifier_net=dataclasses.replace(base.classifier_net, dim_in=d),
            eval=dataclasses.replace(base.eval, elbo_points=min(base.eval.elbo_points, held),
                                     mmd_points=min(base.eval.mmd_points, held),
                                     plot_sigmas=tuple(s * scale for s in base.eval.plot_sigmas)),
        )

    def reference(self) -> dict[str, Any]:
        """Reopens the run: the oracle's reference, and those of custom network factories (a factory with
        no importable reference cannot be rebuilt: ``ValueError`` before training starts)."""
        ref: dict[str, Any] = {"experiment": self.experiment_name, "kind": "arrays",
                               "oracle": self.oracle_reference, "oracle_input": self.oracle_input,
                               "fingerprint": self.fingerprint()}
        if self.oracle_reference is not None and not self.oracle_reference.split(":")[0].endswith(".py"):
            ref["oracle_file"] = _oracle_file_reference(self.user_oracle)
        for key in ("denoiser_net", "classifier_net"):
            factory = getattr(self, key)
            if factory is not None:
                ref[key] = object_reference(factory)
                if ref[key] is None:
                    raise ValueError(f"{key} must be a module-level function (importable by reference) so "
                                     "that the run can be reopened; got a lambda, closure or instance")
        return ref

    def prepare(self, config: Any, data_dir: Path, *, progress: bool = False) -> dict[str, Any]:
        save_tensors(data_dir / "arrays.safetensors", {"train_x": self.train_x, "heldout_x": self.heldout_x})
        return {"num_train": int(self.train_x.shape[0]), "num_heldout": int(self.heldout_x.shape[0]),
                "sample_shape": list(self.sample_shape)}

    def setup(self, config: ExperimentConfig, data_dir: Path) -> None:
        self._setup_common(config)
        self.train_x = self.train_x.to(self.device)
        self.heldout_x = self.heldout_x.to(self.device)

    @classmethod
    def reopen(cls, reference: dict[str, Any], data_dir: Path,
               oracle: Callable[..., Any] | None = None) -> ArrayTask:
        """The task of a finished run from its ``task.json`` entry and its saved arrays.

        Raises:
            TaskImportError: the recorded oracle does not import (and none was passed), naming it.
            FileNotFoundError: the run's arrays are missing.
        """
        file = data_dir / "arrays.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the run's data stage did not finish")
        if oracle is None:
            ref = reference.get("oracle")
            if not ref:
                raise TaskImportError(f"the run in {data_dir.parent} was trained with an oracle that has no "
                                      "importable reference (a lambda or closure): pass oracle= to reopen it")
            try:
                oracle = import_object(ref)
            except TaskImportError:
                if not reference.get("oracle_file"):
                    raise
                oracle = import_object(reference["oracle_file"])  # the module's file, by absolute path
        arrays = load_tensors(file)
        nets = {key: import_object(reference[key]) for key in ("denoiser_net", "classifier_net")
                if reference.get(key)}
        return cls(arrays["train_x"], arrays["heldout_x"], oracle, name=reference.get("experiment", "arrays"),
                   oracle_reference=reference.get("oracle"),
                   oracle_input=reference.get("oracle_input", "numpy"), **nets)
