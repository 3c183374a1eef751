"""`evaluate` and generation on a tiny random pipeline: result keys, determinism, bad input."""
import json

import numpy as np
import pytest

import stand_ins
from prunekit.shapes import data as shapes
from prunekit.evaluate import evaluate
from prunekit.errors import PrunekitError
from prunekit.generate import generate, image_seeds
from prunekit.card import ModelCard
from prunekit.models import ASSETS, resolve_model

SHAPES_KEYS = {"attribute_accuracy", "clip_score", "clip_score_real", "clip_score_ratio", "num_prompts", "steps",
               "guidance", "seed", "seconds_per_image", "prompts", "clip_model"}
FILE_KEYS = SHAPES_KEYS - {"attribute_accuracy", "clip_score_real", "clip_score_ratio"}
FAST = {"steps": 2, "progress": False}
SHAPES = {"prompts": "shapes", **FAST}  # the stand-in has no card: its default prompt set is everyday


@pytest.fixture(scope="module")
def pipe():
    return stand_ins.pipeline()


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory, pipe):
    directory = tmp_path_factory.mktemp("pipe")
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return stand_ins.save_clip(tmp_path_factory.mktemp("clip"))


def test_shapes_evaluation_from_a_directory(pipe_dir, clip_dir):
    result = evaluate(str(pipe_dir), num_prompts=3, batch_size=2, clip_model=str(clip_dir), **SHAPES)
    assert set(result) == SHAPES_KEYS
    assert list(result["attribute_accuracy"]) == ["color", "shape", "position", "size", "all"]
    assert all(0 <= value <= 1 for value in result["attribute_accuracy"].values())
    assert result["clip_score_real"] >= 0 and result["clip_score"] >= 0
    assert result["clip_score_ratio"] is None or result["clip_score_ratio"] >= 0
    assert (result["num_prompts"], result["steps"], result["guidance"], result["seed"]) == (3, 2, 7.5, 0)
    assert result["seconds_per_image"] > 0 and result["prompts"] == "shapes"
    json.dumps(result, allow_nan=False)


def test_guidance_and_prompts_default_to_the_model_card(pipe, tmp_path, clip_dir, monkeypatch):
    pipe.save_pretrained(tmp_path)
    ModelCard(guidance=2.0, prompts="shapes").write(tmp_path)
    result = evaluate(str(tmp_path), num_prompts=2, clip_model=str(clip_dir), **FAST)
    assert result["guidance"] == 2.0 and result["prompts"] == "shapes" and "attribute_accuracy" in result
    sampled = []
    monkeypatch.setattr("prunekit.evaluate.generate",
                        lambda pipe, texts, seeds, steps, guidance, *args: sampled.append(guidance) or
                        [shapes.render(shapes.parse_caption(text)) for text in texts])
    model = resolve_model(str(tmp_path))
    evaluate(model, num_prompts=1, clip_model=str(clip_dir), pipeline=pipe, **FAST)  # a pipeline made of its parts
    evaluate(model, num_prompts=1, clip_model=str(clip_dir), pipeline=pipe, guidance=7.5, **FAST)
    assert sampled == [2.0, 7.5]


def test_training_combinations_are_scored_like_held_out_ones(pipe, pipe_dir, clip_dir, monkeypatch):
    asked, real = [], shapes.prompts
    monkeypatch.setattr(shapes, "prompts", lambda split, n, seed: asked.append(split) or real(split, n, seed))
    result = evaluate(pipe_dir, pipeline=pipe, prompts="shapes-train", num_prompts=2, clip_model=str(clip_dir), **FAST)
    assert set(result) == SHAPES_KEYS and asked == ["train"] and result["prompts"] == "shapes-train"


def test_results_do_not_depend_on_batch_size(pipe_dir, clip_dir):
    one, three = (evaluate(pipe_dir, num_prompts=3, batch_size=size, clip_model=str(clip_dir), **SHAPES)
                  for size in (1, 3))
    one.pop("seconds_per_image"), three.pop("seconds_per_image")
    assert one == three


