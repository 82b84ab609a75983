"""Runs a researcher can steer: extend a run, warm-start one, resume it with another process count, accumulate
gradients over micro-batches, keep a bounded number of checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pipeline.stages.train as train_module
from pipeline.core.model import build_model
from pipeline.run.checkpoints import load_flow_checkpoint
from pipeline.run.config import TrainConfig, load_config
from pipeline.run.records import sha256_file
from pipeline.stages.train import TrainingError, train
from pipeline.stages.train_plan import checkpoints_to_delete, lr_at, replan, start_plan

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensor work: one thread is faster on 2 shared cores

REPO = Path(__file__).resolve().parent.parent
SMALL_NET = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
             "train.sample_every=0", "train.val_every=0"]
QUIET = dict(log=lambda _: None)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _sets(overrides: list[str], *extra: str) -> list[str]:
    return [*overrides, *SMALL_NET, *extra]


def _cfg(overrides: list[str], *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", _sets(overrides, *extra), smoke=True)


def _latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)


def _record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _training_steps(run: Path) -> list[int]:
    return [row["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in (row := json.loads(line))]


# ---------------------------------------------------------------------------------------------------------------
# 1. Extending a run
# ---------------------------------------------------------------------------------------------------------------

EXTEND = ["train.latest_every=5", "train.save_every=10", "train.log_every=5", "train.ema_start=8",
          "train.schedule=constant", "interpolant.kind=linear"]


def test_a_finished_run_extended_continues_as_if_it_had_been_planned_longer(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    straight, run = tmp_path / "runs" / "straight", tmp_path / "runs" / "extended"
    train(_cfg(overrides, *EXTEND, "train.steps=40"), store, straight, **QUIET)
    train(_cfg(overrides, *EXTEND, "train.steps=20"), store, run, **QUIET)
    lines: list[str] = []
    assert train(_cfg(overrides, *EXTEND, "train.steps=40"), store, run, overrides=["train.steps=40"],
                 log=lines.append) == "trained"
    assert any(f"extending {run} from 20 to 40 steps (it has trained 20)" in line for line in lines), lines
    assert any(f"resuming {run} at step 20: 40 steps" in line for line in lines), lines
    record, ckpt = _record(run), _latest(run)
    assert record["steps_plan"] == [{"from_step": 0, "steps": 20}, {"from_step": 20, "steps": 40}]
    assert record["step"] == 40 and record["args"]["set"] == ["train.steps=40"]  # later stages reapply the new target
    assert ckpt["sampler"]["next_step"] == 40 and ckpt["sampler"]["samples"] == 40 * ckpt["sampler"]["batch_size"]
    assert ckpt["steps_plan"] == record["steps_plan"]
    assert _training_steps(run) == list(range(5, 41, 5))  # no step logged twice, none skipped
    # the same batches, t and noise per step as a run planned for 40 steps from the start (constant lr)
    for part in ("model", "ema"):
        for name, tensor in _latest(straight)[part].items():
            assert torch.equal(tensor, ckpt[part][name]), (part, name)
    assert train(_cfg(overrides, *EXTEND, "train.steps=40"), store, run, **QUIET) == "up to date"
    with pytest.raises(TrainingError, match=r"has trained 40 steps, more than train\.steps=30: a run is extended, never"):
        train(_cfg(overrides, *EXTEND, "train.steps=30"), store, run, **QUIET)
    with pytest.raises(TrainingError, match=r"changed: model\.inner_dim\. Rerun with --force"):
        train(_cfg(overrides, *EXTEND, "train.steps=60", "model.inner_dim=48"), store, run, **QUIET)
    assert _record(run)["step"] == 40  # nothing was trained by the refusals


def test_the_cosine_decay_is_replanned_from_the_step_of_an_extension() -> None:
    t = TrainConfig(steps=100, warmup_steps=10, schedule="cosine", lr=1e-3, min_lr=1e-6)
    planned = [lr_at(s, t, start_plan(100)) for s in range(100)]
    assert planned == [lr_at(s, t) for s in range(100)]  # a plan of one entry is the schedule of train.steps
    plan = replan(start_plan(100), 60, 200)
    assert plan == [{"from_step": 0, "steps": 100}, {"from_step": 60, "steps": 200}]
    extended = [lr_at(s, t, plan) for s in range(200)]
    assert extended[:61] == planned[:61]  # the past is unchanged and the rate continuous at the extension
    assert all(a >= b for a, b in zip(extended[60:], extended[61:])) and extended[60] > 10 * extended[199]
    assert extended[199] == pytest.approx(t.min_lr, abs=1e-7)
    finished = replan(start_plan(100), 100, 150)  # a finished cosine run goes on at its final rate
    assert {lr_at(s, t, finished) for s in range(100, 150)} == {t.min_lr}
    assert replan(plan, 60, 300) == [{"from_step": 0, "steps": 100}, {"from_step": 60, "steps": 300}]  # not stacked
    assert replan(plan, 80, 200) is plan  # the target unchanged: nothing to record
    constant = TrainConfig(steps=100, warmup_steps=10, schedule="constant", lr=1e-3)
    assert [lr_at(s, constant, plan) for s in range(200)] == [lr_at(s, constant) for s in range(200)]


# ---------------------------------------------------------------------------------------------------------------
# 2. Warm start
# ---------------------------------------------------------------------------------------------------------------

class _Stop(BaseException):
    """Ends a training run at its first update (nothing of the stage catches it)."""


def _first_step(cfg, store: str, run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The weights a run holds when its first update begins: model (as train_step receives it) and EMA."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    warm_start = train_module._warm_start

    def capture_ema(path, source, model, ema, *rest):
        warm_start(path, source, model, ema, *rest)
        seen["ema"] = {k: v.clone() for k, v in ema.state_dict().items()}

    def capture_model(net, model, *rest):
        seen["model"] = {k: v.clone() for k, v in model.state_dict().items()}
        raise _Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "_warm_start", capture_ema)
        patch.setattr(train_module, "train_step", capture_model)
        with pytest.raises(_Stop):
            train(cfg, store, run, **QUIET)
    return seen


def _outputs(cfg, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The network's output on fixed inputs with ``weights``."""
    net = build_model(cfg.model).eval()
    net.load_state_dict(weights)
    shape = (cfg.model.state_size, *cfg.model.state_res)
    gen = torch.Generator().manual_seed(5)
    z, ref, ctx = (torch.randn(3, *shape, generator=gen) for _ in range(3))
    with torch.no_grad():
        return net(z, torch.tensor([0.2, 0.5, 0.9]), ref, ctx, torch.tensor([1.0, 2.0, 3.0]))


