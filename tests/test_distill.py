"""Distillation on a tiny random SD-1-topology pipeline: losses, feature matching, data, training, resume, launch."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

import stand_ins
from prunekit.cli import main
from prunekit.shapes import data as shapes
from prunekit.distill import distill
from prunekit.distill.cache import Encoder, build_cache, cache_key
from prunekit.distill.data import Captioned, EpochSampler, FolderSource, flips, open_source
from prunekit.distill.features import FeatureTaps, feature_pairs
from prunekit.families.unet.features import match_points
from prunekit.distill.losses import Weights, distill_losses, feature_loss
from prunekit.distill.teacher_memo import TeacherMemo
from prunekit.schedules import noising_for
from prunekit.errors import PrunekitError
from prunekit.guidance_tuning import TunedGuidance
from prunekit.card import ModelCard
from prunekit.plan import Plan, make_preset
from prunekit.surgery import build_student

FAST = {"steps": 2, "batch_size": 2, "num_examples": 8, "eval_num_prompts": 0, "progress": False}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TEACHER_GUIDANCE = 3.0  # not SD's 7.5, so that inheriting it shows


def sd1_pipeline() -> StableDiffusionPipeline:
    """The stand-in pipeline with a U-Net of SD-v1's topology (4 stages, 2 layers, mid block), 16x16 latents."""
    pipe = stand_ins.pipeline()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8)
    return StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)


@pytest.fixture(scope="module")
def teacher():
    return sd1_pipeline()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, teacher):
    directory = tmp_path_factory.mktemp("teacher")
    teacher.save_pretrained(directory)
    ModelCard(guidance=TEACHER_GUIDANCE, data="shapes").write(directory)  # a stand-in of a shapes model
    return directory


@pytest.fixture(scope="module")
def plans(tmp_path_factory, teacher):
    directory = tmp_path_factory.mktemp("plans")
    config = dict(teacher.unet.config)
    return {name: str(make_preset(name, "stand-in", config).save(directory / f"{name}.json"))
            for name in ("bk-small", "bk-tiny")}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return stand_ins.save_clip(tmp_path_factory.mktemp("clip"))


