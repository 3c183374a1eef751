"""The measured objective on stand-in pipelines: each candidate measured once (also across a resumed search),
the same numbers every time, the sweep's numbers for single units, surgery's numbers for diffusers-space
plans, and the CLI's `--objective measured`."""
import json

import pytest
import torch
from diffusers import UNet2DConditionModel

import stand_ins
from prunekit.ablation import ablate, resolve
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.models import fingerprint, unet_config
from prunekit.plan import preset_remove
from prunekit.planner import plan
from prunekit.planner.measured import measurer, outermost, unet_swapped
from prunekit.sensitivity import sensitivity
from prunekit.surgery import build_student

FAST = {"prompts": "shapes", "num_prompts": 2, "steps": 2}
# four stages of equal inner width, so that the diffusers space can drop two stages at once
DEEP_UNET = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "block_out_channels": (8, 16, 16, 16),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 16, "attention_head_dim": 2, "norm_num_groups": 4,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """The stand-in pipeline around a four-stage U-Net (BK-SDM's presets apply to it)."""
    directory = tmp_path_factory.mktemp("deep")
    pipe = stand_ins.pipeline()
    torch.manual_seed(1)
    pipe.unet = UNet2DConditionModel(**DEEP_UNET)
    pipe.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def measure(pipe_dir, clip_dir):
    return measurer(pipe_dir, clip_model=clip_dir, kind="free", **FAST)


def counting(measure, calls: list):
    def counted(remove):
        calls.append(" ".join(sorted(remove)))
        return measure(remove)
    return counted


def run_dir(path, model: str, clip_dir: str):
    """A run directory whose run.json names the model and the arguments a measurement copies."""
    path.mkdir(parents=True, exist_ok=True)
    info = {"command": "sensitivity", "model": {"name": model, "unet_fingerprint": fingerprint(unet_config(model))},
            "args": {"mode": "full", "prompts": "shapes", "steps": 2, "guidance": 7.5, "seed": 0,
                     "clip_model": clip_dir, "dtype": "float32", "metrics": ["clip", "teacher", "attributes"]}}
    (path / "run.json").write_text(json.dumps(info))
    return path


def test_each_candidate_is_measured_once_and_a_rerun_measures_nothing(tmp_path, pipe_dir, clip_dir, measure):
    run = run_dir(tmp_path / "run", pipe_dir, clip_dir)
    calls = []
    for method in ("greedy", "optuna", "greedy"):
        made = plan(pipe_dir, budget=0.97, sensitivity=str(run), objective="measured", method=method, kind="free",
                    trials=12, measure=counting(measure, calls), out=tmp_path / f"{method}.json", force=True,
                    progress=False)
        assert made.predicted["loss"] == measure(made.remove)
    assert calls and len(calls) == len(set(calls))  # greedy and Optuna share the cache: none measured twice
    before = len(calls)
    for method in ("greedy", "optuna"):  # the same searches again: everything comes from the run's cache
        plan(pipe_dir, budget=0.97, sensitivity=str(run), objective="measured", method=method, kind="free", trials=12,
             measure=counting(measure, calls), out=tmp_path / "again.json", force=True, progress=False)
    assert len(calls) == before


def test_measurements_are_deterministic_and_match_the_sweep(tmp_path, pipe_dir, clip_dir, measure):
    again = measurer(pipe_dir, clip_model=clip_dir, kind="free", **FAST)
    assert measure([]) == 0.0
    for remove in (["mid"], ["down0.pair0", "up1.pair1"], ["down0.attn0", "mid.res0", "up0.upsample"]):
        assert measure(remove) == measure(remove) == again(remove)
        assert measure.scores(remove) == again.scores(remove) and measure.scores(remove)["latent_mse"] > 0
    assert measure.rule == "-delta_clip_score"
    table = sensitivity(pipe_dir, out=str(tmp_path / "sweep"), clip_model=clip_dir, progress=False, **FAST)
    for row in table.itertuples():  # one unit measured alone is the sweep's own row
        assert measure([row.unit]) == pytest.approx(row.sensitivity, abs=1e-6)


