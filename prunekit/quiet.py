"""Keeps the terminal for prunekit's own output: no library warnings, logs or loading bars.

The command line calls `quiet_libraries()` before anything imports diffusers or transformers; the analysis
scripts call it too.
"""
from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Silence third-party warnings, library logs below errors and the libraries' own progress bars."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard's TensorFlow probe
    warnings.filterwarnings("ignore")  # deprecation and user warnings of the libraries; prunekit reports its own
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # their errors reach the user as prunekit's
    transformers_logging.set_verbosity(transformers_logging.CRITICAL)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