def image_folder(directory, count=4, broken=0, metadata="jsonl", size=(80, 64)):
    """`count` shapes images (not square) with captions, and `broken` unreadable files listed too."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        image, attributes = shapes.sample("train", i, 0)
        image.resize(size).save(directory / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": attributes.caption()})
    for i in range(broken):
        (directory / f"broken{i}.png").write_bytes(b"not a png")
        rows.append({"file_name": f"broken{i}.png", "text": "a broken image"})
    if metadata == "jsonl":
        (directory / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        lines = [f"{row['file_name']},{row['text']}\n" for row in rows]
        (directory / "metadata.csv").write_text("file_name,text\n" + "".join(lines))
    return directory


# -- losses -----------------------------------------------------------------------------------------

def test_task_targets_by_prediction_type():
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])

    def target(scheduler):
        return noising_for(scheduler).target(latents, noise, t)
    assert torch.equal(target(DDPMScheduler(prediction_type="epsilon")), noise)
    velocity = DDPMScheduler(prediction_type="v_prediction")
    alpha = velocity.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    assert torch.allclose(target(velocity), expected, atol=1e-6)
    assert torch.equal(target(DDPMScheduler(prediction_type="sample")), latents)
    with pytest.raises(PrunekitError, match="predicts 'flow', which prunekit cannot train"):
        noising_for(DDPMScheduler(prediction_type="flow"))


def test_flow_matching_mixes_latents_and_noise_and_targets_the_velocity():
    from diffusers import FlowMatchEulerDiscreteScheduler

    flow = noising_for(FlowMatchEulerDiscreteScheduler(shift=3.0))
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = flow.sample(3, torch.Generator().manual_seed(0))
    assert ((sigma > 0) & (sigma < 1)).all()
    mixed = flow.noisy(latents, noise, sigma)
    assert torch.allclose(mixed, latents + sigma.view(-1, 1, 1, 1) * (noise - latents), atol=1e-6)
    assert torch.equal(flow.target(latents, noise, sigma), noise - latents)
    assert torch.allclose(flow.model_timestep(sigma), sigma * 1000)
    shifted = flow.sample(10_000, torch.Generator().manual_seed(1)).mean()  # a shift of 3 draws noisier levels
    assert shifted > noising_for(FlowMatchEulerDiscreteScheduler()).sample(10_000, torch.Generator().manual_seed(1)).mean()


def test_losses_on_hand_made_tensors():
    prediction, target, teacher = torch.ones(2, 4), torch.zeros(2, 4), torch.full((2, 4), 3.0)
    student_features = {"s0": torch.full((1, 2), 2.0), "s1": torch.zeros(1, 2)}
    teacher_features = {"t0": torch.ones(1, 2), "t1": torch.full((1, 2), 2.0)}
    pairs = [("s0", "t0"), ("s1", "t1")]
    losses = distill_losses(prediction, target, Weights(1.0, 0.5, 2.0), teacher, student_features, teacher_features,
                            pairs)
    assert (losses.task.item(), losses.out.item(), losses.feat.item()) == (1.0, 4.0, 5.0)  # feat: 1 + 4
    assert losses.total.item() == 1.0 + 0.5 * 4.0 + 2.0 * 5.0
    # LAPTOP-Diff normalisation: each term over the teacher feature's mean square (1 and 4): 1/1 + 4/4
    assert feature_loss(student_features, teacher_features, pairs, "teacher").item() == 2.0
    task_only = distill_losses(prediction, target, Weights(1.0, 0.0, 0.0))
    assert task_only.total.item() == 1.0 and task_only.out.item() == 0.0 and task_only.feat.item() == 0.0
    half = distill_losses(prediction.half(), target.half(), Weights(1.0, 0.0, 0.0))
    assert half.total.dtype == torch.float32


# -- feature matching -------------------------------------------------------------------------------

def test_bk_small_matches_every_stage_to_itself(teacher, plans):
    plan = Plan.load(plans["bk-small"])
    student, _ = build_student(teacher.unet, plan)
    stages = [f"{side}_blocks.{i}" for side in ("down", "up") for i in range(4)]
    assert feature_pairs(student, teacher.unet, plan.weight_map) == [(s, s) for s in stages]


def test_bk_tiny_takes_an_earlier_point_of_equal_shape(teacher, plans):
    plan = Plan.load(plans["bk-tiny"])
    student, _ = build_student(teacher.unet, plan)
    pairs = feature_pairs(student, teacher.unet, plan.weight_map)
    # as BK-SDM: the student's last down stage lost its downsampler, so it meets the teacher's last attention
    # before the downsampler; up stages shift by one stage
    assert pairs == [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                     ("down_blocks.2", "down_blocks.2.attentions.1"), ("up_blocks.0", "up_blocks.1"),
                     ("up_blocks.1", "up_blocks.2"), ("up_blocks.2", "up_blocks.3")]
    student_taps = FeatureTaps(student, [s for s, _ in pairs])
    teacher_taps = FeatureTaps(teacher.unet, [t for _, t in pairs])
    inputs = (torch.randn(1, 4, 16, 16), torch.tensor([5]), torch.randn(1, 3, 16))
    with torch.no_grad(), student_taps.capture() as got, teacher_taps.capture() as wanted:
        student(*inputs), teacher.unet(*inputs)
    assert all(got[s].shape == wanted[t].shape for s, t in pairs)


@pytest.mark.parametrize("layers", ["block-out", "self-attn"])
def test_a_teacher_memo_run_taps_every_point_any_student_matches(teacher, layers):
    from prunekit.families import config_of, family_of

    transformer = stand_ins.sd3_pipeline().transformer
    for net in (teacher.unet, transformer):
        family = family_of(config_of(net))
        points = family.feature_points(net, layers)
        for name in family.presets(config_of(net)):
            plan = make_preset(name, "stand-in", config_of(net))
            student, _ = build_student(net, plan)
            assert {t for _, t in feature_pairs(student, net, plan.weight_map, layers)} <= set(points), name
        assert len(points) == len(set(points)) and all(net.get_submodule(path) is not None for path in points)


def test_match_rule_walks_back_to_the_latest_equal_shape():
    teacher = [("a.r0", (8, 4)), ("a.at0", (8, 4)), ("a.r1", (8, 4)), ("a.at1", (8, 4)), ("a.down", (8, 2)),
               ("a", (8, 2))]
    student = [("b.r0", (8, 4)), ("b.at0", (8, 4)), ("b", (8, 4))]
    assert match_points(student, teacher) == ("b", "a.at1")
    assert match_points(student, teacher[-1:]) is None
    assert match_points([("b", (8, 2))], teacher) == ("b", "a")


def test_hooks_are_keyed_by_module_path_under_a_wrapper(teacher):
    class Wrapper(torch.nn.Module):  # what DDP does: the model becomes `.module` of another
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    taps = FeatureTaps(teacher.unet, ["down_blocks.1", "up_blocks.2.attentions.0"])
    wrapped = Wrapper(teacher.unet)
    inputs = (torch.randn(1, 4, 16, 16), torch.tensor([5]), torch.randn(1, 3, 16))
    with torch.no_grad(), taps.capture() as features:
        wrapped(*inputs)
    assert set(features) == {"down_blocks.1", "up_blocks.2.attentions.0"}
    with torch.no_grad():
        wrapped(*inputs)  # outside capture() nothing is kept
    assert taps.features is features and len(features) == 2
    taps.remove()
    with pytest.raises(PrunekitError, match="no module"):
        FeatureTaps(teacher.unet, ["down_blocks.9"])


# -- data -------------------------------------------------------------------------------------------

def test_image_folder_crops_and_flips_deterministically(tmp_path):
    folder = image_folder(tmp_path / "data", count=3)
    dataset = Captioned(FolderSource(folder), resolution=32, flip=True, seed=0)
    example = dataset[0]
    assert example["pixel_values"].shape == (3, 32, 32) and example["text"].startswith("a ")
    assert -1 <= example["pixel_values"].min() and example["pixel_values"].max() <= 1
    decisions = [flips(0, epoch, 0) for epoch in range(16)]
    assert True in decisions and False in decisions  # a fresh draw per epoch
    epoch = decisions.index(not decisions[0])
    dataset.set_epoch(epoch)
    assert torch.equal(dataset[0]["pixel_values"], example["pixel_values"].flip(-1))
    assert len(Captioned(FolderSource(image_folder(tmp_path / "csv", 2, metadata="csv")), 32, True, 0)) == 2


def test_shapes_are_never_flipped(tmp_path, teacher_dir, plans, monkeypatch):
    made = []
    monkeypatch.setattr("prunekit.distill.api.Captioned", lambda *a, **k: made.append(k) or Captioned(*a, **k))
    distill(plans["bk-small"], "shapes", tmp_path / "out", teacher=str(teacher_dir), **{**FAST, "steps": 1})
    assert made == [{"flip": False, "seed": 0}]


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    source = FolderSource(image_folder(tmp_path / "data", count=2, broken=1))
    assert len(source) == 2 and source.skipped == ["broken0.png"]


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no images"),
    ("no metadata", "no metadata.jsonl or metadata.csv"),
    ("uncaptioned file", "have no caption"),
    ("empty caption", "have no caption"),
    ("all unreadable", "could be read"),
    ("missing column", "lacks the column"),
])
def test_bad_folders_fail_with_one_sentence(tmp_path, case, message):
    folder = tmp_path / "data"
    folder.mkdir()
    if case == "no metadata":
        shapes.sample("train", 0, 0)[0].save(folder / "a.png")
    elif case == "uncaptioned file":
        image_folder(folder, count=2)
        shapes.sample("train", 5, 0)[0].save(folder / "extra.png")
    elif case == "empty caption":
        image_folder(folder, count=1)
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": " "}) + "\n")
    elif case == "all unreadable":
        image_folder(folder, count=0, broken=2)
    elif case == "missing column":
        image_folder(folder, count=1)
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "caption": "x"}) + "\n")
    with pytest.raises(PrunekitError, match=message) as error:
        open_source(str(folder))
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_data_names(tmp_path, monkeypatch):
    with pytest.raises(PrunekitError, match="there is no folder"):
        open_source(str(tmp_path / "missing" / "data"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PrunekitError, match="is a file"):
        open_source(str(tmp_path / "file.txt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(PrunekitError, match="Hugging Face Hub cannot be reached"):
        open_source("someone/captioned-images")
    assert time.perf_counter() - started < 5
    assert len(open_source("shapes", 7)) == 7


def test_epoch_sampler_resumes_part_way():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    assert sorted(whole) == list(range(10))
    sampler.skip(4)
    assert list(sampler) == whole[4:] and list(sampler) == whole  # the skip applies once
    sampler.set_epoch(3)
    assert list(sampler) != whole


def test_latent_cache_is_built_once(tmp_path, teacher):
    dataset = Captioned(FolderSource(image_folder(tmp_path / "data", count=3)), 64, True, 0)
    encoder = Encoder(teacher, torch.device("cpu"), torch.float32)
    key = cache_key(dataset, "stand-in", torch.float32)
    directory = build_cache(tmp_path / "cache", dataset, encoder, key, batch_size=2, progress=False)
    moments = np.load(directory / "moments.npy")
    assert moments.shape == (3, 2, 8, 16, 16)  # examples, (as is, mirrored), mean + log-variance, latent size
    assert np.load(directory / "text.npy").shape == (3, stand_ins.MAX_LENGTH, 16)
    expected = encoder.moments(dataset.pixels(dataset.source.item(1)[0], True)[None])[0]
    assert torch.allclose(torch.from_numpy(moments[1, 1]), expected, atol=1e-5)
    stamp = (directory / "moments.npy").stat().st_mtime_ns
    built = json.loads((directory / "build.json").read_text())["seconds"]
    assert built > 0
    build_cache(directory, dataset, encoder, key, progress=False)
    assert (directory / "moments.npy").stat().st_mtime_ns == stamp
    assert json.loads((directory / "build.json").read_text())["seconds"] == built  # kept: no second build
    build_cache(directory, dataset, encoder, {**key, "resolution": 32}, progress=False)
    assert (directory / "moments.npy").stat().st_mtime_ns != stamp


# -- training ---------------------------------------------------------------------------------------

def test_distill_writes_a_plain_diffusers_student(tmp_path, teacher_dir, plans, clip_dir):
    out = tmp_path / "out"
    summary = distill(plans["bk-tiny"], "shapes", out, teacher=str(teacher_dir), ema=True, feat_norm="teacher",
                      checkpoint_every=2, eval_steps=2, eval_clip_model=str(clip_dir),
                      **{**FAST, "steps": 3, "eval_num_prompts": 2})
    assert summary["steps"] == 3 and len(summary["pairs"]) == 6
    rows = (out / "logs.csv").read_text().splitlines()
    assert rows[0] == "step,loss,loss_task,loss_out,loss_feat,lr,seconds" and len(rows) == 4
    values = [[float(v) for v in row.split(",")] for row in rows[1:]]
    assert all(np.isfinite(row).all() and row[3] > 0 and row[4] > 0 for row in values)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))

    student = StableDiffusionPipeline.from_pretrained(out / "student", local_files_only=True)
    plan = Plan.load(plans["bk-tiny"])
    assert list(student.unet.config.block_out_channels) == list(plan.student_config["block_out_channels"])
    teacher = StableDiffusionPipeline.from_pretrained(teacher_dir, local_files_only=True)
    surgery, _ = build_student(teacher.unet, plan)
    assert not torch.equal(student.unet.conv_in.weight, surgery.conv_in.weight)  # trained
    assert torch.equal(student.vae.encoder.conv_in.weight, teacher.vae.encoder.conv_in.weight)
    assert UNet2DConditionModel.from_pretrained(out / "student_ema").config.block_out_channels == \
        student.unet.config.block_out_channels

    evaluation = json.loads((out / "eval.json").read_text())
    assert list(evaluation) == ["latency", "teacher", "student_before", "student_after", "student_after_ema",
                                "settings"]
    latency = evaluation["latency"]
    assert latency["device"] == "cpu" and latency["teacher_ms"] > 0 and latency["student_ms"] > 0
    assert latency["speedup"] == pytest.approx(latency["teacher_ms"] / latency["student_ms"])
    assert {"attribute_accuracy", "clip_score"} <= set(evaluation["student_after"])
    assert evaluation["settings"]["num_prompts"] == 2
    # teacher and students are sampled at the teacher's guidance, and the saved student keeps it
    assert evaluation["settings"]["guidance"] == ModelCard.read(out / "student").guidance == TEACHER_GUIDANCE


def test_folder_data_from_the_latent_cache(tmp_path, teacher_dir, plans):
    folder = image_folder(tmp_path / "data", count=4, broken=1)
    summary = distill(plans["bk-small"], str(folder), tmp_path / "out", teacher=str(teacher_dir), cache_latents=True,
                      **{**FAST, "num_examples": None})
    assert summary["skipped_images"] == 1 and summary["steps"] == 2
    assert json.loads((tmp_path / "out" / "cache" / "cache.json").read_text())["examples"] == 4


def test_plain_fine_tuning_does_not_run_the_teacher(tmp_path, teacher_dir, plans, monkeypatch):
    calls = []
    original = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward",
                        lambda self, *args, **kwargs: calls.append(self) or original(self, *args, **kwargs))
    distill(plans["bk-small"], "shapes", tmp_path / "out", teacher=str(teacher_dir), lambda_out=0, lambda_feat=0,
            **{**FAST, "steps": 1})
    assert len({id(model) for model in calls if model.device.type != "meta"}) == 1  # the student only
    rows = (tmp_path / "out" / "logs.csv").read_text().splitlines()
    assert rows[1].split(",")[3:5] == ["0.0", "0.0"]


def test_runs_sharing_a_teacher_memo_train_exactly_as_runs_alone(tmp_path, teacher_dir, plans):
    def losses(out):  # every logged value but the seconds
        return [row.split(",")[:-1] for row in (out / "logs.csv").read_text().splitlines()]

    memo, hits = TeacherMemo(), []
    options = {**FAST, "steps": 3, "caption_dropout": 0.5, "feat_norm": "teacher"}
    for name, run in (("bk-small", "shared"), ("bk-tiny", "shared"), ("bk-small", "again"), ("bk-small", "alone"),
                      ("bk-tiny", "alone")):
        before = memo.hits
        distill(plans[name], "shapes", tmp_path / f"{name}-{run}", teacher=str(teacher_dir),
                memo=memo if run != "alone" else None, **options)
        hits.append(memo.hits - before)
    assert losses(tmp_path / "bk-small-shared") == losses(tmp_path / "bk-small-alone")
    assert losses(tmp_path / "bk-tiny-shared") == losses(tmp_path / "bk-tiny-alone")
    assert losses(tmp_path / "bk-small-again") == losses(tmp_path / "bk-small-alone")
    # bk-tiny matches an earlier teacher point than bk-small, which the first run tapped for it
    assert hits == [0, 3, 3, 0, 0] and memo.misses == 3


def test_a_teacher_memo_keeps_nothing_past_its_bound():
    memo = TeacherMemo(max_bytes=4 * 16)
    first, second = memo.key(torch.zeros(2)), memo.key(torch.zeros(2, 1))
    assert first != second and first == memo.key(torch.zeros(2)) != memo.key(torch.ones(2))
    memo.put(first, torch.zeros(8), {"a": torch.zeros(8)})
    memo.put(second, torch.zeros(8), {})
    assert memo.get(first, ["a"])[1]["a"].shape == (8,) and memo.get(first, ["a", "b"]) is None
    assert memo.get(second, []) is None and memo.bytes == 4 * 16


def test_a_guidance_tuned_teacher_passes_its_tuned_task_target_on(tmp_path, teacher, teacher_dir, plans):
    tuned_dir = tmp_path / "tuned-teacher"
    teacher.save_pretrained(tuned_dir)
    ModelCard(guidance=7.5, tuned=TunedGuidance(7.5, 3.0)).write(tuned_dir)
    runs = {}
    for name, directory in (("ordinary", teacher_dir), ("tuned", tuned_dir)):
        distill(plans["bk-small"], "shapes", tmp_path / name, teacher=str(directory), lambda_out=0, lambda_feat=0,
                **{**FAST, "steps": 1})
        runs[name] = float((tmp_path / name / "logs.csv").read_text().splitlines()[1].split(",")[2])
    assert runs["tuned"] != pytest.approx(runs["ordinary"], rel=1e-3)  # same seed and student: only the target differs
    assert ModelCard.read(tmp_path / "tuned" / "student").tuned == TunedGuidance(7.5, 3.0)
    assert ModelCard.read(tmp_path / "ordinary" / "student").tuned is None


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, teacher_dir, plans):
    out = tmp_path / "out"
    with pytest.raises(PrunekitError, match=r"the loss became (nan|inf) at step \d+ .*step-0000000\d, is kept"):
        distill(plans["bk-small"], "shapes", out, teacher=str(teacher_dir), lr=1e30, checkpoint_every=1,
                **{**FAST, "steps": 6})
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept and all(not name.startswith(".") for name in kept)
    assert not (out / "student").exists()


def test_resume_refusals(tmp_path, teacher_dir, plans):
    out = tmp_path / "out"
    with pytest.raises(PrunekitError, match="nothing to resume"):
        distill(plans["bk-small"], "shapes", out, teacher=str(teacher_dir), resume=True, **FAST)
    distill(plans["bk-small"], "shapes", out, teacher=str(teacher_dir), **FAST)
    with pytest.raises(PrunekitError, match="already holds checkpoints"):
        distill(plans["bk-small"], "shapes", out, teacher=str(teacher_dir), **FAST)
    with pytest.raises(PrunekitError, match=r"other settings \(lr 5e-05 -> 0.001\)"):
        distill(plans["bk-small"], "shapes", out, teacher=str(teacher_dir), resume=True, lr=1e-3, **FAST)
    more = distill(plans["bk-small"], "shapes", out, teacher=str(teacher_dir), resume=True, **{**FAST, "steps": 3})
    assert more["steps"] == 3 and len((out / "logs.csv").read_text().splitlines()) == 4


def test_a_plan_for_another_teacher_is_refused(tmp_path, teacher_dir):
    other = dict(sd1_pipeline().unet.config, block_out_channels=(16, 32, 32, 32))
    plan = make_preset("bk-small", "other", other).save(tmp_path / "plan.json")
    with pytest.raises(PrunekitError, match="made for another U-Net"):
        distill(plan, "shapes", tmp_path / "out", teacher=str(teacher_dir), **FAST)


def test_cli_errors_exit_2(tmp_path, teacher_dir, plans, capsys):
    code = main(["distill", plans["bk-small"], "--teacher", str(teacher_dir), "--out", str(tmp_path), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


# -- processes --------------------------------------------------------------------------------------

def cli(*args):
    return [sys.executable, "-m", "prunekit", "distill", *map(str, args)]


def run_args(plan, teacher_dir, steps=12):
    return [plan, "--teacher", teacher_dir, "--steps", steps, "--batch-size", 2, "--grad-accum", 2,
            "--num-examples", 12, "--checkpoint-every", 2, "--eval-num-prompts", 0, "--ema"]


def tensors(directory):
    return load_file(next(directory.glob("*.safetensors")))


@pytest.mark.slow
def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path, teacher_dir, plans):
    args = run_args(plans["bk-tiny"], teacher_dir)
    subprocess.run(cli(*args, "--out", tmp_path / "full"), env=ENV, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(*args, "--out", killed), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((killed / "checkpoints").glob("step-*/trainer_state.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert not (killed / "student").exists(), "the run finished before it could be killed"
    subprocess.run(cli(*args, "--out", killed, "--resume"), env=ENV, check=True, capture_output=True, timeout=600)

    for part in ("student/unet", "student_ema"):
        full, resumed = tensors(tmp_path / "full" / part), tensors(killed / part)
        assert full.keys() == resumed.keys()
        assert all(torch.equal(full[key], resumed[key]) for key in full), part
    steps = [line.split(",")[0] for line in (killed / "logs.csv").read_text().splitlines()[1:]]
    assert steps == [str(step) for step in range(1, 13)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launch, processes", [
    (["--num_processes", "2", "--cpu"], 1),  # accelerate 1.x runs one process here unless MPI is set up
    (["--multi_gpu", "--num_processes", "2"], 2),  # two gloo processes with ACCELERATE_USE_CPU=1: real DDP
], ids=["cpu-flag", "ddp"])
def test_accelerate_launch(tmp_path, teacher_dir, plans, launch, processes):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port", str(free_port()),
               "-m", "prunekit", "distill", *map(str, run_args(plans["bk-tiny"], teacher_dir, steps=2)), "--out", out]
    result = subprocess.run(list(map(str, command)), env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["settings"]["num_processes"] == processes
    assert len(list((out / "checkpoints" / "step-00000002").glob("noise-*.safetensors"))) == processes
    rows = [line.split(",") for line in (out / "logs.csv").read_text().splitlines()[1:]]
    assert len(rows) == 2 and all(float(row[4]) > 0 for row in rows)  # feature KD ran through the hooks
    assert StableDiffusionPipeline.from_pretrained(out / "student", local_files_only=True).unet is not None


# -- every kind of plan -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, remove", [("diffusers", None), ("free", ["down1.attn1", "mid", "up2.res1"])])
def test_every_kind_distils_into_a_student_that_reloads_with_the_plans_parameters(tmp_path, teacher, teacher_dir,
                                                                                  kind, remove):
    from diffusers import DiffusionPipeline

    from prunekit.plan import make_plan, preset_remove
    from prunekit.students import load_student, load_student_unet

    config = dict(teacher.unet.config)
    made = make_plan("stand-in", config, remove or preset_remove("bk-small", config), "test", kind=kind)
    plan_path = made.save(tmp_path / "plan.json")
    student, _ = build_student(teacher.unet, Plan.load(plan_path, config))
    assert sum(p.numel() for p in student.parameters()) == made.predicted["params"]
    state, teacher_state = student.state_dict(), teacher.unet.state_dict()
    if kind == "free":  # a free student keeps every kept tensor where it was, copied exactly
        assert set(state) < set(teacher_state) and all(torch.equal(state[key], teacher_state[key]) for key in state)

    out = tmp_path / "out"
    distill(plan_path, "shapes", out, teacher=str(teacher_dir), ema=True, **FAST)
    for folder in ("student", "student_ema"):
        manifest = json.loads((out / folder / "prunekit_student.json").read_text())
        assert manifest["kind"] == kind and manifest["params"] == made.predicted["params"]
    reloaded = load_student(out / "student")
    assert sum(p.numel() for p in reloaded.unet.parameters()) == made.predicted["params"]
    plain = DiffusionPipeline.from_pretrained(out / "student", local_files_only=True)  # prunekit's class, by name
    assert type(plain.unet) is type(reloaded.unet) and torch.equal(plain.unet.conv_in.weight,
                                                                    reloaded.unet.conv_in.weight)
    if kind == "free":  # plain diffusers finds no weights to fill the removed modules with, and says so
        with pytest.raises(OSError):
            UNet2DConditionModel.from_pretrained(out / "student" / "unet")
        index = json.loads((out / "student" / "model_index.json").read_text())
        assert index["unet"] == ["prunekit.families.unet.free", "FreeUNet2DConditionModel"]
        index["unet"][0] = "prunekit.students"  # as free students saved before the U-Net family's package named it
        (out / "student" / "model_index.json").write_text(json.dumps(index))
        assert type(load_student(out / "student").unet) is type(reloaded.unet)
    else:
        assert type(reloaded.unet) is UNet2DConditionModel
    ema = load_student_unet(out / "student_ema")
    assert type(ema) is type(reloaded.unet) and sum(p.numel() for p in ema.parameters()) == made.predicted["params"]


# -- the recoverable objective ----------------------------------------------------------------------------

def test_the_recoverable_objective_plans_by_what_short_distillations_recover(tmp_path, teacher, teacher_dir):
    from prunekit.planner import plan
    from prunekit.planner.recoverable import RecoverOptions
    from test_planner import random_table, write_run

    config = dict(teacher.unet.config)
    run = write_run(tmp_path / "run", config, random_table(config, seed=1))
    recover = RecoverOptions(first_rung=1, rungs=2, pool=4, batch_size=2, num_examples=8, num_prompts=2, steps=2)
    made = plan(str(teacher_dir), budget="params=0.8", sensitivity=run, objective="recoverable", method="optuna",
                recover=recover, out=tmp_path / "plan.json", progress=False)
    info = made.provenance["planner"]
    assert made.predicted["params_fraction"] <= 0.8 and info["objective"] == "recoverable"
    assert info["space_size"] == 4 and info["rungs"] == [1, 3] and info["calibration"] == "shapes-train"
    assert info["kd_steps"] == 4 * 1 + 1 * 2  # all four to the first rung, the best 4 // 3 on to the second
    assert 1 <= info["teacher_passes_reused"] <= 3  # the first rung's step of the other three, where their paths allow
    candidates = sorted(p.name for p in (run / "recoverable").iterdir() if p.name != "cache")
    assert len(candidates) == 4 and (run / "recoverable" / "cache" / "cache.json").is_file()
    again = plan(str(teacher_dir), budget="params=0.8", sensitivity=run, objective="recoverable", method="optuna",
                 recover=recover, out=tmp_path / "plan.json", force=True, progress=False)
    assert again.remove == made.remove  # resumed from the study and the cache: nothing trained again


# -- SDXL -------------------------------------------------------------------------------------------------

def _sdxl_loop(tmp_path, model_dir: str, clip_dir: str, budget: float, **options) -> dict:
    """sweep -> plan -> distill of an SDXL pipeline; the student reloads as a plain StableDiffusionXLPipeline
    of the plan's size, its time ids and pooled text reaching both U-Nets."""
    from diffusers import StableDiffusionXLPipeline

    from prunekit.planner import plan
    from prunekit.sensitivity import sensitivity

    sensitivity(model_dir, out=str(tmp_path / "run"), clip_model=str(clip_dir), prompts="shapes", num_prompts=2,
                steps=2, granularity="block", progress=False)
    made = plan(model_dir, budget=budget, sensitivity=str(tmp_path / "run"), method="optuna", trials=30,
                progress=False)
    assert any(".t" in name for name in made.remove), made.remove  # planned at transformer-layer depth
    summary = distill(tmp_path / "run" / "plan.json", "shapes", tmp_path / "out", teacher=model_dir,
                      **{**FAST, "caption_dropout": 0.5, **options})
    student = StableDiffusionXLPipeline.from_pretrained(summary["student"], local_files_only=True)
    assert sum(p.numel() for p in student.unet.parameters()) == made.predicted["params"]
    rows = [line.split(",") for line in (tmp_path / "out" / "logs.csv").read_text().splitlines()[1:]]
    assert len(rows) == FAST["steps"] and all(float(row[4]) > 0 for row in rows)  # feature KD ran
    return {"plan": made, "summary": summary, "student": student}