def test_generation_does_not_depend_on_batch_size(pipe):
    prompts = ["a small red circle in the center on a gray background"] * 2 + ["a large blue star in the top left"]
    seeds = image_seeds(0, 3)
    batched = generate(pipe, prompts, seeds, steps=2, batch_size=3, progress=False)
    single = generate(pipe, prompts[1:], seeds[1:], steps=2, batch_size=1, progress=False)
    pixels = [np.asarray(image, dtype=int) for image in batched + single]
    # Equal up to the last bit of a pixel: some CPUs' kernels round differently at another batch size (AMD EPYC:
    # one value in 12,000 is one level apart).
    assert all(np.abs(pixels[k] - pixels[k + 2]).max() <= 1 for k in (1, 2))
    assert np.abs(pixels[0] - pixels[1]).mean() > 10  # same prompt, other noise


def test_image_seeds():
    assert image_seeds(0, 5)[:3] == image_seeds(0, 3)
    assert len(set(image_seeds(0, 100))) == 100
    assert not set(image_seeds(0, 10)) & set(image_seeds(1, 10))


def test_prompt_file(tmp_path, pipe_dir, clip_dir):
    path = tmp_path / "prompts.txt"
    path.write_text("a photo of a cat\n\n  a red car  \na bowl of soup\n")
    result = evaluate(pipe_dir, prompts=str(path), num_prompts=2, clip_model=str(clip_dir), **FAST)
    assert set(result) == FILE_KEYS and result["num_prompts"] == 2 and result["prompts"] == str(path)


@pytest.mark.parametrize("content", [None, "\n  \n"], ids=["missing", "empty"])
def test_bad_prompt_file(tmp_path, pipe_dir, clip_dir, content):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PrunekitError, match="prompt"):
        evaluate(pipe_dir, prompts=str(path), clip_model=str(clip_dir), **FAST)


def test_clip_model_is_checked_before_generating(tmp_path, pipe_dir, monkeypatch):
    monkeypatch.setattr("prunekit.evaluate.generate", lambda *args: pytest.fail("generated before the CLIP check"))
    with pytest.raises(PrunekitError, match="CLIP"):
        evaluate(pipe_dir, clip_model=str(tmp_path), **FAST)


def test_unknown_model(clip_dir):
    with pytest.raises(PrunekitError, match="unknown model"):
        evaluate("no-such-model", clip_model=str(clip_dir), **FAST)


@pytest.mark.skipif(not (ASSETS / "tiny-sd").is_dir() or not (ASSETS / "tiny-clip").is_dir(),
                    reason="the bundled tiny-sd and tiny-clip are not built yet")
def test_bundled_tiny_sd():
    result = evaluate("tiny-sd", num_prompts=2, **FAST)
    assert set(result) == SHAPES_KEYS and result["clip_model"] == "tiny-clip"


def test_guidance_sweep_chooses_on_training_prompts_and_records_the_choice(pipe, clip_dir, tmp_path, analysis_script):
    script, model = analysis_script("guidance_sweep"), str(tmp_path / "pipe")
    pipe.save_pretrained(model)
    rows = [{"prompts": "shapes-train", "guidance": 1.5, "all": 0.4, "clip_score_ratio": 0.9},
            {"prompts": "shapes-train", "guidance": 3.0, "all": 0.4, "clip_score_ratio": 0.95},
            {"prompts": "shapes", "guidance": 1.5, "all": 0.9, "clip_score_ratio": 0.99}]
    assert script.choose(rows) == 3.0  # held-out numbers never decide; ties go to the CLIP ratio
    chosen = script.main(["--model", model, "--clip-model", str(clip_dir), "--guidances", "1,3", "--num-prompts", "2",
                          "--steps", "2", "--write", "--out", str(tmp_path / "report")])
    assert ModelCard.read(model).guidance == chosen in (1.0, 3.0)
    table = (tmp_path / "report" / "table.csv").read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("prompts,guidance,color,shape,position,size,all")
