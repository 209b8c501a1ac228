"""The oracle demo flags what an independent per-pair check flags, and writes its picture."""

import numpy as np

from genneg.oracles.demo import format_oracle_demo, run_oracle_demo


def test_oracle_demo_runs_and_flags_infractions(tmp_path) -> None:
    result = run_oracle_demo(tmp_path, num_scenes=40, repeats=1)
    assert result.picture.exists() and result.picture.stat().st_size > 10_000
    assert result.num_vehicles > 40
    # jitter of 0.6 m / 0.15 rad in dense scenes must create collisions, but not make every vehicle collide
    assert 0.01 < result.collision_rate < 0.9
    assert 0.0 <= result.offroad_rate < 0.5
    assert all(np.isfinite(v) and v > 0 for v in result.collision_ms.values())
    assert "picture" in format_oracle_demo(result)
