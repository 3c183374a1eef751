"""Metrics: the metric registry, CLIP loading (local, bundled, hub offline), CLIP score, FID, teacher error."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import stand_ins
from prunekit import metrics
from prunekit.shapes.data import sample
from prunekit.errors import PrunekitError
from prunekit.models import ASSETS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return stand_ins.save_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def shapes_batch() -> tuple[list[Image.Image], list[str]]:
    images, attrs = zip(*(sample("heldout", index) for index in range(6)))
    return list(images), [a.caption() for a in attrs]


def test_known_metrics():
    assert metrics.check_metrics("clip,fid, teacher") == ["clip", "fid", "teacher"]
    assert metrics.check_metrics(["attributes"]) == ["attributes"]
    assert list(metrics.METRICS) == ["clip", "fid", "teacher", "attributes"]


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(PrunekitError, match="unknown metric 'lpips': choose from clip, fid, teacher, attributes"):
        metrics.check_metrics("clip,lpips")


def test_clip_score_is_torchmetrics_formula(clip_dir, shapes_batch):
    images, captions = shapes_batch
    model, processor = metrics.load_clip(clip_dir)
    with torch.no_grad():
        image_inputs = processor(images=images, return_tensors="pt")
        text_inputs = processor(text=captions, return_tensors="pt", padding=True)
        image_features = model.get_image_features(**image_inputs).pooler_output
        text_features = model.get_text_features(**text_inputs).pooler_output
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features)
    expected = max(float(100 * cosine.mean()), 0.0)
    assert metrics.clip_score(images, captions, clip_dir) == pytest.approx(expected, abs=1e-4)


def test_clip_score_ignores_batch_size_and_reuses_a_metric(clip_dir, shapes_batch):
    images, captions = shapes_batch
    metric = metrics.clip_score_metric(clip_dir)
    whole = metrics.clip_score(images, captions, metric, batch_size=64)
    assert metrics.clip_score(images, captions, metric, batch_size=4) == pytest.approx(whole, abs=1e-4)
    assert metrics.clip_score(images[:2], captions[:2], metric) != pytest.approx(whole, abs=1e-6)  # state was reset


def test_clip_processor_is_the_saved_one(clip_dir):
    _, processor = metrics.load_clip(clip_dir)
    assert list(processor.image_processor.image_mean) == [0.5] * 3  # not CLIP's default normalisation


def test_bad_clip_names(tmp_path):
    with pytest.raises(PrunekitError, match="holds no loadable CLIP model"):
        metrics.load_clip(tmp_path)
    with pytest.raises(PrunekitError, match="holds no loadable CLIP model and processor"):
        metrics.load_clip(stand_ins.save_clip(tmp_path / "no-processor", with_processor=False))
    with pytest.raises(PrunekitError, match="no CLIP model 'not/a/model'"):
        metrics.load_clip("not/a/model")


@pytest.mark.skipif(not (ASSETS / "tiny-clip").is_dir(), reason="the bundled tiny-clip is not built yet")
def test_bundled_tiny_clip_prefers_matching_captions(shapes_batch):
    images, captions = shapes_batch
    metric = metrics.clip_score_metric("tiny-clip")
    matched = metrics.clip_score(images, captions, metric)
    assert matched > metrics.clip_score(images, captions[1:] + captions[:1], metric)


OFFLINE_PROBE = textwrap.dedent("""
    import time
    from prunekit.errors import PrunekitError
    from prunekit.metrics import DEFAULT_CLIP, load_clip
    start = time.perf_counter()
    try:
        load_clip(DEFAULT_CLIP)
    except PrunekitError as error:
        print(f"{time.perf_counter() - start:.2f}", error)
""")


@pytest.mark.parametrize("offline_flag", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_hub_clip_offline_fails_fast_and_clearly(tmp_path, offline_flag):
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path), PYTHONPATH=str(ROOT))  # an empty cache
    if offline_flag:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: as good as no network
    done = subprocess.run([sys.executable, "-c", OFFLINE_PROBE], env=env, capture_output=True, text=True, timeout=120)
    seconds, _, message = done.stdout.strip().partition(" ")
    assert message, done.stderr[-2000:]
    assert float(seconds) < 10
    assert "\n" not in message and "openai/clip-vit-large-patch14" in message and "local directory" in message


def test_fid(clip_dir, shapes_batch):
    images, _ = shapes_batch
    same = metrics.fid(images, images, clip_dir)
    assert same["features"] in ("inception-v3", f"clip:{clip_dir}")
    assert abs(same["fid"]) < 1e-3
    blank = [Image.new("RGB", (64, 64), (128, 128, 128 + i)) for i in range(6)]
    assert metrics.fid(blank, images, clip_dir)["fid"] > 1.0
    with pytest.raises(ValueError):
        metrics.fid(images[:1], images, clip_dir)


def test_teacher_error(shapes_batch):
    images, _ = shapes_batch
    latents = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    same = metrics.teacher_error(latents, latents.clone(), images, [image.copy() for image in images])
    assert same["latent_mse"] == 0 and same["ssim"] == pytest.approx(1.0, abs=1e-3)  # float32 variances
    worse = metrics.teacher_error(latents, latents + 0.5, images, images[::-1])
    assert worse["latent_mse"] == pytest.approx(0.25) and worse["ssim"] < 1 and 0 < worse["psnr"] < 40
    with pytest.raises(ValueError):
        metrics.teacher_error(latents, latents[:2], images, images)
