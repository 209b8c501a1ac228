"""Gen-neG on human motion: the motion task (issue 15; the paper's third experiment, METHOD.md 8 "Motion").

A sample is one clip: ``(F, D)`` standardised joint positions (``D = 3 J``,
:class:`~genneg.data.motion.features.MotionNormalisation` fitted on the training clips). The oracle rejects
a clip in which any joint at any frame is below the floor by more than ``oracle.tolerance_m``
(:class:`~genneg.oracles.motion.GroundPenetrationOracle`), and gives one verdict per frame: frames are the
oracle's parts (METHOD.md 4 "multi-part samples"; a clip is negative when any frame is). The one Gen-neG
loop (:mod:`genneg.pipeline.experiment`) calls this task's hooks:

- data (``data`` stage): procedural clips (:mod:`genneg.data.motion.procedural`) or the DeepMimic clips of
  a pybullet wheel already in ``data.pybullet_cache_dir`` (split in time, :func:`write_deepmimic_split`),
  written once to ``run/data/{train,heldout}`` and memory-mapped;
- baseline: DDPM ε-prediction motion transformer (:class:`~genneg.models.motion_transformer.MotionEpsNet`),
  Adam with a cosine schedule, EMA weights, the best held-out r-ELBO kept; unconditioned, or conditioned on
  the motion family with label dropout (``model.condition_on_family``: ``cond = {"family": (n,) int64}``);
- classifiers: the same transformer with one logit per frame
  (:class:`~genneg.models.motion_transformer.MotionLogitNet` in a :class:`~genneg.guidance.TimeClassifier`,
  ``sigma_data = 1``: its input ``x / sqrt(σ² + 1)`` is the DDPM ``x_t``), trained on per-frame labels;
  guidance ``ε_K = ε − sqrt(1 − ᾱ_t) Σ_k ∇ Σ_frames log c_k`` (:class:`~genneg.guidance.GuidedDenoiser`
  of the ε-network's ``EpsDenoiser``);
- distillation of the stacked model into a baseline-shaped ε-model (ε form of Eq. 12);
- evaluation of every model with the same noise: infraction per clip (Wilson interval) and per frame,
  r-ELBO per frame on held-out clips (same draws for every model), FID and KID against the held-out clips in
  the features of a motion-family encoder trained once per run on the training clips
  (:mod:`genneg.metrics.motion`, saved as ``data/motion_encoder.safetensors``), foot skating, floating,
  mean lowest-joint height, ``N(r, p)``, sampling time per batch; stick-figure filmstrips coloured by
  verdict and lowest-joint heights over time (:mod:`genneg.pipeline.motion_report`).

Configs and profiles: :mod:`genneg.pipeline.motion_profiles` (``genneg train motion --profile
tiny|quick|paper``).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.data.motion import (
    MotionDataset,
    MotionNormalisation,
    ProceduralConfig,
    write_deepmimic_split,
    write_procedural_dataset,
)
from genneg.diffusion.conditioning import bind_cond
from genneg.diffusion.ddpm import DDPMSchedule, EpsDenoiser, as_denoiser
from genneg.diffusion.edm import EDMConfig
from genneg.diffusion.samplers import euler_ancestral_sample
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.io.checkpoint import load_checkpoint, save_checkpoint
from genneg.io.rundir import stage_generator, stage_seed
from genneg.metrics import infraction_rate, num_parallel_samples, r_elbo
from genneg.metrics.motion import (
    MotionEncoder,
    MotionEncoderConfig,
    floating_ratio,
    foot_skating_ratio,
    frechet_distance,
    kernel_inception_distance,
    lowest_joint_height,
    train_motion_encoder,
)
from genneg.models.motion_transformer import MotionEpsNet, MotionLogitNet
from genneg.oracles.motion import GroundPenetrationOracle
from genneg.pipeline import distributed
from genneg.pipeline.ddpm_training import train_ddpm
from genneg.pipeline.distributed import map_batches
from genneg.pipeline.motion_profiles import (
    MOTION_PROFILES,
    MotionExperimentConfig,
    MotionTrainingConfig,
    get_motion_profile,
)
from genneg.pipeline.registry import Experiment
from genneg.pipeline.task import Cond, EvalOutput, Task

__all__ = ["EXPERIMENT", "MotionTask", "motion_r_elbo", "sample_motions", "train_motion_baseline"]



def sample_motions(eps_model: Callable[..., torch.Tensor], n: int, shape: tuple[int, int],
                   schedule: DDPMSchedule, *, num_steps: int, batch_size: int, generator: torch.Generator,
                   cond: Cond | None = None, device: torch.device | str = "cpu", progress: bool = False
                   ) -> tuple[torch.Tensor, list[float]]:
    """Ancestral DDPM samples ``(n, F, D)`` of ``eps_model`` (an ε-network through its ``EpsDenoiser``, or a
    denoiser: guided, distilled) with the Euler-ancestral sampler on the schedule's levels, and the wall
    seconds of each batch. Noise is drawn on the CPU from ``generator`` in batch order (so a batch's noise
    does not depend on the model); ``cond``: ``n`` conditioning rows or None."""
    out, seconds = [], []
    denoiser = as_denoiser(eps_model, schedule)
    sigmas = schedule.sampling_sigmas(num_steps)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, disable=not progress or len(starts) < 2, desc="sampling clips", leave=False):
        m = min(batch_size, n - start)
        batch = None if cond is None else {k: v[start:start + m] for k, v in cond.items()}
        x_T = schedule.initial_noise((m, *shape), generator=generator, num_steps=num_steps).to(device)
        step_gen = torch.Generator(device=device)
        step_gen.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        t0 = time.perf_counter()
        out.append(euler_ancestral_sample(denoiser, x_T, sigmas, cond=batch, generator=step_gen))
        seconds.append(time.perf_counter() - t0)
    return torch.cat(out), seconds


def motion_r_elbo(eps_model: Callable[..., torch.Tensor], x: torch.Tensor, schedule: DDPMSchedule, *,
                  num_timesteps: int, seed: int, cond: Cond | None = None, batch_clips: int = 64
                  ) -> torch.Tensor:
    """r-ELBO (METHOD.md 7) of each clip ``(N,)`` float64, summed over its ``F · D`` coordinates; the same
    draws for every model given the same ``seed``.

    Data-parallel: the clips are cut into chunks of ``batch_clips``, each chunk's draws seeded by ``seed``
    and the chunk's first row, and the chunks are shared among the ranks
    (:func:`genneg.pipeline.distributed.map_batches`): every rank returns the same values, which do not
    depend on the world size. Every rank must call it (a collective; one process: a plain call).

    Raises:
        ValueError: ``batch_clips < 1``.
    """

    def chunk_r_elbo(start: int, m: int) -> torch.Tensor:
        c = None if cond is None else {k: v[start:start + m].repeat_interleave(num_timesteps, 0)
                                       for k, v in cond.items()}
        generator = torch.Generator().manual_seed(stage_seed(seed, f"rows{start}"))
        return r_elbo(bind_cond(as_denoiser(eps_model, schedule), c), x[start:start + m], schedule,
                      num_timesteps=num_timesteps, generator=generator, batch_size=m * num_timesteps)

    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    return torch.cat([v.to(x.device) for v in map_batches(x.shape[0], batch_clips, chunk_r_elbo)])


def train_motion_baseline(eps_model: nn.Module, train_x: torch.Tensor, heldout_x: torch.Tensor,
                          config: MotionTrainingConfig, schedule: DDPMSchedule, generator: torch.Generator, *,
                          seed: int, train_family: torch.Tensor | None = None,
                          heldout_family: torch.Tensor | None = None, num_families: int = 0,
                          family_dropout: float = 0.0, progress: bool = False,
                          on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the ε-model in place with :func:`~genneg.pipeline.ddpm_training.train_ddpm` (the DDPM loss,
    Adam, EMA), keeping the (EMA) weights of the best held-out r-ELBO (per frame); batches are clips with,
    when conditioned, their family label dropped with probability ``family_dropout``.

    Args:
        eps_model: the model; train_x, heldout_x: ``(N, F, D)`` clips; config: optimiser and selection.
        schedule: the DDPM schedule; generator: CPU source of batches, timesteps and noise.
        seed: seed of the held-out r-ELBO draws (the same at every evaluation).
        train_family, heldout_family: ``(N,)`` labels when the model is conditioned (else None);
            num_families: the "no label" index; family_dropout: probability of training without the label.

    Returns:
        ``{"best_iteration", "best_r_elbo" (per frame), "iterations_run", "final_loss"}``.
    """
    device = train_x.device
    held = heldout_x[:config.eval_clips]
    held_cond = None if heldout_family is None else {"family": heldout_family[:config.eval_clips]}
    frames = train_x.shape[1]

    def draw_batch(g: torch.Generator, b: int) -> tuple[torch.Tensor, Cond | None]:
        idx = torch.randint(train_x.shape[0], (b,), generator=g).to(device)
        if train_family is None:
            return train_x[idx], None
        family = train_family[idx].clone()
        family[(torch.rand(b, generator=g) < family_dropout).to(device)] = num_families
        return train_x[idx], {"family": family}

    def evaluate(weights: nn.Module) -> float:
        return float(motion_r_elbo(weights, held, schedule, num_timesteps=config.eval_timesteps, seed=seed,
                                   cond=held_cond).mean()) / frames

    return train_ddpm(eps_model, draw_batch, evaluate, config, schedule, generator, metric="r_elbo_per_frame",
                      progress=progress, on_eval=on_eval)