@pytest.mark.parametrize("cache, layers", [(False, "block-out"), (True, "self-attn")])
def test_an_sd3_pipeline_goes_through_the_loop_with_flow_matching(tmp_path, sd3_dir, clip_dir, cache, layers):
    """sweep -> plan -> distill of an SD3 pipeline without T5: whole blocks planned, the student a plain
    SD3Transformer2DModel trained on flow-matching targets, block outputs (image stream) matched."""
    from diffusers import StableDiffusion3Pipeline

    from prunekit.planner import plan
    from prunekit.sensitivity import sensitivity

    table = sensitivity(sd3_dir, out=str(tmp_path / "run"), clip_model=str(clip_dir), prompts="shapes",
                        num_prompts=2, steps=2, granularity="block", progress=False)
    assert {"block0", "block0.attn", "block3.ff"} <= set(table["unit"])
    made = plan(sd3_dir, budget=0.8, sensitivity=str(tmp_path / "run"), method="optuna", trials=20, progress=False)
    assert made.remove and all(name.startswith("block") and "." not in name for name in made.remove)
    summary = distill(tmp_path / "run" / "plan.json", "shapes", tmp_path / "out", teacher=sd3_dir,
                      **{**FAST, "caption_dropout": 0.5, "cache_latents": cache, "feat_layers": layers})
    student = StableDiffusion3Pipeline.from_pretrained(summary["student"], local_files_only=True, text_encoder_3=None,
                                                       tokenizer_3=None)
    assert student.transformer.config.num_layers == 4 - len(made.remove)
    assert sum(p.numel() for p in student.transformer.parameters()) == made.predicted["params"]
    suffix = ".attn" if layers == "self-attn" else ""
    assert summary["pairs"] and all(s.endswith(suffix) and s.startswith("transformer_blocks.")
                                    for s, _ in summary["pairs"])
    rows = [line.split(",") for line in (tmp_path / "out" / "logs.csv").read_text().splitlines()[1:]]
    assert len(rows) == FAST["steps"] and all(float(row[4]) > 0 for row in rows)  # feature KD ran
    from prunekit.students import load_student

    assert load_student(summary["student"]).transformer.config.num_layers == 4 - len(made.remove)
    from prunekit.cli import main

    assert main(["export", str(tmp_path / "out"), "-o", str(tmp_path / "s.safetensors")]) == 2  # no SD layout


