"""prunekit: find which blocks of a diffusion U-Net can go, plan a smaller U-Net, retrain it by distillation."""
from prunekit.errors import PrunekitError

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__"]
