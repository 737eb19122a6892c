"""echodiff: feature-conditioned cascaded video diffusion for echocardiogram synthesis, experiment-tracked."""

__version__ = "0.1.0"