@pytest.mark.parametrize("cache, layers", [(False, "self-attn"), (True, "block-out")])
def test_an_sdxl_plan_distils_into_a_plain_sdxl_pipeline(tmp_path, sdxl_dir, clip_dir, cache, layers):
    done = _sdxl_loop(tmp_path, sdxl_dir, clip_dir, 0.6, cache_latents=cache, feat_layers=layers)
    pairs = done["summary"]["pairs"]
    if layers == "self-attn":  # every kept self-attention, matched with the teacher's it was copied from
        kept = [path for path, _ in done["student"].unet.named_modules() if path.endswith(".attn1")]
        assert [s for s, _ in pairs] == kept and all(t.endswith(".attn1") for _, t in pairs)
    else:
        assert all(s.split(".")[0] in ("down_blocks", "up_blocks") for s, _ in pairs)
    if cache:
        assert (tmp_path / "out" / "cache" / "pooled.npy").is_file()


def test_the_sdxl_unconditional_branch_is_the_pipelines(sdxl_dir):
    """SDXL's pipeline samples its unconditional branch from zeros (force_zeros_for_empty_prompt): so does
    distillation's caption dropout; the time ids are the pipeline's default size."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, local_files_only=True)
    encoder = Encoder(pipe, torch.device("cpu"), torch.float32)
    empty = encoder.unconditional()
    assert not empty.embeds.any() and not empty.pooled.any()
    assert empty.time_ids.tolist() == [[64, 64, 0, 0, 64, 64]]
    caption = encoder.text(["a red circle"])
    assert caption.embeds.shape == (1, stand_ins.MAX_LENGTH, 32) and caption.pooled.shape == (1, 16)


@pytest.mark.slow
def test_sdxl_topology_goes_through_the_loop(tmp_path, clip_dir):
    """SDXL's own topology (transformer depths 1, 2, 10; two text encoders; 256-wide time embeddings) at a fifth of
    its widths and 16 x 16 latents: sweep, plan, distill, plain diffusers."""
    from diffusers import StableDiffusionXLPipeline

    from prunekit.models import unet_config

    pipe = stand_ins.sdxl_pipeline()
    config = {**unet_config("sdxl-base"), "sample_size": 16, "block_out_channels": [64, 128, 256],
              "attention_head_dim": [1, 2, 4], "cross_attention_dim": 32,
              "projection_class_embeddings_input_dim": 6 * 256 + 16}
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(**{**pipe.components, "unet": UNet2DConditionModel(**config)})
    pipe.save_pretrained(tmp_path / "sdxl")
    done = _sdxl_loop(tmp_path, str(tmp_path / "sdxl"), clip_dir, 0.7, feat_layers="self-attn")
    assert done["student"].unet.config.addition_time_embed_dim == 256
