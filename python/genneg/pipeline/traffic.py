"""Gen-neG on traffic scenes: the traffic task (issues 6, 11; METHOD.md 4 "multi-part samples", 7, 8
"Traffic").

A sample is one scene: ``(A, 7)`` normalised vehicle tokens (:mod:`genneg.data.traffic.tokens`) in the
frame of a scene window. Scenes are **conditioned**: the network sees the map crop of the window and which
of the ``A`` vehicle slots are present, and the oracle needs the window's centre and map to judge the
decoded boxes. That conditioning travels with every sample as a dict of tensors
(:class:`~genneg.data.traffic.scene_set.SceneSet`) through the one Gen-neG loop
(:mod:`genneg.pipeline.experiment`), which calls this task's hooks:

- data (``data`` stage): procedural road maps (:func:`genneg.data.traffic.generate_road_maps`, plus CARLA
  towns when their cache exists), valid training and held-out scenes written once to ``run/data/`` and
  memory-mapped;
- baseline: DDPM ε-prediction scene transformer (:class:`~genneg.models.scene_networks.SceneEpsModel`,
  exact ε at padding), trained with :func:`~genneg.pipeline.scene_training.train_scene_baseline`;
- oracle: :class:`~genneg.data.traffic.scene_set.TrafficTokenOracle` per-vehicle verdicts (a scene is
  negative when any real vehicle is; padding masked by :meth:`TrafficTask.part_mask_fn`);
- classifiers: the same transformer with one logit per vehicle
  (:class:`~genneg.models.scene_networks.SceneLogitNet` in a :class:`~genneg.guidance.TimeClassifier`)
  trained in variance-exploding coordinates over the DDPM schedule's noise range with ``sigma_data = 1``
  (its input ``x / sqrt(σ² + 1)`` is exactly the DDPM ``x_t``), on the 8 dihedral copies of each labelled
  scene (:func:`dihedral_augment`); guidance ``ε_K = ε − sqrt(1 − ᾱ_t) Σ_k ∇ Σ_{real vehicles} log c_k``
  (:class:`~genneg.guidance.GuidedDenoiser` of the ε-network's ``EpsDenoiser``, ``part_mask_key="valid"``);
- distillation of the stacked model into a baseline-shaped ε-model (ε form of Eq. 12);
- evaluation of every model on the same held-out contexts and the same noise: collision, offroad and
  infraction rates per scene and per vehicle, r-ELBO on held-out scenes (same draws for every model),
  ``N(r, p)`` from the per-scene rate, sampling time per batch; PNG renders; a Table-1-like report
  (:mod:`genneg.pipeline.traffic_report`).

Configs and profiles: :mod:`genneg.pipeline.traffic_profiles`
(``genneg train traffic --profile tiny|quick|paper``).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genneg.data.traffic import (
    RoadNetworkConfig,
    TokenNormalisation,
    TrafficSceneDataset,
    generate_road_maps,
    write_traffic_dataset,
)
from genneg.data.traffic.scene_set import Cond, SceneSet, TrafficTokenOracle
from genneg.diffusion.ddpm import DDPMSchedule, EpsDenoiser
from genneg.diffusion.edm import EDMConfig
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.io.rundir import stage_generator, stage_seed
from genneg.metrics import infraction_rate, num_parallel_samples
from genneg.models.scene_networks import MAP_SAMPLES, SceneEpsModel, SceneLogitNet
from genneg.pipeline import distributed
from genneg.pipeline.balanced import BalancedDataset
from genneg.pipeline.registry import Experiment
from genneg.pipeline.scene_training import mean_per_vehicle, sample_scenes, scene_r_elbo, train_scene_baseline
from genneg.pipeline.task import EvalOutput, Task
from genneg.pipeline.traffic_profiles import TRAFFIC_PROFILES, TrafficExperimentConfig, get_traffic_profile
from genneg.pipeline.traffic_report import format_traffic_table, render_scenes, traffic_notes

__all__ = ["EXPERIMENT", "TrafficTask", "dihedral_augment"]


def dihedral_augment(dataset: BalancedDataset) -> BalancedDataset:
    """The 8 images of every scene under the symmetries of the square window (rotations by multiples of
    90° and reflections), tokens and map crop transformed together.

    The oracle's verdicts are invariant under rigid motions of the world (map and vehicles together), so
    each copy keeps its scene's labels, weights and priors; it is a scene in a rotated or mirrored world,
    and the crop is the exact image of the original crop (a square raster). The oracle-only entries of the
    conditioning (``centre_m``, ``map_index``) are copied unchanged: the classifier does not read them.

    Args:
        dataset: labelled scenes ``x (N, A, 7)`` with ``cond["map_raster"] (N, 1, C, C)``.

    Returns:
        ``8 N`` examples (the originals first); ``num_drawn`` is raised to at least ``8 N``.
    """
    if dataset.cond is None or "map_raster" not in dataset.cond:
        raise ValueError("dihedral_augment needs scenes with a map_raster conditioning entry")
    xs, crops = [dataset.x], [dataset.cond["map_raster"]]
    for flip in (False, True):
        x, crop = dataset.x, dataset.cond["map_raster"]
        if flip:  # x -> -x: cos h -> -cos h; columns reversed
            x = x * torch.tensor([-1, 1, -1, 1, 1, 1, 1], dtype=x.dtype, device=x.device)
            crop = crop.flip(-1)
            xs.append(x)
            crops.append(crop)
        for _ in range(3):  # (x, y) -> (-y, x), (cos, sin) -> (-sin, cos); crop'[i, j] = crop[C-1-j, i]
            x = torch.cat([-x[..., 1:2], x[..., 0:1], -x[..., 3:4], x[..., 2:3], x[..., 4:]], dim=-1)
            crop = torch.rot90(crop, k=-1, dims=(-2, -1))
            xs.append(x)
            crops.append(crop)
    repeat = len(xs)

    def tile(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.repeat(repeat, *([1] * (t.ndim - 1)))

    valid = dataset.part_mask if dataset.part_mask is not None else dataset.cond.get("valid")
    x_all = torch.cat(xs) * tile(valid)[..., None] if valid is not None else torch.cat(xs)
    cond = {k: tile(v) for k, v in dataset.cond.items()}
    cond["map_raster"] = torch.cat(crops)
    return BalancedDataset(x_all, tile(dataset.labels), tile(dataset.part_labels), dataset.pi_pos,
                           dataset.pi_neg, max(dataset.num_drawn, repeat * len(dataset)),
                           part_mask=tile(dataset.part_mask), balanced=dataset.balanced,
                           example_weights=tile(dataset.example_weights),
                           extra={**dataset.extra, "dihedral_copies": repeat}, cond=cond)



class TrafficTask(Task):
    """Data, oracle, networks, sampler, metrics and report of the traffic experiment (module docstring).

    After :meth:`setup`: ``schedule`` (the DDPM schedule), ``road_maps``, ``norm`` (token normalisation),
    ``train`` and ``heldout`` (:class:`SceneSet`), ``scene_oracle`` (:class:`TrafficTokenOracle`),
    ``crop_extent``.
    """

    name: ClassVar[str] = "traffic"
    title: ClassVar[str] = "traffic scenes"
    config_class: ClassVar[type] = TrafficExperimentConfig
    writes_data: ClassVar[bool] = True
    shards_evaluation: ClassVar[bool] = True
    likelihood_key: ClassVar[str] = "r_elbo"
    likelihood_label: ClassVar[str] = "held-out r-ELBO (nats per vehicle)"

    def make_config(self, profile: str) -> TrafficExperimentConfig:
        return get_traffic_profile(profile)

    def prepare(self, config: TrafficExperimentConfig, data_dir: Path, *, progress: bool = False
                ) -> dict[str, Any]:
        """Write the run's road maps and its training and held-out scene sets under ``data_dir``."""
        d = config.data
        network = RoadNetworkConfig(size_m=d.map_size_m, resolution_m=d.map_resolution_m)
        maps = generate_road_maps(network, d.num_maps, seed=stage_seed(config.seed, "data/maps") % 2**31)
        carla = 0
        if d.carla_cache_dir:
            cache = Path(d.carla_cache_dir)
            if any(cache.glob("torchdrivesim-*.whl")):
                from genneg.data.traffic import fetch_carla_maps

                towns = fetch_carla_maps(cache, d.map_resolution_m)
                maps += list(towns)
                carla = len(towns)
            elif progress:
                print(f"[genneg] no torchdrivesim wheel in {cache}: procedural maps only", file=sys.stderr)
        norm = TokenNormalisation(position_scale_m=0.5 * d.window_m)
        info: dict[str, Any] = {"maps": len(maps), "carla_maps": carla}
        for split, n in (("train", d.num_train), ("heldout", d.num_heldout)):
            target = data_dir / split
            if target.exists():
                shutil.rmtree(target)
            write_traffic_dataset(target, maps, n, d.scene_config(),
                                  seed=stage_seed(config.seed, f"data/{split}"),
                                  norm=norm, crop_cells=d.crop_cells, crop_margin_m=d.crop_margin_m,
                                  extra_config={"road_network": dataclasses.asdict(network)})
            valid = np.load(target / "valid.npy", mmap_mode="r")
            info[f"{split}_scenes"] = n
            info[f"{split}_vehicles_per_scene"] = float(np.asarray(valid).sum(1).mean())
        return info

    def setup(self, config: TrafficExperimentConfig, data_dir: Path) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.schedule = DDPMSchedule(config.ddpm)
        train_set = TrafficSceneDataset(data_dir / "train")
        heldout_set = TrafficSceneDataset(data_dir / "heldout")
        self.road_maps = train_set.road_maps()
        self.norm = train_set.norm
        self.train = SceneSet.from_dataset(train_set, self.device)
        self.heldout = SceneSet.from_dataset(heldout_set, self.device)
        shared = distributed.world().local_world_size > 1  # ranks on this machine share its cores
        self.scene_oracle = TrafficTokenOracle(self.road_maps, self.norm,
                                               threads=distributed.threads_per_rank() if shared else 0)
        self.crop_extent = float(train_set.crop_extent)
        sig = self.schedule.sigmas
        top = min(float(sig[-1]), config.model.classifier_sigma_max)
        if not top > float(sig[0]):
            raise ValueError(f"model.classifier_sigma_max={config.model.classifier_sigma_max} must exceed "
                             f"the schedule's smallest noise level {float(sig[0]):.3g}")
        self._classifier_noise = EDMConfig(sigma_min=float(sig[0]), sigma_max=top, sigma_data=1.0)
        self._noise_levels = sig.clone() if config.model.classifier_noise == "ddpm" else None

    @property
    def generator_device(self) -> torch.device:
        return torch.device("cpu")  # noise and indices are drawn on the CPU, then moved (sample_scenes)

    # networks ----------------------------------------------------------------------------------------
    def new_denoiser(self) -> SceneEpsModel:
        """A fresh baseline-shaped ε-model."""
        model = self.config.model
        extra = MAP_SAMPLES if model.denoiser_map_samples else 0
        cfg = dataclasses.replace(model.denoiser, head="eps", token_dim=7 + extra, output_dim=7,
                                  map_extent=self.crop_extent)
        return SceneEpsModel(cfg, self.schedule,
                             map_samples=self.norm if model.denoiser_map_samples else None).to(self.device)

    def new_classifier(self, time_dependent: bool) -> TimeClassifier:
        """A fresh per-vehicle classifier (time-independent for the ablation). Its output layer starts at
        zero: ``c = 1/2`` everywhere, no guidance until it has learned something."""
        model = self.config.model
        cfg = dataclasses.replace(model.classifier, head="logit",
                                  token_dim=7 + (MAP_SAMPLES if model.classifier_map_samples else 0),
                                  map_extent=self.crop_extent)
        net = SceneLogitNet(cfg, model.classifier_time_scale, self._classifier_noise.sigma_max,
                            shrinkage=time_dependent and model.classifier_shrinkage,
                            map_samples=self.norm if model.classifier_map_samples else None,
                            noise_aware=time_dependent and model.classifier_noise_aware)
        last = net.net.decoder[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return TimeClassifier(net, sigma_data=1.0, time_dependent=time_dependent).to(self.device)

    def train_baseline(self, model: nn.Module, generator: torch.Generator, *, progress: bool = False,
                       on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg = self.config
        return train_scene_baseline(model, self.train, self.heldout, cfg.baseline, self.schedule, generator,
                                    seed=stage_seed(cfg.seed, "baseline/r_elbo"), progress=progress,
                                    on_eval=on_eval)

    # sampling and the oracle ------------------------------------------------------------------------
    def with_sampling(self, config: TrafficExperimentConfig, **changes: Any) -> TrafficExperimentConfig:
        """``config`` with ``gen_neg.sample_steps`` replaced (``num_steps``); the scenes' DDPM samples with
        the ancestral sampler on its own timesteps only (``sampler`` None or ``"ancestral"``; any other
        option raises ``ValueError``)."""
        other = sorted(k for k, v in changes.items() if v is not None and k not in ("sampler", "num_steps"))
        if other:
            raise ValueError(f"the traffic task's DDPM offers no sampling option(s) {other}")
        sampler, num_steps = changes.get("sampler"), changes.get("num_steps")
        if sampler not in (None, "ancestral"):
            raise ValueError(f"the traffic task samples with the DDPM ancestral sampler only, got "
                             f"{sampler!r}")
        if num_steps is None:
            return config
        gen_neg = dataclasses.replace(config.gen_neg, sample_steps=num_steps)
        return dataclasses.replace(config, gen_neg=gen_neg)

    @property
    def sample_batch_size(self) -> int:
        return self.config.gen_neg.sample_batch_size

    def sample_timed(self, model: Callable[..., torch.Tensor], cond: Cond, generator: torch.Generator, *,
                     progress: bool = False) -> tuple[torch.Tensor, list[float]]:
        """Scenes of ``model`` in the contexts ``cond`` and the wall seconds of each batch."""
        g = self.config.gen_neg
        return sample_scenes(model, cond, self.schedule, num_steps=g.sample_steps,
                             batch_size=g.sample_batch_size, generator=generator, progress=progress)

    def sample(self, model: Callable[..., torch.Tensor], n: int, generator: torch.Generator, *,
               cond: Cond | None = None, progress: bool = False) -> torch.Tensor:
        if cond is None:
            raise ValueError("traffic scenes are conditioned: pass cond (train_contexts / eval_contexts)")
        if cond["valid"].shape[0] != n:
            raise ValueError(f"cond has {cond['valid'].shape[0]} contexts for {n} samples")
        return self.sample_timed(model, cond, generator, progress=progress)[0]

    def train_contexts(self, n: int, generator: torch.Generator) -> Cond:
        """``n`` training contexts drawn uniformly (with replacement)."""
        idx = torch.randint(len(self.train), (n,), generator=generator).to(self.device)
        return self.train.contexts(idx)

    def eval_contexts(self, n: int) -> Cond:
        """The first held-out scenes' contexts, cycled to ``n``."""
        idx = torch.arange(n, device=self.device) % len(self.heldout)
        return self.heldout.contexts(idx)

    def oracle(self, x: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.scene_oracle(x, **cond)

    @staticmethod
    def part_mask_fn(x: torch.Tensor, *, valid: torch.Tensor, **context: torch.Tensor) -> torch.Tensor:
        """Real vehicles are the parts."""
        return valid

    # classifiers, guidance, distillation ------------------------------------------------------------
    @property
    def classifier_noise(self) -> EDMConfig:
        """The DDPM's VE noise range (capped at ``model.classifier_sigma_max``), ``sigma_data = 1``."""
        return self._classifier_noise

    @property
    def classifier_noise_levels(self) -> torch.Tensor | None:
        return self._noise_levels

    def classifier_examples(self, dataset: BalancedDataset) -> BalancedDataset:
        return dihedral_augment(dataset) if self.config.gen_neg.augment else dataset

    def guide(self, model: nn.Module, classifiers: Sequence[nn.Module], scale: float) -> nn.Module:
        """``D_K`` of the ε-network's ``EpsDenoiser``: the stack's guidance (sum over real vehicles of
        ``log c_k``), or the model itself."""
        if not classifiers:
            return model
        scales = [scale] * len(classifiers)
        return GuidedDenoiser(EpsDenoiser(model, self.schedule), list(classifiers), scales,
                              part_mask_key="valid")

    @property
    def distill_noise(self) -> DDPMSchedule:
        return self.schedule

    def distillation_data(self, sample_teacher: Callable[[int], tuple[torch.Tensor, Cond | None]],
                          generator: torch.Generator) -> tuple[torch.Tensor, Cond | None]:
        if self.config.distill.x0_source == "teacher":
            return sample_teacher(self.config.distill.num_teacher_samples)
        return self.train.tokens, self.train.cond

    # evaluation and report ---------------------------------------------------------------------------
    def evaluate(self, model: Callable[..., torch.Tensor], *, num_samples: int | None = None,
                 progress: bool = False, on_sampled: Callable[[], None] | None = None) -> EvalOutput:
        """Collision, offroad and infraction rates per scene and per vehicle, r-ELBO per vehicle, ``N(r, p)``
        from the per-scene rate and sampling time, on the evaluation contexts with fixed noise and fixed
        r-ELBO draws (paired comparisons). Tensors: ``tokens``, ``collision``, ``offroad``.

        Data-parallel (a collective: every rank calls it and gets the same metrics): the evaluation scenes
        are cut into batches of ``gen_neg.sample_batch_size``, each batch's noise seeded by the run seed
        and its first row (``eval/noise/rows{first}``), sampled and judged by the oracle on the rank that
        owns it; the scenes and verdicts are gathered in row order and counted on every rank (exact
        integers), and the r-ELBO's chunks are shared likewise (:func:`scene_r_elbo`, float64 sums in row
        order). The metrics do not depend on the world size."""
        cfg, seed, batch_size = self.config.eval, self.config.seed, self.config.gen_neg.sample_batch_size
        n = cfg.num_scenes if num_samples is None else num_samples
        cond = self.eval_contexts(n)
        w = distributed.world()
        bar = tqdm(total=len(range(w.rank * batch_size, n, batch_size * w.world_size)),
                   disable=not progress, desc="evaluation scenes", leave=False)

        def batch(first: int, m: int) -> dict[str, Any]:
            rows = {k: v[first:first + m] for k, v in cond.items()}
            tokens, seconds = self.sample_timed(model, rows, stage_generator(seed, f"eval/noise/rows{first}"))
            verdicts = self.scene_oracle.details(tokens, **rows)
            bar.update()
            return {"tokens": tokens.cpu(), "collision": verdicts.collision.cpu(),
                    "offroad": verdicts.offroad.cpu(), "seconds": seconds}

        parts = distributed.map_batches(n, batch_size, batch)
        bar.close()
        if on_sampled is not None:
            on_sampled()
        tokens, collision, offroad = (torch.cat([p[key] for p in parts]).to(self.device)
                                      for key in ("tokens", "collision", "offroad"))
        seconds = [s for p in parts for s in p["seconds"]]
        valid = cond["valid"]
        ok = ~(collision | offroad)
        scene = infraction_rate(ok | ~valid)
        vehicle = infraction_rate(ok[valid])
        held = self.heldout.rows(torch.arange(min(cfg.r_elbo_scenes, len(self.heldout)), device=self.device))
        r = scene_r_elbo(model, held, self.schedule, num_timesteps=cfg.r_elbo_timesteps,
                         seed=stage_seed(seed, "eval/r_elbo"))
        metrics = {
            "infraction": scene.rate, "infraction_low": scene.low, "infraction_high": scene.high,
            "infraction_vehicle": vehicle.rate, "infraction_vehicle_low": vehicle.low,
            "infraction_vehicle_high": vehicle.high,
            "infractions": scene.count, "infractions_vehicle": vehicle.count,
            "collision": float((collision & valid).any(1).float().mean()),
            "offroad": float((offroad & valid).any(1).float().mean()),
            "collision_vehicle": float(collision[valid].float().mean()),
            "offroad_vehicle": float(offroad[valid].float().mean()),
            "r_elbo": mean_per_vehicle(r, held.cond["valid"]),
            "n_parallel": num_parallel_samples(scene.rate, cfg.p) if scene.rate < 1 else None,
            "num_scenes": int(tokens.shape[0]), "num_vehicles": vehicle.total, "batch_size": batch_size,
            "sample_seconds_per_batch": float(np.median(seconds)) if seconds else None,
        }
        return metrics, {"tokens": tokens, "collision": collision, "offroad": offroad}

    def format_table(self, rows: Sequence[dict[str, Any]]) -> str:
        return format_traffic_table(rows, self.config.eval.p)

    def report_notes(self, run: Any) -> list[str]:
        from genneg.pipeline.report import eval_rows

        return traffic_notes(run, self.config, eval_rows(run.records()))

    def pictures(self, run: Any, rows: Sequence[dict[str, Any]],
                 load_model: Callable[[str], nn.Module]) -> list[str]:
        return render_scenes(self, run, rows, load_model)


EXPERIMENT = Experiment(
    name="traffic", config_class=TrafficExperimentConfig, profiles=TRAFFIC_PROFILES, task_factory=TrafficTask,
    description="traffic scenes on procedural (and CARLA) road maps: collision and offroad (Table 1)")
