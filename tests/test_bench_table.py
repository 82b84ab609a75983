"""The benchmark summary table (benchmarks/results.md) built from results.json entries."""

from __future__ import annotations

from benchmarks.common import loader_over_step_need, markdown_table


def test_headlines_derived_ratio_and_one_sampler_table_per_interpolant() -> None:
    results = {
        "triplet_loader": {"ram_triplets_per_s": 1000, "zarr_triplets_per_s": 400},
        "train_step": {"b_over_a": 0.97, "c_over_b": 2.2, "batch": 8, "b_cached_loader_step_s": 2.0},
        "samplers_ours": {"videos": 4, "samples": 2, "setting": "s", "copy_last_psnr": 17.9, "vq_ceiling_psnr": None,
                          "results": [{"solver": "heun_sde", "steps": 11, "nfe_per_frame": 20, "psnr_mean": 18.5}]},
    }
    assert loader_over_step_need(results) == 100.0  # 400 supplied / (8 per 2 s) consumed
    assert loader_over_step_need({"triplet_loader": results["triplet_loader"]}) is None
    table = markdown_table(results)
    assert "| train_step | training step with the cached loader / bare step (KTH sizes) | 0.97 | <= 1.10 |" in table
    assert "| 100.0 | >= 1 |" in table
    assert "**samplers_ours** (4 videos x 2 samples; s)" in table and "samplers_linear" not in table
    assert "| heun_sde | 11 | 20 |  | 18.5 |  |" in table  # missing columns stay empty
    assert "copy_last_psnr 17.9" in table and "vq_ceiling_psnr" not in table
