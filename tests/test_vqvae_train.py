"""Demo VQVAE training: a few steps run, checkpoint, resume exactly, export a loadable flat state dict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.run.config import AutoencoderConfig, Config, VQVAEConfig
from pipeline.data.shards import ShardWriter
from pipeline.vqvae import build_vqvae
from pipeline.demo.vqvae_recipe import foreground_weights, frame_psnr, kmeans_codebook, reconstruction_loss
from pipeline.demo.vqvae_train import LATEST, TrainError, app, train_autoencoder


def _write_split(root: Path, split: str, videos: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with ShardWriter(root / split) as writer:
        for v in range(videos):
            frames = np.full((4, size, size, 3), 20, dtype=np.uint8)
            for t in range(4):
                y, x = rng.integers(0, size - 8, size=2)
                frames[t, y : y + 8, x : x + 8] = rng.integers(0, 256, size=3, dtype=np.uint8)
            writer.add(frames, source=f"{split}-{v}")


def _config(tmp_path: Path, name: str, **overrides) -> Config:
    cfg = Config()
    cfg.data.root = str(tmp_path / "data")
    cfg.data.image_size = 32
    cfg.vqvae = VQVAEConfig(arch="taming", ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], n_embed=16,
                            ckpt=str(tmp_path / name / "vq.pt"), batch_size=8)
    settings = dict(steps=6, batch_size=4, lr=1e-3, warmup_steps=1, crop_size=16, crop_candidates=2, full_frame_steps=2,
                    quantize_after=2, kmeans_frames=8, restart_every=2, checkpoint_every=2, log_every=1,
                    out_dir=str(tmp_path / name / "train"), export=str(tmp_path / name / "vq.pt"), val_videos=1, bf16=False,
                    threads=1)
    settings.update(overrides)
    cfg.autoencoder = AutoencoderConfig(**settings)
    cfg.autoencoder.validate()
    cfg.vqvae.validate()
    return cfg


@pytest.fixture
def data(tmp_path):
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        _write_split(tmp_path / "data", split, videos=3, size=32, seed=seed)
    return tmp_path


def test_train_checkpoint_resume_export(data):
    tmp_path = data
    quiet = dict(log=lambda _: None, progress=False)

    # interrupted after 3 steps, then resumed to the end ...
    cfg = _config(tmp_path, "resumed")
    summary = train_autoencoder(cfg, until_step=3, **quiet)
    assert summary["steps"] == 3 and "export" not in summary
    latest = Path(cfg.autoencoder.out_dir) / LATEST
    assert torch.load(latest, weights_only=True)["step"] == 3
    assert not Path(cfg.vqvae.ckpt).exists()
    summary = train_autoencoder(cfg, **quiet)
    assert summary["steps"] == 6 and Path(summary["export"]).exists()
    assert np.isfinite(summary["val_psnr"])

    # ... equals one uninterrupted run
    ref_cfg = _config(tmp_path, "straight")
    train_autoencoder(ref_cfg, **quiet)
    a = torch.load(cfg.vqvae.ckpt, weights_only=True)
    b = torch.load(ref_cfg.vqvae.ckpt, weights_only=True)
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

    # the export is a flat state dict that the frozen loader takes; the record sits beside it
    vq = build_vqvae(cfg.vqvae, 32)
    assert vq.encode(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 16, 16)
    record = json.loads(Path(cfg.vqvae.ckpt).with_suffix(".json").read_text())
    assert record["summary"]["steps"] == 6

    # finished: a rerun does nothing, also without the training directory (the export's record suffices)
    assert train_autoencoder(cfg, **quiet)["up_to_date"]
    latest.rename(latest.with_suffix(".bak"))
    assert train_autoencoder(cfg, **quiet)["up_to_date"]
    latest.with_suffix(".bak").rename(latest)
    # a changed recipe refuses to resume
    with pytest.raises(TrainError, match="--fresh"):
        train_autoencoder(_config(tmp_path, "resumed", lr=5e-4), **quiet)


def test_float16_export_and_psnr_cli(data, tmp_path):
    cfg = _config(tmp_path, "half", steps=3, quantize_after=1, full_frame_steps=1, export_float16=True, val_videos=0,
                  export="")
    train_autoencoder(cfg, log=lambda _: None, progress=False)
    assert not Path(cfg.vqvae.ckpt).exists()  # the config's (shipped) checkpoint is never overwritten unasked
    stored = torch.load(Path(cfg.autoencoder.out_dir) / "vqvae.pt", weights_only=True)
    assert stored["encoder.conv_in.weight"].dtype == torch.float16
    config_file = tmp_path / "cfg.yaml"
    record = cfg.to_dict()
    if "model" in record:  # the flow network's latent grid must match this VQVAE's (16 x 16 for 32 px, factor 2)
        record["model"]["state_res"] = [16, 16]
    config_file.write_text(yaml.safe_dump(record))
    result = CliRunner().invoke(app, ["psnr", "--trained", "--config", str(config_file), "--videos", "1"])
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output and "dB" in result.output


def test_foreground_weights_cover_the_object_and_its_rim():
    x = torch.full((1, 3, 16, 16), -0.8)
    x[0, :, 6:9, 6:9] = torch.tensor([0.8, -0.5, 0.2])[:, None, None]  # a 3x3 object on a plain background
    w = foreground_weights(x, 4.0, radius=2)[0, 0]
    assert w.shape == (16, 16) and set(w.unique().tolist()) == {1.0, 5.0}
    assert bool((w[4:11, 4:11] == 5.0).all()) and float(w.sum()) == 16 * 16 + 4.0 * 7 * 7  # 3x3 dilated by 2 = 7x7


def test_reconstruction_loss_weights_object_pixels():
    ae = AutoencoderConfig(l1_weight=0.2, mse_weight=1.0)
    x = torch.full((2, 3, 16, 16), -0.8)
    x[:, :, 2:5, 2:5] = 0.6
    y_background, y_object = x.clone(), x.clone()
    y_background[:, :, 12, 12] += 0.5  # one background pixel wrong
    y_object[:, :, 3, 3] += 0.5  # one object pixel wrong, by as much
    assert torch.isclose(reconstruction_loss(x, y_background, ae), reconstruction_loss(x, y_object, ae))
    weighted = AutoencoderConfig(l1_weight=0.2, mse_weight=1.0, foreground_weight=9.0)
    assert float(reconstruction_loss(x, y_object, weighted)) > 5 * float(reconstruction_loss(x, y_background, weighted))
    assert torch.isclose(reconstruction_loss(x, x, weighted), torch.zeros(()))


def test_kmeans_and_psnr_helpers():
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(50, 4) * 0.01 + c for c in (torch.zeros(4), torch.ones(4) * 3)])
    centres = kmeans_codebook(points, 2, gen)
    assert sorted(round(float(c.mean())) for c in centres) == [0, 3]
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1] += 0.2  # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB
    p = frame_psnr(x, y)
    assert p[0] == pytest.approx(10 * np.log10(4 / 1e-10)) and p[1] == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize("beta", [0.25, 0.5])
def test_quantiser_loss_is_the_standard_form_beta_on_the_commitment(tmp_path, beta):
    """The trainer's quantiser loss is codebook ||e - sg[z]||^2 + beta * commitment ||sg[e] - z||^2 (standard
    VQ-VAE, taming's legacy=False), with ``autoencoder.beta``: the encoder output z gets beta * 2 (z - e) / N,
    the code vectors the full 2 (e - z) / N. Taming's legacy=True form would give z the full share and e beta."""
    from pipeline.demo.vqvae_recipe import trainable_model

    model = trainable_model(_config(tmp_path, "q", beta=beta))
    torch.manual_seed(0)
    z = torch.randn(2, model.embed_dim, 4, 4, requires_grad=True)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(torch.randn_like(model.quantize.embedding.weight))
    z_q, loss, idx = model.quantize(z)
    codes = model.quantize.embedding.weight
    e = codes[idx].permute(0, 3, 1, 2).detach()  # the nearest code vector at each position
    n = z.numel()
    assert torch.allclose(loss, (1 + beta) * ((z - e) ** 2).mean())  # the value does not tell the forms apart
    loss.backward()
    # encoder side: beta times the commitment gradient
    assert torch.allclose(z.grad, beta * 2 * (z - e).detach() / n, atol=1e-7)
    # codebook side: the full codebook gradient, summed over the positions that chose each code
    flat = (2 * (e - z.detach()) / n).permute(0, 2, 3, 1).reshape(-1, model.embed_dim)
    expected = torch.zeros_like(codes).index_add_(0, idx.flatten(), flat)
    assert torch.allclose(codes.grad, expected, atol=1e-7)
    assert torch.equal(z_q, z + (e - z).detach())  # straight-through output: the decoder's gradient reaches z as is


def test_an_unreadable_export_record_is_said_and_means_train_again(tmp_path: Path) -> None:
    """The export's JSON record is derived: garbage in it is named in one line and counts as no match."""
    from pipeline.demo.vqvae_train import _export_matches

    target = tmp_path / "vqvae.pt"
    target.write_bytes(b"weights")
    target.with_suffix(".json").write_text("{not json")
    lines: list[str] = []
    assert not _export_matches(target, {"seed": 0}, lines.append)
    assert len(lines) == 1 and str(target.with_suffix(".json")) in lines[0] and "retraining" in lines[0]
