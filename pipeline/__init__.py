"""Latent stochastic-interpolant video forecasting: shards -> Zarr latents -> flow training -> forecasts -> metrics."""

__version__ = "0.1.0"