class MotionTask(Task):
    """Data, oracle, networks, sampler, metrics and report of the motion experiment (module docstring).

    After :meth:`setup`: ``schedule``, ``skeleton``, ``fps``, ``norm`` (:class:`MotionNormalisation`),
    ``train_x`` / ``heldout_x`` ``(N, F, D)`` float32 features, ``train_family`` / ``heldout_family``,
    ``family_names``, ``motion_oracle``.
    """

    name: ClassVar[str] = "motion"
    title: ClassVar[str] = "human motion (ground penetration)"
    config_class: ClassVar[type] = MotionExperimentConfig
    writes_data: ClassVar[bool] = True
    shards_evaluation: ClassVar[bool] = True
    likelihood_key: ClassVar[str] = "r_elbo"
    likelihood_label: ClassVar[str] = "held-out r-ELBO (per frame)"

    def make_config(self, profile: str) -> MotionExperimentConfig:
        return get_motion_profile(profile)

    def prepare(self, config: MotionExperimentConfig, data_dir: Path, *, progress: bool = False
                ) -> dict[str, Any]:
        """Write the training and held-out clips under ``data_dir`` (see the module docstring).

        Raises:
            ValueError: ``data.source == "deepmimic"`` and no pybullet wheel in the cache directory.
        """
        d = config.data
        for split in ("train", "heldout"):
            if (data_dir / split).exists():
                shutil.rmtree(data_dir / split)
        info: dict[str, Any] = {"source": d.source}
        if d.source == "procedural":
            proc = ProceduralConfig(fps=d.fps, frames=d.frames, height_range_m=d.height_range_m,
                                    families=d.families)
            for split, n in (("train", d.num_train), ("heldout", d.num_heldout)):
                seed = stage_seed(config.seed, f"data/{split}")
                write_procedural_dataset(data_dir / split, n, proc, seed=seed)
        else:
            wheels = sorted(Path(d.pybullet_cache_dir).glob("pybullet-*.whl"))
            if not wheels:
                raise ValueError(f"no pybullet wheel in {d.pybullet_cache_dir}: fetch it first with "
                                 "`python -m genneg.data.motion deepmimic --cache-dir DIR --output DIR`")
            counts = write_deepmimic_split(data_dir / "train", data_dir / "heldout", wheels[0],
                                           d.heldout_fraction, d.fps, d.frames, d.window_stride, d.warps,
                                           d.mirrored, config.oracle.tolerance_m)
            info["dropped_windows"] = sum(c["dropped"] for c in counts.values())
        for split in ("train", "heldout"):
            info[f"{split}_clips"] = len(MotionDataset(data_dir / split))
        return info

    def setup(self, config: MotionExperimentConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.device = torch.device(config.device)
        self.schedule = DDPMSchedule(config.ddpm)
        train, heldout = MotionDataset(data_dir / "train"), MotionDataset(data_dir / "heldout")
        self.skeleton = train.skeleton
        self.fps = train.fps
        self.family_names = train.family_names
        train_pos, held_pos = np.array(train.positions), np.array(heldout.positions)
        self.norm = MotionNormalisation.fit(train_pos)
        self.train_x = self.norm.encode(torch.from_numpy(train_pos).double()).float().to(self.device)
        self.heldout_x = self.norm.encode(torch.from_numpy(held_pos).double()).float().to(self.device)
        self.train_family = torch.from_numpy(np.array(train.family)).to(self.device)
        self.heldout_family = torch.from_numpy(np.array(heldout.family)).to(self.device)
        self.motion_oracle = GroundPenetrationOracle(config.oracle, normalisation=self.norm)
        self.quality = dataclasses.replace(config.eval.quality, fps=self.fps)
        sig = self.schedule.sigmas
        top = min(float(sig[-1]), config.model.classifier_sigma_max)
        if not top > float(sig[0]):
            raise ValueError(f"model.classifier_sigma_max={config.model.classifier_sigma_max} must exceed "
                             f"the schedule's smallest noise level {float(sig[0]):.3g}")
        self._classifier_noise = EDMConfig(sigma_min=float(sig[0]), sigma_max=top, sigma_data=1.0)
        self._encoder: MotionEncoder | None = None

    @property
    def generator_device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def conditioned(self) -> bool:
        return self.config.model.condition_on_family

    @property
    def clip_shape(self) -> tuple[int, int]:
        """``(F, D)``."""
        return (int(self.train_x.shape[1]), int(self.train_x.shape[2]))

    # networks ----------------------------------------------------------------------------------------
    def _net_config(self, base: Any, head: str) -> Any:
        frames, dim = self.clip_shape
        return dataclasses.replace(base, head=head, feature_dim=dim, max_frames=max(frames, base.max_frames),
                                   num_families=len(self.family_names) if self.conditioned else 0)

    def new_denoiser(self) -> MotionEpsNet:
        """A fresh baseline-shaped ε-model."""
        return MotionEpsNet(self._net_config(self.config.model.denoiser, "eps")).to(self.device)

    def new_classifier(self, time_dependent: bool) -> TimeClassifier:
        """A fresh classifier (per frame unless ``model.classifier.head == "clip_logit"``); its output layer
        starts at zero (``c = 1/2``: no guidance until it has learned something)."""
        m = self.config.model
        net = MotionLogitNet(self._net_config(m.classifier, m.classifier.head), m.classifier_time_scale,
                             self._classifier_noise.sigma_max,
                             shrinkage=time_dependent and m.classifier_shrinkage)
        nn.init.zeros_(net.net.output.weight)
        nn.init.zeros_(net.net.output.bias)
        return TimeClassifier(net, sigma_data=1.0, time_dependent=time_dependent).to(self.device)

    def train_baseline(self, model: nn.Module, generator: torch.Generator, *, progress: bool = False,
                       on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        c = self.config
        fam = (self.train_family, self.heldout_family) if self.conditioned else (None, None)
        return train_motion_baseline(model, self.train_x, self.heldout_x, c.baseline, self.schedule,
                                     generator, seed=stage_seed(c.seed, "baseline/r_elbo"),
                                     train_family=fam[0], heldout_family=fam[1],
                                     num_families=len(self.family_names),
                                     family_dropout=c.model.family_dropout, progress=progress,
                                     on_eval=on_eval)

    # sampling and the oracle ------------------------------------------------------------------------
    @property
    def sample_batch_size(self) -> int:
        return self.config.gen_neg.sample_batch_size

    def sample_timed(self, model: Callable[..., torch.Tensor], n: int, generator: torch.Generator, *,
                     cond: Cond | None = None, progress: bool = False) -> tuple[torch.Tensor, list[float]]:
        """Clips of ``model`` and the wall seconds of each batch."""
        g = self.config.gen_neg
        return sample_motions(model, n, self.clip_shape, self.schedule, num_steps=g.sample_steps,
                              batch_size=g.sample_batch_size, generator=generator, cond=cond,
                              device=self.device, progress=progress)

    def sample(self, model: Callable[..., torch.Tensor], n: int, generator: torch.Generator, *,
               cond: Cond | None = None, progress: bool = False) -> torch.Tensor:
        if self.conditioned and (cond is None or cond["family"].shape[0] != n):
            raise ValueError(f"this motion task is conditioned on the family: pass cond with {n} rows")
        return self.sample_timed(model, n, generator, cond=cond, progress=progress)[0]

    def train_contexts(self, n: int, generator: torch.Generator) -> Cond | None:
        """Conditioned: ``n`` training clips' families drawn uniformly (with replacement)."""
        if not self.conditioned:
            return None
        idx = torch.randint(len(self.train_family), (n,), generator=generator).to(self.device)
        return {"family": self.train_family[idx]}

    def eval_contexts(self, n: int) -> Cond | None:
        """Conditioned: the held-out clips' families, cycled to ``n``."""
        if not self.conditioned:
            return None
        return {"family": self.heldout_family[torch.arange(n, device=self.device) % len(self.heldout_family)]}

    def oracle(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """Per-frame verdicts ``(n, F)``, True = no joint below the floor by more than the tolerance."""
        return self.motion_oracle(x, **cond)

    # classifiers, guidance, distillation ------------------------------------------------------------
    @property
    def classifier_noise(self) -> EDMConfig:
        """The DDPM's VE noise range (capped at ``model.classifier_sigma_max``), ``sigma_data = 1``."""
        return self._classifier_noise

    def guide(self, model: nn.Module, classifiers: Sequence[nn.Module], scale: float) -> nn.Module:
        """``D_K`` of the ε-network's ``EpsDenoiser``: the stack's guidance (sum over frames of ``log c_k``),
        or the model itself."""
        if not classifiers:
            return model
        scales = [scale] * len(classifiers)
        return GuidedDenoiser(EpsDenoiser(model, self.schedule), list(classifiers), scales)

    @property
    def distill_noise(self) -> DDPMSchedule:
        return self.schedule

    def distillation_data(self, sample_teacher: Callable[[int], tuple[torch.Tensor, Cond | None]],
                          generator: torch.Generator) -> tuple[torch.Tensor, Cond | None]:
        if self.config.distill.x0_source == "teacher":
            return sample_teacher(self.config.distill.num_teacher_samples)
        return self.train_x, ({"family": self.train_family} if self.conditioned else None)

    # evaluation ------------------------------------------------------------------------------------
    def encoder(self) -> MotionEncoder:
        """The FID/KID encoder: trained once per run on the training clips' family labels (seeded by the
        run's ``eval/encoder`` stream) and saved as ``data/motion_encoder.safetensors``."""
        if self._encoder is not None:
            return self._encoder
        e = self.config.eval
        config = MotionEncoderConfig(feature_dim=self.clip_shape[1],
                                     num_classes=max(2, len(self.family_names)), channels=e.encoder_channels,
                                     steps=e.encoder_steps)
        path = self.data_dir / "motion_encoder.safetensors"
        if path.is_file():
            encoder = MotionEncoder(config).to(self.device)
            load_checkpoint(path, encoder)
        else:
            encoder, accuracy = train_motion_encoder(self.train_x, self.train_family, config,
                                                     stage_generator(self.config.seed, "eval/encoder"))
            if distributed.world().is_main:  # rank 0 writes (see shared_encoder)
                save_checkpoint(path, encoder, {"training_accuracy": accuracy,
                                                "config": dataclasses.asdict(config)})
        self._encoder = encoder.eval()
        return self._encoder

    def shared_encoder(self) -> MotionEncoder:
        """:meth:`encoder`, the same weights on every data-parallel rank: rank 0 trains and saves it when
        the run has none yet, and the others load its file after a barrier. A collective (every rank
        calls it; one process: :meth:`encoder`)."""
        if self._encoder is not None or not distributed.world().distributed:
            return self.encoder()
        if distributed.world().is_main:
            self.encoder()
        distributed.barrier()
        return self.encoder()

    def positions(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(n, F, D)`` -> positions ``(n, F, J, 3)`` metres."""
        return self.norm.decode(x)

    def evaluate(self, model: Callable[..., torch.Tensor], *, num_samples: int | None = None,
                 progress: bool = False, on_sampled: Callable[[], None] | None = None) -> EvalOutput:
        """Infraction per clip and per frame, r-ELBO per frame, FID, KID, skating, floating, lowest-joint
        height, ``N(r, p)`` and sampling time, with fixed noise and fixed r-ELBO draws (paired
        comparisons). Tensors: ``x`` (features), ``frame_valid``.

        Data-parallel (a collective: every rank calls it and gets the same metrics): the clips are cut into
        batches of ``gen_neg.sample_batch_size``, each batch's noise seeded by the run seed and its first
        row (``eval/noise/rows{first}``); the rank that owns a batch samples it and computes its per-frame
        verdicts, encoder features and per-clip skating, floating and lowest-joint heights; these are
        gathered in row order, the counts are exact integers, and FID and KID are computed on rank 0 from
        the gathered features and sent to the others. The r-ELBO's chunks are shared likewise
        (:func:`motion_r_elbo`, float64 sums in row order). The metrics do not depend on the world size."""
        cfg, seed, batch_size = self.config.eval, self.config.seed, self.config.gen_neg.sample_batch_size
        n = cfg.num_clips if num_samples is None else num_samples
        cond = self.eval_contexts(n)
        encoder = self.shared_encoder()
        w = distributed.world()
        bar = tqdm(total=len(range(w.rank * batch_size, n, batch_size * w.world_size)),
                   disable=not progress, desc="evaluation clips", leave=False)

        def batch(first: int, m: int) -> dict[str, Any]:
            rows = None if cond is None else {k: v[first:first + m] for k, v in cond.items()}
            x, seconds = self.sample_timed(model, m, stage_generator(seed, f"eval/noise/rows{first}"),
                                           cond=rows)
            finite = torch.isfinite(x).flatten(1).all(1)
            x_safe = torch.where(finite[:, None, None], x, torch.zeros_like(x))
            pos = self.positions(x_safe)
            bar.update()
            return {"x": x.cpu(), "finite": finite.cpu(), "seconds": seconds,
                    "frame_valid": (self.motion_oracle.frame_verdicts(x_safe) & finite[:, None]).cpu(),
                    "features": encoder.embed(x_safe).cpu(),
                    "skating": foot_skating_ratio(pos, self.skeleton.feet, self.quality).cpu(),
                    "floating": floating_ratio(pos, self.quality).cpu(),
                    "lowest_m": lowest_joint_height(pos).cpu()}

        parts = distributed.map_batches(n, batch_size, batch)
        bar.close()
        if on_sampled is not None:
            on_sampled()
        got = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "seconds"}
        seconds = [s for p in parts for s in p["seconds"]]
        finite, frame_valid = got["finite"], got["frame_valid"]
        clip = infraction_rate(frame_valid.all(1))
        frame = infraction_rate(frame_valid.flatten())
        held = self.heldout_x[:cfg.r_elbo_clips]
        held_cond = None if cond is None else {"family": self.heldout_family[:cfg.r_elbo_clips]}
        r = motion_r_elbo(model, held, self.schedule, num_timesteps=cfg.r_elbo_timesteps,
                          seed=stage_seed(seed, "eval/r_elbo"), cond=held_cond)
        quality: dict[str, float] | str | None = None
        if w.is_main:  # statistics of the gathered features on rank 0, sent to the others
            feats, ref = got["features"][finite], encoder.embed(self.heldout_x).cpu()
            try:
                kid, kid_std = kernel_inception_distance(feats, ref, cfg.kid_subsets, cfg.kid_subset_size,
                                                         stage_generator(seed, "eval/kid"))
                quality = {"fid": frechet_distance(feats, ref), "kid": kid, "kid_std": kid_std}
            except ValueError as err:  # e.g. fewer than 2 finite clips: every rank raises, none waits
                quality = str(err)
        quality = distributed.broadcast_object(quality)
        if isinstance(quality, str):
            raise ValueError(f"FID/KID of the evaluation clips: {quality}")
        metrics = {
            "infraction": clip.rate, "infraction_low": clip.low, "infraction_high": clip.high,
            "infraction_frame": frame.rate, "infractions": clip.count, "infractions_frame": frame.count,
            "r_elbo": float(r.mean()) / self.clip_shape[0],
            **quality,
            "skating": float(got["skating"][finite].mean()),
            "floating": float(got["floating"][finite].mean()),
            "lowest_height_m": float(got["lowest_m"][finite].mean()),
            "non_finite": int((~finite).sum()),
            "n_parallel": num_parallel_samples(clip.rate, cfg.p) if clip.rate < 1 else None,
            "num_clips": int(n), "batch_size": batch_size,
            "sample_seconds_per_batch": float(np.median(seconds)) if seconds else None,
        }
        return metrics, {"x": got["x"], "frame_valid": frame_valid}

    def data_reference(self) -> dict[str, float]:
        """The metrics of held-out clips against a same-sized slice of the training clips (what a perfect
        model would score: FID/KID floor at this sample size, the data's own skating and floating)."""
        n = min(len(self.heldout_x), len(self.train_x))
        encoder = self.encoder()
        ref = encoder.embed(self.heldout_x)
        feats = encoder.embed(self.train_x[:n])
        pos = self.positions(self.heldout_x)
        kid, _ = kernel_inception_distance(feats, ref, self.config.eval.kid_subsets,
                                           self.config.eval.kid_subset_size,
                                           stage_generator(self.config.seed, "eval/kid"))
        return {"fid": frechet_distance(feats, ref), "kid": kid,
                "skating": float(foot_skating_ratio(pos, self.skeleton.feet, self.quality).mean()),
                "floating": float(floating_ratio(pos, self.quality).mean()),
                "lowest_height_m": float(lowest_joint_height(pos).mean())}

    def format_table(self, rows: Sequence[dict[str, Any]]) -> str:
        from genneg.pipeline.motion_report import format_motion_table

        return format_motion_table(rows, self.config.eval.p)

    def report_notes(self, run: Any) -> list[str]:
        from genneg.pipeline.motion_report import motion_notes
        from genneg.pipeline.report import eval_rows

        return motion_notes(self, run, eval_rows(run.records()))

    def pictures(self, run: Any, rows: Sequence[dict[str, Any]],
                 load_model: Callable[[str], nn.Module]) -> list[str]:
        from genneg.pipeline.motion_report import render_motions

        return render_motions(self, run, rows)


EXPERIMENT = Experiment(
    name="motion", config_class=MotionExperimentConfig, profiles=MOTION_PROFILES, task_factory=MotionTask,
    description="human motion (procedural humanoid or DeepMimic clips): ground penetration")
