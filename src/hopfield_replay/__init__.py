"""hopfield-replay: Hopfield-energy-ranked replay for continual learning of diffusion models."""

__version__ = "0.1.0"
