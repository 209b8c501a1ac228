"""The evaluate hook (and the r-ELBO in small chunks) of a finished run's models, run by ``torchrun``
from the traffic and motion tests (and in-process for the one-process answer): one intra-op thread per
process (so that both answers do the same arithmetic) and evaluation batches of ``batch_size`` rows (so
that the ranks get unequal shares). Rank 0 writes the metrics (JSON) and the evaluation tensors
(safetensors) of every model.

    torchrun --nproc-per-node=2 eval_worker.py RUN_DIR OUT_PREFIX BATCH_SIZE MODEL [MODEL ...]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from genneg.io.checkpoint import save_tensors
from genneg.pipeline import distributed
from genneg.pipeline.experiment import load_model
from genneg.pipeline.motion import motion_r_elbo
from genneg.pipeline.scene_training import scene_r_elbo
from genneg.pipeline.traffic import TrafficTask


def r_elbo_chunks(task: Any, model: Any, chunk: int) -> torch.Tensor:
    """The r-ELBO of every held-out scene or clip in chunks of ``chunk`` rows (shared among the ranks)."""
    if isinstance(task, TrafficTask):
        return scene_r_elbo(model, task.heldout, task.schedule, num_timesteps=2, seed=1, batch_scenes=chunk)
    return motion_r_elbo(model, task.heldout_x, task.schedule, num_timesteps=2, seed=1, batch_clips=chunk)


def evaluate(run_dir: Path, models: list[str], batch_size: int
             ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``({"world_size", "ranks_agree", "metrics": {model: metrics}}, {"model.key": tensor})`` (every rank
    computes it; ``ranks_agree``: every rank got the same metrics, as the hook promises)."""
    world = distributed.init_from_env("cpu", timeout_s=120)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics, tensors = {}, {}
        for name in models:
            task, config, model = load_model(run_dir, name)
            task.config = dataclasses.replace(
                config, gen_neg=dataclasses.replace(config.gen_neg, sample_batch_size=batch_size))
            values, out = task.evaluate(model)
            metrics[name] = values
            tensors.update({f"{name}.{key}": value.cpu().contiguous() for key, value in out.items()})
            tensors[f"{name}.r_elbo_chunks"] = r_elbo_chunks(task, model, batch_size).cpu()
    finally:
        torch.set_num_threads(previous)
    every = distributed.all_gather_objects(metrics)
    agree = all(json.dumps(m, sort_keys=True) == json.dumps(every[0], sort_keys=True) for m in every)
    return {"world_size": world.world_size, "ranks_agree": agree, "metrics": metrics}, tensors


def main(argv: list[str]) -> int:
    run_dir, prefix, batch_size, models = Path(argv[0]), Path(argv[1]), int(argv[2]), argv[3:]
    summary, tensors = evaluate(run_dir, models, batch_size)
    if distributed.world().is_main:
        save_tensors(prefix.with_suffix(".safetensors"), tensors)
        prefix.with_suffix(".json").write_text(json.dumps(summary))
    distributed.barrier()
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
