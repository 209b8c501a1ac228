"""Motion data sets on disk: written once, memory-mapped for training (like the traffic scenes).

Layout of a data set directory::

    config.json      format, source ("procedural" / "deepmimic"), fps, frames, skeleton, family names,
                     generator options, counts (windows kept and dropped per clip for DeepMimic)
    positions.npy    (N, F, J, 3) float32  joint positions, metres, y up, canonical (root starts at x = z = 0
                     facing +z)
    family.npy       (N,) int64            index into the family names (motion family / source clip)

Every stored clip is valid: no joint of any frame is below the floor by more than the tolerance stored
in ``config.json``. Procedural clips are generated in chunks of ``chunk_clips`` (chunk ``c`` seeded from
``(seed, c)``) into pre-allocated ``.npy`` files. The directory is built under a temporary name and renamed
when complete.

Command line: ``python -m genneg.data.motion procedural --output DIR --clips N`` and
``python -m genneg.data.motion deepmimic --cache-dir DIR --output DIR`` (fetches the pybullet wheel
with pip into the cache when absent; see :mod:`.deepmimic` for provenance and licence).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from .deepmimic import deepmimic_clips_from_wheel, deepmimic_humanoid_from_wheel, download_pybullet_wheel
from .procedural import MOTION_FAMILIES, ProceduralConfig, generate_procedural_motions
from .skeleton import PROCEDURAL_JOINTS, Skeleton
from .windows import slice_windows

__all__ = ["MotionDataset", "main", "write_deepmimic_dataset", "write_deepmimic_split",
           "write_motion_dataset", "write_procedural_dataset"]

FORMAT_VERSION = 1


def _lowest(positions_m: np.ndarray) -> np.ndarray:
    """``(N, F, J, 3)`` -> ``(N,)`` lowest joint height of each clip, metres."""
    return np.asarray(positions_m)[..., 1].reshape(positions_m.shape[0], -1).min(axis=1)


def _start(directory: Path) -> Path:
    if directory.exists():
        raise ValueError(f"data set directory {directory} already exists")
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, directory: Path, meta: dict) -> Path:
    meta = {"format_version": FORMAT_VERSION, **meta}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.rename(directory)
    return directory


def write_motion_dataset(directory: str | Path, positions_m: np.ndarray, family: np.ndarray,
                         family_names: Sequence[str], skeleton: Skeleton, fps: float, source: str,
                         tolerance_m: float = 0.01, extra: dict | None = None) -> Path:
    """Write clips ``(N, F, J, 3)`` metres with their family indices ``(N,)``.

    Raises:
        ValueError: the directory exists; shapes disagree; a clip is below the floor by more than
            ``tolerance_m`` (naming it) or not finite.
    """
    directory = Path(directory)
    p = np.asarray(positions_m, dtype=np.float32)
    fam = np.asarray(family, dtype=np.int64)
    if p.ndim != 4 or p.shape[2:] != (skeleton.num_joints, 3) or fam.shape != (p.shape[0],):
        raise ValueError(f"positions_m must be (N, F, {skeleton.num_joints}, 3) and family (N,), got "
                         f"{p.shape}, {fam.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"clip {int(np.flatnonzero(~np.isfinite(p).reshape(len(p), -1).all(1))[0])} "
                         "is not finite")
    low = _lowest(p)
    if np.any(low < -tolerance_m):
        bad = int(np.argmin(low))
        raise ValueError(f"clip {bad} has a joint {-low[bad]:.4f} m below the floor (tolerance "
                         f"{tolerance_m} m)")
    if fam.size and not (0 <= fam.min() and fam.max() < len(family_names)):
        raise ValueError(f"family indices must lie in [0, {len(family_names)}), got {fam.min()}..{fam.max()}")
    tmp = _start(directory)
    np.save(tmp / "positions.npy", p)
    np.save(tmp / "family.npy", fam)
    meta = {"source": source, "n_clips": int(p.shape[0]), "frames": int(p.shape[1]), "fps": float(fps),
            "skeleton": skeleton.to_dict(), "family_names": list(family_names), "tolerance_m": tolerance_m,
            "extra": extra or {}}
    return _finish(tmp, directory, meta)


def write_procedural_dataset(directory: str | Path, n_clips: int, config: ProceduralConfig, seed: int,
                             chunk_clips: int = 1024) -> Path:
    """Generate ``n_clips`` procedural clips (:mod:`.procedural`) chunk by chunk into a data set."""
    directory = Path(directory)
    if n_clips < 1 or chunk_clips < 1:
        raise ValueError(f"n_clips and chunk_clips must be >= 1, got {n_clips}, {chunk_clips}")
    tmp = _start(directory)
    skeleton = None
    shape = (n_clips, config.frames, len(PROCEDURAL_JOINTS), 3)
    pos = open_memmap(tmp / "positions.npy", mode="w+", dtype=np.float32, shape=shape)
    fam = open_memmap(tmp / "family.npy", mode="w+", dtype=np.int64, shape=(n_clips,))
    heights = np.zeros(n_clips)
    for c, s0 in enumerate(range(0, n_clips, chunk_clips)):
        s1 = min(s0 + chunk_clips, n_clips)
        chunk_seed = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
        m = generate_procedural_motions(s1 - s0, config, chunk_seed)
        pos[s0:s1], fam[s0:s1], heights[s0:s1] = m.positions_m, m.family, m.height_m
        skeleton = m.skeleton
    pos.flush()
    fam.flush()
    del pos, fam
    config_dict = dataclasses.asdict(config)
    meta = {"source": "procedural", "n_clips": n_clips, "frames": config.frames, "fps": config.fps,
            "skeleton": skeleton.to_dict(), "family_names": list(MOTION_FAMILIES), "tolerance_m": 0.0,
            "extra": {"seed": seed, "chunk_clips": chunk_clips, "config": config_dict,
                      "height_m_mean": float(heights.mean())}}
    return _finish(tmp, directory, meta)


def write_deepmimic_dataset(directory: str | Path, wheel: str | Path, fps: float = 20.0, frames: int = 60,
                            stride: int = 5, warps: Sequence[float] = (0.9, 1.0, 1.1), mirrored: bool = True,
                            tolerance_m: float = 0.01, clips: Sequence[str] | None = None) -> Path:
    """Training windows of the DeepMimic clips of a pybullet wheel (:mod:`.deepmimic`, :mod:`.windows`).

    Windows with a joint more than ``tolerance_m`` below the floor are dropped; ``config.json`` records,
    per clip, the windows kept and dropped. Raises ValueError when no window is kept.
    """
    humanoid = deepmimic_humanoid_from_wheel(wheel)
    sk = humanoid.skeleton
    converted = deepmimic_clips_from_wheel(wheel, None if clips is None else list(clips))
    kept, family, counts = [], [], {}
    for k, clip in enumerate(converted):
        w = slice_windows(clip.positions_m, clip.times_s, sk, fps, frames, stride, warps, mirrored)
        ok = _lowest(w) >= -tolerance_m if len(w) else np.zeros(0, dtype=bool)
        kept.append(w[ok])
        family.append(np.full(int(ok.sum()), k))
        counts[clip.name] = {"kept": int(ok.sum()), "dropped": int((~ok).sum()),
                             "duration_s": float(clip.times_s[-1]), "loop": clip.loop}
    positions = np.concatenate(kept)
    if len(positions) == 0:
        raise ValueError(f"no window of {frames} frames at {fps} fps survived: {counts}")
    extra = {"wheel": Path(wheel).name, "stride": stride, "warps": list(warps), "mirrored": mirrored,
             "clips": counts}
    return write_motion_dataset(directory, positions, np.concatenate(family), [c.name for c in converted],
                                sk, fps, "deepmimic", tolerance_m, extra)


def write_deepmimic_split(train_dir: str | Path, heldout_dir: str | Path, wheel: str | Path,
                          heldout_fraction: float = 0.3, fps: float = 20.0, frames: int = 60, stride: int = 5,
                          warps: Sequence[float] = (0.9, 1.0, 1.1), mirrored: bool = True,
                          tolerance_m: float = 0.01, min_wrap_duration_s: float = 12.0) -> dict[str, Any]:
    """Training and held-out windows of the DeepMimic clips, split in time: each clip's last
    ``heldout_fraction`` of its duration gives the held-out windows, the rest the training windows (so no
    window of one set overlaps a window of the other; cyclic clips repeat their cycle, so the held-out part
    of a cyclic clip is the same motion at other times). Clips too short for a window in a part give none
    there. Windows below the floor by more than ``tolerance_m`` are dropped.

    Returns:
        Per clip and split, the windows kept and dropped.

    Raises:
        ValueError: ``heldout_fraction`` outside ``(0, 1)``, or a split without windows.
    """
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    sk = deepmimic_humanoid_from_wheel(wheel).skeleton
    converted = deepmimic_clips_from_wheel(wheel, min_wrap_duration_s=min_wrap_duration_s)
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "heldout": ([], [])}
    counts: dict[str, dict[str, int]] = {}
    for k, clip in enumerate(converted):
        cut = (1 - heldout_fraction) * clip.times_s[-1]
        for split, rows in (("train", clip.times_s <= cut), ("heldout", clip.times_s >= cut)):
            if rows.sum() < 2:
                continue
            w = slice_windows(clip.positions_m[rows], clip.times_s[rows], sk, fps, frames, stride, warps,
                              mirrored)
            ok = _lowest(w) >= -tolerance_m if len(w) else np.zeros(0, dtype=bool)
            parts[split][0].append(w[ok])
            parts[split][1].append(np.full(int(ok.sum()), k))
            counts[f"{clip.name}/{split}"] = {"kept": int(ok.sum()), "dropped": int((~ok).sum())}
    names = [c.name for c in converted]
    for split, directory in (("train", train_dir), ("heldout", heldout_dir)):
        windows, family = parts[split]
        positions = np.concatenate(windows) if windows else np.zeros((0, frames, sk.num_joints, 3))
        if len(positions) == 0:
            raise ValueError(f"no {split} window of {frames} frames at {fps} fps: {counts}")
        extra = {"wheel": Path(wheel).name, "split": split, "heldout_fraction": heldout_fraction,
                 "stride": stride, "warps": list(warps), "mirrored": mirrored, "clips": counts}
        write_motion_dataset(directory, positions, np.concatenate(family), names, sk, fps, "deepmimic",
                             tolerance_m, extra)
    return counts


class MotionDataset(torch.utils.data.Dataset):
    """A written motion data set, memory-mapped.

    ``dataset[i]``: ``{"positions": (F, J, 3) float32 metres, "family": () int64, "index": () int64}``.

    Attributes:
        directory, meta (the parsed ``config.json``), skeleton, fps, family_names,
        positions (``(N, F, J, 3)`` memory map), family (``(N,)`` memory map).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / "config.json"
        if not path.is_file():
            raise ValueError(f"{self.directory} is not a motion data set (no config.json)")
        self.meta = json.loads(path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            version = self.meta.get("format_version")
            raise ValueError(f"{self.directory}: unsupported format_version {version}")
        self.skeleton = Skeleton.from_dict(self.meta["skeleton"])
        self.fps = float(self.meta["fps"])
        self.family_names = tuple(self.meta["family_names"])
        self.positions = np.load(self.directory / "positions.npy", mmap_mode="r")
        self.family = np.load(self.directory / "family.npy", mmap_mode="r")

    def __len__(self) -> int:
        return int(self.meta["n_clips"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        return {"positions": torch.from_numpy(np.array(self.positions[index])),
                "family": torch.tensor(int(self.family[index])),
                "index": torch.tensor(index % len(self))}


def main(argv: Sequence[str] | None = None) -> int:
    """Command: write a procedural or a DeepMimic motion data set and print its summary."""
    parser = argparse.ArgumentParser(prog="python -m genneg.data.motion", description=main.__doc__)
    sub = parser.add_subparsers(dest="source", required=True)
    proc = sub.add_parser("procedural", help="procedural humanoid clips")
    proc.add_argument("--output", required=True, type=Path)
    proc.add_argument("--clips", type=int, default=10_000)
    proc.add_argument("--seed", type=int, default=0)
    proc.add_argument("--fps", type=float, default=20.0)
    proc.add_argument("--frames", type=int, default=60)
    dm = sub.add_parser("deepmimic", help="DeepMimic clips of the pybullet wheel (pip download into a cache)")
    dm.add_argument("--cache-dir", required=True, type=Path)
    dm.add_argument("--output", required=True, type=Path)
    dm.add_argument("--fps", type=float, default=20.0)
    dm.add_argument("--frames", type=int, default=60)
    dm.add_argument("--stride", type=int, default=5)
    dm.add_argument("--warps", type=float, nargs="+", default=[0.9, 1.0, 1.1])
    dm.add_argument("--no-mirror", action="store_true")
    dm.add_argument("--tolerance-m", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.source == "procedural":
        config = ProceduralConfig(args.fps, args.frames)
        out = write_procedural_dataset(args.output, args.clips, config, args.seed)
    else:
        wheel = download_pybullet_wheel(args.cache_dir)
        out = write_deepmimic_dataset(args.output, wheel, args.fps, args.frames, args.stride, args.warps,
                                      not args.no_mirror, args.tolerance_m)
    ds = MotionDataset(out)
    print(f"{out}: {len(ds)} clips of {ds.meta['frames']} frames at {ds.fps:g} fps, "
          f"{ds.skeleton.num_joints} joints, source {ds.meta['source']}")
    for name, c in ds.meta["extra"].get("clips", {}).items():
        print(f"  {name}: {c['kept']} windows kept, {c['dropped']} dropped (below the floor)")
    return 0
