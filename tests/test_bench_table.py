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


def test_gpu_report_tables(tmp_path) -> None:
    from benchmarks.gpu_report import read_junit, read_steps, render

    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite><testcase name="test_a" time="1.25"/><testcase name="test_b" time="2">'
        '<failure message="AssertionError: 1 | 2">trace</failure></testcase>'
        '<testcase name="test_c" time="0"><skipped message="needs a CUDA device"/></testcase></testsuite></testsuites>')
    (tmp_path / "x.log").write_text("line 1\nTraceback: boom\n")
    (tmp_path / "steps.jsonl").write_text(
        '{"name": "env", "status": "ok", "rc": 0, "seconds": 2, "timeout_s": 60, "log": ""}\n'
        f'{{"name": "forecast_fp32", "status": "timeout", "rc": 124, "seconds": 60, "timeout_s": 60, "log": "{tmp_path / "x.log"}"}}\n'
        'not json\n')
    tests, steps = read_junit(tmp_path / "junit.xml"), read_steps(tmp_path / "steps.jsonl")
    assert [t["outcome"] for t in tests] == ["passed", "failed", "skipped"] and tests[1]["message"] == "AssertionError: 1 | 2"
    assert len(steps) == 2 and steps[1]["log_tail"] == ["line 1", "Traceback: boom"] and "log_tail" not in steps[0]
    results = {
        "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "nvidia_smi": {"driver": "580"}},
        "steps": steps, "tests": tests, "budget_s": 460, "elapsed_s": 300, "started": "now",
        "train_step_cuda_bf16": {"batch": 256, "bf16": True, "compile": False, "a_bare_step_s": 0.03, "mfu_a": 0.41,
                                 "flops_per_step": 9.8e12, "peak_flops_assumed": "H200 dense bf16 peak 989 TFLOP/s"},
        "samplers_ours_cuda": {"batch_rows": 256, "results": [{"solver": "euler_maruyama", "steps": 21, "nfe_per_frame": 20,
                                                               "generated_frames_per_s": 1234.5}]},
    }
    md = render(results)
    assert "GPU **NVIDIA H200**" in md and "torch 2.11.0, CUDA 13.0" in md and "driver 580" in md
    assert "| forecast_fp32 | timeout | 124 | 60 | 60 |" in md and "Traceback: boom" in md
    assert "| test_b | failed | 2 | AssertionError: 1 / 2 |" in md  # a '|' would break the table
    assert "| train_step_cuda_bf16 | 256 | bf16 | False | 30 |" in md and "| 0.41 |" in md and "989 TFLOP/s" in md
    assert "| samplers_ours_cuda | 256 | euler_maruyama | 21 | 20 | 1234.5 |" in md


def test_benchmark_device_options_on_cpu(tmp_path, monkeypatch) -> None:
    """bench_train and bench_samplers with their device / bf16 options at tiny sizes, into a results file of their own."""
    import json

    import torch

    from benchmarks import bench_samplers, bench_train
    from benchmarks.common import peak_bf16_flops

    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results.json"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "vqvae.ch=32",
                "vqvae.ch_mult=[1, 1, 2, 2]", "vqvae.num_res_blocks=1", "vqvae.attn_resolutions=[]", "vqvae.n_embed=64"]
        bench_train.main(batch=2, steps=1, device="cpu", bf16=True, compile_net=False, configs="a,c", set_=tiny,
                         peak_tflops=0.0, name="")
        bench_samplers.main(config=bench_samplers.REPO / "configs" / "kth.yaml", store=None, ckpt=None, interp="ours",
                            set_=tiny[:4] + ["data.frames_per_sample=11"], steps="3", solvers="euler_maruyama", videos=1,
                            samples=2, threads=0, device="cpu", bf16=True, name="")
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "results.json").read_text())
    train = results["train_step_cpu_bf16"]
    assert train["bf16"] and train["flops_per_step"] > 0 and "b_cached_loader_step_s" not in train
    assert train["a_samples_per_s"] > 0 and train["c_samples_per_s"] > 0 and train["c_encoder_flops_per_step"] > 0
    row = results["samplers_ours_bf16"]["results"][0]
    assert row["nfe_per_frame"] == 2 and row["generated_frames_per_s"] > 0
    assert (tmp_path / "results.md").is_file()
    assert peak_bf16_flops("NVIDIA H200")[0] == 989e12 and peak_bf16_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert peak_bf16_flops("Some GPU")[0] is None


def test_contention_table_in_the_summary() -> None:
    study = {"setting": "s", "results": [{"threads": "1", "omp_wait_policy": "unset", "torch_threads": 1, "encode_quiet_s": 10.0,
                                          "encode_busy_s": 20.0, "encode_ratio": 2.0, "step_quiet_s": 0.2,
                                          "step_busy_s": 0.3, "step_ratio": 1.5}]}
    table = markdown_table({"thread_contention": study})
    assert "**thread_contention** (s)" in table
    assert "| 1 | unset | 1 |  | 10.0 | 20.0 | 2.0 |  | 0.2 | 0.3 | 1.5 |  |  |" in table  # an older record: no range