def test_a_run_gives_the_settings_and_the_rule(tmp_path, pipe_dir, clip_dir):
    run = run_dir(tmp_path / "run", pipe_dir, clip_dir)
    info = json.loads((run / "run.json").read_text())
    info["args"]["metrics"] = ["teacher"]
    (run / "run.json").write_text(json.dumps(info))
    measure = measurer(pipe_dir, sensitivity=str(run), num_prompts=2, kind="free")
    assert measure.rule == "latent_mse" and measure.describe()["steps"] == 2
    assert measure([]) == 0.0 and measure(["mid"]) > 0


def test_contained_units_are_left_out(pipe_dir):
    unet = stand_ins.pipeline().unet
    names = [u.name for u in outermost(resolve(unet, ["down0.res0", "down0.pair0", "mid.attn0", "mid", "up1.pair0"]))]
    assert names == ["down0.pair0", "mid", "up1.pair0"]


def test_a_candidate_is_measured_on_the_student_of_its_kind(deep_dir, clip_dir):
    """A diffusers candidate is its surgery student, also where ablation computes something else (an up stage's
    pair 0: its stand-in drops the skip the student's kept resnets take in order); a free one is the teacher
    with stand-ins, which is its free student."""
    config = unet_config(deep_dir)
    skewed = ["down2.pair0", "up1.pair0"]
    plans = [preset_remove("bk-small", config), skewed, ["stage0", "stage1"]]
    for kind in ("diffusers", "free"):
        measure = measurer(deep_dir, clip_model=clip_dir, kind=kind, **FAST)
        for remove in plans[:2] if kind == "free" else plans:
            student, _ = build_student(measure.pipe.unet, remove, kind=kind)
            with unet_swapped(measure.pipe, student.eval()):
                built = measure.sampler.latents()
            torch.testing.assert_close(measure._latents(remove), built, rtol=1e-4, atol=1e-5)
            if kind == "diffusers" and remove == skewed:
                with ablate(measure.pipe.unet, remove):
                    assert (measure.sampler.latents() - built).abs().max() > 1e-2
    with pytest.raises(PrunekitError, match="unknown kind 'pruned'"):
        measurer(deep_dir, clip_model=clip_dir, kind="pruned", **FAST)


def test_cli_plans_with_the_measured_objective(tmp_path, pipe_dir, clip_dir, capsys):
    run = run_dir(tmp_path / "run", pipe_dir, clip_dir)
    out = tmp_path / "plan.json"
    code = main(["plan", "--model", pipe_dir, "--budget", "0.9", "--sensitivity", str(run), "--objective", "measured",
                 "--measure-prompts", "2", "--measure-steps", "2", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "measured objective" in printed and str(out) in printed
    saved = json.loads(out.read_text())
    assert saved["remove"] == ["mid.attn0", "mid.res1"]  # the mid block down to one resnet
    assert saved["provenance"]["planner"]["objective"] == "measured"
    assert main(["plan", "--model", pipe_dir, "--budget", "1.5", "--objective", "measured"]) == 2  # refused, no load


def test_an_sd3_candidate_is_measured_on_its_plain_student_equal_to_the_ablated_teacher(sd3_dir, clip_dir):
    """SD3's students are plain SD3 transformers; removing the last block keeps the new last one text-free, which
    computes what the teacher computes with those blocks ablated."""
    measure = measurer(sd3_dir, clip_model=clip_dir, kind="diffusers", **FAST)
    for remove in (["block1"], ["block2", "block3"]):
        with ablate(measure.pipe.transformer, remove):
            ablated = measure.sampler.latents()
        torch.testing.assert_close(measure._latents(remove), ablated, rtol=1e-4, atol=1e-5)
    assert measure(["block1"]) != measure(["block2", "block3"])
