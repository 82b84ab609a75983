"""Latent stochastic-interpolant video forecasting: shards -> Zarr latents -> flow training -> forecasts -> metrics."""

__version__ = "0.1.0"

# Imported first, before any pipeline module loads torch (and with it OpenMP): it sets how idle threads wait.
from pipeline.run import threads  # noqa: E402,F401