def test_a_warm_start_from_a_run_begins_with_its_weights_and_records_it(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    runs = tmp_path / "runs"
    base = ["train.steps=12", "train.latest_every=6", "train.save_every=12", "train.ema_start=3"]
    train(_cfg(overrides, *base), store, runs / "source", **QUIET)
    source = _latest(runs / "source")
    cfg = _cfg(overrides, "train.steps=4", "train.init_from=source", "train.lr=1e-3")
    first = _first_step(cfg, store, runs / "tuned")
    assert torch.equal(_outputs(cfg, first["model"]), _outputs(cfg, source["model"]))
    assert torch.equal(_outputs(cfg, first["ema"]), _outputs(cfg, source["ema"]))
    assert not torch.equal(_outputs(cfg, source["model"]), _outputs(cfg, source["ema"]))  # two different starts
    recorded = _record(runs / "tuned")["inputs"]["train"]["init_from"]
    assert recorded == {"source": "source", "sha256": sha256_file(runs / "source" / "checkpoints" / "latest.pt")}
    assert train(cfg, store, runs / "tuned", **QUIET) == "trained"  # resumes its own run, not the source again
    assert _latest(runs / "tuned")["opt"]["state"][0]["step"] == 4  # a fresh optimizer: 4 updates, not 16
    with pytest.raises(TrainingError, match=r"train\.init_from=nowhere: run nowhere has no checkpoint"):
        train(_cfg(overrides, "train.init_from=nowhere"), store, runs / "other", **QUIET)
    with pytest.raises(TrainingError, match=r"cannot warm-start from itself"):
        train(_cfg(overrides, "train.init_from=other"), store, runs / "other", **QUIET)
    with pytest.raises(TrainingError, match=r"does not fit this run's model settings"):
        train(_cfg(overrides, "train.init_from=source", "model.inner_dim=48"), store, runs / "wider", **QUIET)


def test_a_warm_start_from_a_published_flow_checkpoint(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    cfg = _cfg(overrides, "train.steps=2")
    torch.manual_seed(123)
    weights, averaged = build_model(cfg.model).state_dict(), build_model(cfg.model).state_dict()
    published = tmp_path / "kth_model_ours.pt"  # the authors' layout: DDP and wrapper prefixes, an embedded autoencoder
    torch.save({"model": {**{f"module.vector_field_regressor.{k}": v for k, v in weights.items()},
                          "module.ae.encoder.conv_in.weight": torch.zeros(3)},
                "ema": {f"vector_field_regressor.{k}": v for k, v in averaged.items()}, "step": 250_000}, published)
    assert load_flow_checkpoint(published).kind == "published"
    cfg = _cfg(overrides, "train.steps=2", f"train.init_from={published}", "train.latent_norm=none")  # theirs: raw
    first = _first_step(cfg, store, tmp_path / "runs" / "tuned")
    assert torch.equal(_outputs(cfg, first["model"]), _outputs(cfg, weights))
    assert torch.equal(_outputs(cfg, first["ema"]), _outputs(cfg, averaged))
    assert _record(tmp_path / "runs" / "tuned")["inputs"]["train"]["init_from"]["sha256"] == sha256_file(published)


# ---------------------------------------------------------------------------------------------------------------
# 3. Resume with another process count
# ---------------------------------------------------------------------------------------------------------------

def _cli(overrides: list[str], store: str, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    sets = [arg for item in _sets(overrides, *extra) for arg in ("--set", item)]
    return [*(launcher or [sys.executable]), str(REPO / "train_latent.py"), "--config", str(REPO / "configs" / "demo.yaml"),
            "--smoke", *sets, "--store", store, "--out", str(out)]


def test_a_two_process_run_interrupted_resumes_with_one_process(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    settings = ["train.steps=6", "train.latest_every=3", "train.save_every=3", "train.batch_size=8",
                "interpolant.kind=linear", "train.ema_start=0",
                "train.lr=1.0e-3", "train.grad_clip=1.0"]  # unclipped, AdamW turns float-order noise in the ~0
                                                           # gradients of attention's key biases into lr-sized steps
    result = subprocess.run(_cli(overrides, store, tmp_path / "two", *settings, launcher=TORCHRUN), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two" / "demo-smoke" / "runs" / "linear"
    # The state a kill -9 after step 3's checkpoint leaves: latest.pt of step 3, run.json at step 3.
    shutil.copytree(tmp_path / "two", tmp_path / "cut")
    cut = tmp_path / "cut" / "demo-smoke" / "runs" / "linear"
    shutil.copy(cut / "checkpoints" / "0000003.pt", cut / "checkpoints" / "latest.pt")
    (cut / "checkpoints" / "0000006.pt").unlink()
    (cut / "run.json").write_text(json.dumps({**_record(cut), "step": 3}))
    result = subprocess.run(_cli(overrides, store, tmp_path / "cut", *settings), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {cut} at step 3: 6 steps, global batch 8 over 1 process(es)" in result.stdout
    assert "resuming with 1 process(es) where the last launch had 2" in result.stdout
    ckpt = _latest(cut)
    assert ckpt["sampler"] == {"kind": "GlobalTripletStream", "next_step": 6, "samples": 48, "batch_size": 8, "seed": 0,
                               "world_size": 1}
    worlds = [{"from_step": 0, "processes": 2}, {"from_step": 3, "processes": 1}]
    assert ckpt["world_sizes"] == worlds and _record(cut)["world_sizes"] == worlds
    # The same global batches: equal to the uninterrupted two-process run up to float summation order (which AdamW
    # amplifies where gradients are ~0), far closer than the three steps moved the weights.
    at3, straight = torch.load(two / "checkpoints" / "0000003.pt", weights_only=True)["model"], _latest(two)["model"]
    ratios = {name: float((ckpt["model"][name] - tensor).abs().max() / (tensor - at3[name]).abs().max().clamp_min(1e-12))
              for name, tensor in straight.items()}
    assert max(ratios.values()) < 1e-2, sorted(ratios.items(), key=lambda kv: -kv[1])[:3]


# ---------------------------------------------------------------------------------------------------------------
# 4. Gradient accumulation
# ---------------------------------------------------------------------------------------------------------------

def test_accumulated_micro_batches_equal_one_full_step_with_one_and_two_processes(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    settings = {}
    for kind in ("linear", "ours"):
        common = _sets(overrides, "train.batch_size=8", "train.grad_clip=0", f"interpolant.kind={kind}")
        settings[f"{kind}-full"] = common  # one pass of 8 (of 4 per process with two)
        settings[f"{kind}-micro4"] = [*common, "train.micro_batch=4"]  # 2 passes of 4 (one per process with two)
        settings[f"{kind}-micro"] = [*common, "train.micro_batch=2"]  # 4 (2 per process) passes of 2
    script = [str(REPO / "tests" / "step_grads.py")]
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for launcher, out in (([sys.executable], one), (TORCHRUN, two)):
        result = subprocess.run([*launcher, *script, str(out), store, json.dumps(settings)], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    for kind in ("linear", "ours"):
        reference, loss = one[f"{kind}-full"]
        assert one[f"{kind}-micro"][1] == pytest.approx(loss, rel=1e-5) == one[f"{kind}-micro4"][1]
        for grads in (one[f"{kind}-micro4"][0], one[f"{kind}-micro"][0], two[f"{kind}-full"][0], two[f"{kind}-micro"][0]):
            for name, grad in reference.items():
                assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6 * grad.abs().max()), (kind, name)
        assert any(g.abs().max() > 0 for g in reference.values())


def test_a_micro_batch_must_divide_the_share_of_a_process(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    with pytest.raises(TrainingError, match=r"train\.micro_batch=3 does not divide the 8 examples per process"):
        train(_cfg(overrides, "train.batch_size=8", "train.micro_batch=3"), store, tmp_path / "run", **QUIET)


# ---------------------------------------------------------------------------------------------------------------
# 5. Checkpoint retention
# ---------------------------------------------------------------------------------------------------------------

def test_retention_keeps_the_newest_and_the_marked_checkpoints(tiny_store, tmp_path: Path) -> None:
    _, overrides, store = tiny_store
    run = tmp_path / "run"
    train(_cfg(overrides, "train.steps=22", "train.save_every=2", "train.latest_every=2", "train.keep=2",
               "train.keep_every=8"), store, run, **QUIET)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["0000008.pt", "0000016.pt", "0000020.pt", "0000022.pt", "latest.pt"]
    assert checkpoints_to_delete(list(range(2, 23, 2)), keep=0, keep_every=0) == []  # 0 keeps every one
    assert checkpoints_to_delete([10, 20, 30], keep=1, keep_every=0) == [10, 20]
    assert checkpoints_to_delete([10, 20, 30], keep=5, keep_every=0) == []
