"""Multi-node through the Makefile, on one machine: two ``make`` processes are two torchrun "nodes".

Both run the same command with ``NNODES=2 RDZV=127.0.0.1:<port>`` (one process per node, gloo on CPU), as one
would on two hosts. Encoding must give the one-process store bit for bit, and training the checkpoint of a
single-node run of the same world size (2) bit for bit: the data stream of rank k is a function of
(seed, k, step) and the gradient all-reduce of two ranks is one addition, so which "node" holds which rank does
not matter. Every process runs with one OpenMP thread: the thread count changes the summation order of the
convolutions (torchrun sets one thread for several processes per node, not for one), so the references do too.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import numpy as np
import torch
import zarr

from conftest import PYTHON, REPO, build_tiny

FAST = ["model.inner_dim=32", "model.heads=2", "model.depth=1", "model.mid_depth=1", "train.wandb_mode=disabled",
        "train.steps=4", "train.latest_every=2", "train.sample_every=0",
        # the recipe these equalities were calibrated at (configs/demo.yaml's before issue 29: clipped, lr 1e-3, raw)
        "train.batch_size=64", "train.lr=1.0e-3", "train.grad_clip=1.0", "train.latent_norm=none"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _make(*args: str) -> list[str]:
    return ["make", "-s", *args, f"PY={PYTHON}", "STAMP="]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _store_arrays(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {f"{s}/{name}": root[s][name][:] for s in root.group_keys() for name in ("latents", "offsets", "lengths", "done")}


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    tensors = {f"model.{k}": v for k, v in ckpt["model"].items()} | {f"ema.{k}": v for k, v in ckpt["ema"].items()}
    for index, state in ckpt["opt"]["state"].items():
        tensors |= {f"opt.{index}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors


def test_two_nodes_on_one_machine_equal_one_node(tmp_path: Path) -> None:
    cfg, overrides = build_tiny(tmp_path)  # shards built once: the data stage of each node only checks them
    args = f"ARGS={' '.join(f'--set {shlex.quote(s)}' for s in [*overrides, *FAST])}"
    variables = [f"DATA_DIR={cfg.data.root}", args, "RUN=ours"]

    # Reference: encode with one process, train with two on one node (torchrun --standalone).
    single = subprocess.run(_make("train", f"OUT={tmp_path / 'single'}", "NPROC=1", "TRAIN_NPROC=2", *variables),
                            cwd=REPO, capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]

    # Two "nodes": the same command twice, concurrently, meeting at one c10d endpoint.
    node_command = _make("train", f"OUT={tmp_path / 'nodes'}", "NNODES=2", f"RDZV=127.0.0.1:{_free_port()}",
                         "NPROC=1", *variables)
    nodes = [subprocess.Popen(node_command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ONE_THREAD) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300))
    finally:
        for node in nodes:
            node.kill()
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-2000:] + err[-3000:]
    stdout, stderr = "".join(out for out, _ in outputs), "".join(err for _, err in outputs)
    # each stage ran as one world of two ranks (one per node: each node launches one process); rank 0 reports
    assert "encode (rank 0/2)" in stderr, stderr[-3000:]
    assert "global batch 64 over 2 process(es)" in stdout and "encode: created" in stdout, stdout

    # (1) the latent store: bitwise equal to the one-process store (each video is encoded in its own fixed batches)
    one, two = (tmp_path / name / "demo" / "latents.zarr" for name in ("single", "nodes"))
    left, right = _store_arrays(one), _store_arrays(two)
    assert left.keys() == right.keys() and left
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)
    assert zarr.open_group(str(one)).attrs["fingerprint"] == zarr.open_group(str(two)).attrs["fingerprint"]

    # (2) the checkpoint: weights, EMA and optimiser state bitwise equal to the single-node world-size-2 run
    latest = lambda name: tmp_path / name / "demo" / "runs" / "ours" / "checkpoints" / "latest.pt"  # noqa: E731
    reference, multi = _checkpoint_tensors(latest("single")), _checkpoint_tensors(latest("nodes"))
    assert reference.keys() == multi.keys()
    for key in reference:
        assert torch.equal(reference[key], multi[key]), key
    for path in (latest("single"), latest("nodes")):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["step"] == 4 and ckpt["sampler"]["world_size"] == 2
