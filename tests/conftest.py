"""Shared fixtures."""
import pytest
import stand_ins
import torch


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
def clip_dir(tmp_path_factory):
    """A saved random stand-in tiny CLIP."""
    return str(stand_ins.save_clip(tmp_path_factory.mktemp("clip")))
