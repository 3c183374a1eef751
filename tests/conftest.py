"""Shared fixtures."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import stand_ins
import torch

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (torch's thread pool costs more than it saves at this size)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    """A saved random stand-in pipeline (tests/stand_ins.py)."""
    directory = tmp_path_factory.mktemp("pipe")
    stand_ins.pipeline().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    """A saved random stand-in SDXL pipeline (tests/stand_ins.py)."""
    directory = tmp_path_factory.mktemp("sdxl")
    stand_ins.sdxl_pipeline().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    """A saved random stand-in SD3 pipeline without T5 (tests/stand_ins.py)."""
    directory = tmp_path_factory.mktemp("sd3")
    stand_ins.sd3_pipeline().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A saved random stand-in tiny CLIP."""
    return str(stand_ins.save_clip(tmp_path_factory.mktemp("clip")))


@pytest.fixture
def analysis_script(monkeypatch):
    """Loads an analyses/ script as a module; the folder goes on sys.path, as it does when the script is run."""
    monkeypatch.syspath_prepend(str(ANALYSES))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ANALYSES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def generates_offline(tmp_path):
    """Checks that a bundled pipeline folder loads and draws a 64x64 image with plain diffusers in a fresh
    interpreter, the hub offline and its cache empty: `load` and `call` add keyword arguments (", k=v"), `checks`
    lines of Python run after."""
    def check(pipeline_class: str, folder, load: str = "", call: str = "", checks: tuple[str, ...] = ()) -> None:
        code = "\n".join([
            f"import torch; from diffusers import {pipeline_class}",
            f"pipe = {pipeline_class}.from_pretrained({str(folder)!r}, local_files_only=True{load})",
            "pipe.set_progress_bar_config(disable=True)",
            "image = pipe('a large red circle in the center on a white background', num_inference_steps=2,"
            f" generator=torch.Generator().manual_seed(0){call}).images[0]",
            "assert image.size == (64, 64), image.size", *checks])
        env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    return check
