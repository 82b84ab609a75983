#!/usr/bin/env python
"""Stage 3: forecast the test videos with a trained flow into <out>/<data.name>/runs/<run>/forecasts.zarr (+ GIF/MP4).

    python forecast.py --config configs/demo.yaml --interp ours
    python forecast.py --config configs/demo.yaml --run-name lr5e-4          # a named run, as it was trained
    python forecast.py --config configs/kth.yaml --run-name published --interp ours --ckpt checkpoints/kth_model_ours.pt
    torchrun --nproc_per_node=2 forecast.py --config configs/demo.yaml  # disjoint videos per rank
"""

from pipeline.run.commands import forecast, script

app = script(forecast)  # the same command as `lip forecast` (pipeline/run/commands.py)

if __name__ == "__main__":
    app()
