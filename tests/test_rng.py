"""Per-row random streams: a rollout's draws do not depend on the other rows of its batch (pipeline/core/rng.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.run.config import InterpolantConfig, SamplingConfig
from pipeline.core.interpolants import build_interpolant
from pipeline.core.rng import RowGenerators, randint, randn
from pipeline.core.sampling import rollout, sample


def _fake_net(z, t, ref, context, gap):
    """Elementwise in every row (no cross-row arithmetic), so batching cannot change its values."""
    return -z + 0.5 * ref + 0.1 * context + 0.01 * gap.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("kind, settings", [("ours", {}), ("linear", {}), ("ours", {"solver": "heun_sde", "context": "per_step"}),
                                             ("ours", {"diffusion": "sigma_scaled", "diffusion_scale": 0.5,
                                                      "grid": "quadratic", "t_min": 0.05})])
def test_row_generators_make_each_rollout_independent_of_its_batch(kind: str, settings: dict) -> None:
    interpolant = build_interpolant(InterpolantConfig(kind=kind))
    cfg = SamplingConfig(steps=6, n_samples=2, batch_size=3, **settings)
    cond = torch.randn(3, 3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    gens = lambda: RowGenerators([torch.Generator().manual_seed(100 + i) for i in range(6)])  # noqa: E731
    rows = cond.repeat_interleave(2, dim=0)
    together = rollout(_fake_net, interpolant, rows, 4, cfg, gens()).latents
    alone = [rollout(_fake_net, interpolant, rows[i : i + 1], 4, cfg, gens()[i : i + 1]).latents for i in range(6)]
    assert torch.equal(together, torch.cat(alone))
    assert not torch.equal(together[0, 3:], together[1, 3:])  # same video, own streams: other futures
    for batch_size in (1, 4, 6):
        cfg.batch_size = batch_size
        assert torch.equal(sample(_fake_net, interpolant, cond, 4, cfg, gens()).latents, together.view(3, 2, 7, 2, 2, 2))
    with pytest.raises(ValueError, match="one row per generator"):
        rollout(_fake_net, interpolant, rows[:2], 4, cfg, gens())



def test_row_draws_equal_single_row_draws_and_plain_generators_are_unchanged() -> None:
    gens = RowGenerators([torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    x, k = randn((3, 2, 2), generator=gens), randint(0, 9, (3,), generator=gens)  # normal draw first, then integer
    for i, seed in enumerate((1, 2, 3)):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(x[i : i + 1], torch.randn(1, 2, 2, generator=g))
        assert torch.equal(k[i : i + 1], torch.randint(0, 9, (1,), generator=g))
    plain = torch.Generator().manual_seed(5)
    assert torch.equal(randn((3, 2), generator=plain), torch.randn(3, 2, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="one row per generator"):
        randn((2, 2), generator=gens)
