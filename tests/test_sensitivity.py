"""The sensitivity sweep on tiny random pipelines: run directory, resume, refusal, bad input, proxy, distribution."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import UNet2DConditionModel

import stand_ins
from prunekit.ablation import ablate, unit_table
from prunekit.cli import main
from prunekit.conditioning import Conditioning
from prunekit.errors import PrunekitError
from prunekit.generate import generate_latents, image_seeds
from prunekit.graph import enumerate_units
from prunekit.models import ASSETS, build_meta, resolve_model, unet_config
from prunekit.sensitivity import sensitivity
from prunekit.sensitivity.intervals import next_round, ranking_forecast
from prunekit.sensitivity.pipelines import random_pipeline
from prunekit.sensitivity.proxy import BlockForward, Proxy, fixed_timesteps
from prunekit.sensitivity.sampling import Sampler
from prunekit.rundir import RunDir
from test_ablation import SD1

ROOT = Path(__file__).resolve().parents[1]
INTERVAL_COLUMNS = ["sensitivity_low", "sensitivity_high", "prompts"]
UNIT_COLUMNS = ["unit", "kind", "stage", "params", "macs", "full_macs", "seconds"]
ATTRIBUTES = [f"{prefix}attr_{key}" for key in ("color", "shape", "position", "size", "all")
              for prefix in ("", "delta_")]
FAST = {"prompts": "shapes", "num_prompts": 3, "steps": 2, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, pipe_dir, clip_dir):
    """A finished full sweep of every pair unit of the stand-in pipeline."""
    out = tmp_path_factory.mktemp("runs") / "full"
    table = sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **FAST)
    return out, table


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _numbers(rows: list[dict]) -> list[dict]:
    """Rows without their wall times."""
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# -- the run directory --------------------------------------------------------------------------------------

def test_full_sweep_writes_the_run_directory(full_run, pipe_dir):
    out, table = full_run
    units = enumerate_units(unet_config(pipe_dir), "pair", resolve_model(pipe_dir).tokens)
    columns = UNIT_COLUMNS + ["clip_score", "delta_clip_score", "latent_mse", "psnr", "ssim"] + ATTRIBUTES
    rows = _rows(out / "sensitivity.csv")
    assert list(rows[0]) == columns + ["sensitivity"] + INTERVAL_COLUMNS
    assert [row["unit"] for row in rows] == [unit.name for unit in units] == list(table["unit"])
    for row, unit in zip(rows, units):
        assert (row["kind"], row["stage"], int(row["params"]), int(row["macs"])) == (unit.kind, unit.stage,
                                                                                   unit.params, unit.macs)
        assert float(row["sensitivity"]) == -float(row["delta_clip_score"]) and float(row["seconds"]) > 0
        assert float(row["latent_mse"]) > 0  # every ablation changes the generation
    info = json.loads((out / "run.json").read_text())
    assert {"command", "args", "versions", "model", "created", "baseline", "init", "notes"} <= set(info)
    assert info["command"] == "sensitivity" and info["init"] == "pretrained"
    assert info["args"]["metrics"] == ["clip", "teacher", "attributes"] and info["args"]["num_prompts"] == 3
    assert info["model"]["unet_fingerprint"].startswith("sha256:")
    assert set(info["baseline"]) == {"clip_score", "clip_score_real"} | {name for name in ATTRIBUTES
                                                                          if not name.startswith("delta")}
    for row in rows:  # the interval brackets the mean of the per-prompt losses it is drawn from
        assert float(row["sensitivity_low"]) <= float(row["sensitivity"]) <= float(row["sensitivity_high"])
        assert int(row["prompts"]) == 3
    assert {"torch", "diffusers", "prunekit"} <= set(info["versions"])
    images = out / "images"
    assert len(json.loads((images / "prompts.json").read_text())) == 3
    assert sorted(p.name for p in (images / "baseline").iterdir()) == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in (images / "units").iterdir()) == sorted(unit.name for unit in units)


def test_generation_reuses_the_encoded_prompts_and_the_noise_of_generate(pipe_dir):
    pipe = stand_ins.pipeline()
    prompts = ["a small red circle in the center on a gray background", "a large blue star in the top left"]
    seeds = image_seeds(0, 2)
    expected = generate_latents(pipe, prompts, seeds, steps=2, batch_size=2, progress=False)
    assert torch.equal(Sampler(pipe, prompts, seeds, steps=2, guidance=7.5).latents(), expected)


def test_resume_after_a_kill_keeps_finished_rows_and_matches_an_uninterrupted_run(tmp_path, full_run, pipe_dir,
                                                                                   clip_dir, monkeypatch, capsys):
    from prunekit.sensitivity import scoring

    score, calls = scoring.Scorer.score, []

    def killed_at_the_third_unit(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return score(self, *args)

    out = tmp_path / "run"
    monkeypatch.setattr(scoring.Scorer, "score", killed_at_the_third_unit)
    with pytest.raises(KeyboardInterrupt):
        sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **FAST)
    before = (out / "sensitivity.csv").read_text().splitlines()
    assert len(before) == 3  # the header and the two finished units
    monkeypatch.setattr(scoring.Scorer, "score", score)
    sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **{**FAST, "progress": True})
    assert "2 of 9 units already measured are skipped" in capsys.readouterr().out
    after = (out / "sensitivity.csv").read_text().splitlines()
    assert after[:3] == before
    assert _numbers(_rows(out / "sensitivity.csv")) == _numbers(_rows(full_run[0] / "sensitivity.csv"))


def test_a_finished_run_is_not_measured_again(full_run, pipe_dir, clip_dir, capsys):
    out, _ = full_run
    files = _files(out)
    table = sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **{**FAST, "progress": True})
    assert "9 of 9 units already measured" in capsys.readouterr().out
    assert len(table) == 9 and _files(out) == files


def test_another_command_into_the_same_directory_is_refused(full_run, pipe_dir, clip_dir):
    out, _ = full_run
    files = _files(out)
    with pytest.raises(PrunekitError, match=r"another command \(steps: 2 there, 3 here\)"):
        sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **{**FAST, "steps": 3})
    with pytest.raises(PrunekitError, match="another command"):
        sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **{**FAST, "mode": "proxy", "num_prompts": 3,
                                                                     "timesteps": 2})
    assert _files(out) == files


def test_other_units_extend_a_run(tmp_path, full_run, pipe_dir, clip_dir):
    out = tmp_path / "run"
    sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, units="mid", **FAST)
    table = sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, units=["up1.res1", "up1.attn1"], **FAST)
    assert list(table["unit"]) == ["mid", "up1.res1", "up1.attn1"]
    full = {row["unit"]: row for row in _numbers(_rows(full_run[0] / "sensitivity.csv"))}
    assert _numbers(_rows(out / "sensitivity.csv"))[0] == full["mid"]


def test_shards_merge_in_unit_order_with_their_text(tmp_path):
    run, columns = RunDir(tmp_path), ["unit", "value"]
    run.table(columns).append({"unit": "a", "value": 0.1})
    run.shard(1, columns).append({"unit": "d", "value": 1 / 3})
    run.shard(0, columns).append({"unit": "c", "value": "2.50"}, {"unit": "b", "value": 7})
    run.merge(columns, ["b", "c", "d"])
    assert (tmp_path / "sensitivity.csv").read_text() == f"unit,value\na,0.1\nb,7\nc,2.50\nd,{1 / 3!r}\n"
    assert not (tmp_path / "shards").exists()


def test_rows_left_in_shards_by_a_killed_distributed_run_count_as_finished(tmp_path, full_run, pipe_dir, clip_dir,
                                                                           capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    lines = (out / "sensitivity.csv").read_text().splitlines(keepends=True)
    (out / "sensitivity.csv").write_text("".join(lines[:-3]))
    (out / "shards").mkdir()
    (out / "shards" / "rank1.csv").write_text("".join(lines[:1] + lines[-3:-1]))
    sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **{**FAST, "progress": True})
    assert "8 of 9 units already measured are skipped; 1 to go" in capsys.readouterr().out
    assert _numbers(_rows(out / "sensitivity.csv")) == _numbers(_rows(full_run[0] / "sensitivity.csv"))
    assert (out / "sensitivity.csv").read_text().splitlines()[:-1] == [line.rstrip("\n") for line in lines[:-1]]
    assert not (out / "shards").exists()


# -- bad input: one sentence, nothing finished lost ------------------------------------------------------------

@pytest.mark.parametrize("case, match", [
    ({"prompts": "MISSING"}, "cannot read the prompt file"),
    ({"prompts": "EMPTY"}, "holds no prompts"),
    ({"units": "down0.pair0,mid.attn9"}, r"no unit 'mid.attn9'"),
    ({"metrics": "clip,sharpness"}, "unknown metric 'sharpness'"),
    ({"mode": "proxy", "metrics": "clip"}, "proxy mode scores by noise-prediction error"),
    ({"prompts": "EVERYDAY", "metrics": "attributes"}, "captioned-shapes images only"),
    ({"granularity": "layer"}, "unknown granularity"),
    ({"race": True, "race_target": 1.5}, "--race-target must be at most 1"),
    ({"race": True, "metrics": "fid"}, "FID is a score of the whole set"),
], ids=["missing-prompts", "empty-prompts", "unknown-unit", "unknown-metric", "proxy-metrics", "attributes",
        "granularity", "race-target", "race-fid"])
def test_bad_input_leaves_a_finished_run_untouched(full_run, pipe_dir, clip_dir, tmp_path, case, match):
    out, _ = full_run
    (tmp_path / "empty.txt").write_text("\n \n")
    files = {"MISSING": str(tmp_path / "missing.txt"), "EMPTY": str(tmp_path / "empty.txt"), "EVERYDAY": "everyday"}
    case = {key: files.get(value, value) for key, value in case.items()}
    with pytest.raises(PrunekitError, match=match):
        sensitivity(pipe_dir, out=str(out), clip_model=clip_dir, **{**FAST, **case})
    assert len(_rows(out / "sensitivity.csv")) == 9


def test_unwritable_out_directory(tmp_path, pipe_dir, clip_dir):
    (tmp_path / "file").write_text("")
    with pytest.raises(PrunekitError, match="cannot write to .*: pass a writable --out directory"):
        sensitivity(pipe_dir, out=str(tmp_path / "file" / "run"), clip_model=clip_dir, **FAST)


def test_model_not_available_offline_fails_fast_and_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrunekitError, match="could not fetch 'sd-v1-4'"):
        sensitivity("sd-v1-4", out=str(tmp_path / "run"), metrics="teacher", progress=False)
    with pytest.raises(PrunekitError, match="could not fetch 'someone/no-such-model'"):
        sensitivity("someone/no-such-model", out=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "run.json").exists()


# -- racing ----------------------------------------------------------------------------------------------------

def test_the_forecast_is_sure_of_separated_units_and_unsure_of_ties():
    rng = np.random.default_rng(0)
    separated = {f"u{i}": 10.0 * i + rng.normal(0, 0.1, 8) for i in range(6)}
    agreement, shifts = ranking_forecast(separated, 64, seed=0)
    assert agreement > 0.99 and max(shifts.values()) < 0.05
    tied = {f"u{i}": rng.normal(0, 1, 8) for i in range(6)}
    agreement, shifts = ranking_forecast(tied, 64, seed=0)
    assert agreement < 0.6 and min(shifts.values()) > 0.5
    assert ranking_forecast(tied, 8, seed=0) == (1.0, dict.fromkeys(tied, 0.0))  # every prompt measured: certain


def test_the_next_round_goes_to_the_units_whose_ranks_may_move_most():
    shifts = {"a": 9.0, "b": 3.0, "c": 1.0, "d": 0.0}
    assert next_round(shifts, ["a", "b", "c", "d"]) == ["a"]
    assert next_round(shifts, ["b", "c", "d"]) == ["b"]
    assert next_round({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, ["a", "b", "c", "d"]) == ["a", "b"]
    assert next_round(dict.fromkeys("ab", 0.0), ["a", "b"]) == ["a"]


RACE = {**FAST, "num_prompts": 12, "race": True, "race_round": 2}


def test_a_race_to_full_agreement_measures_every_prompt_and_equals_the_full_sweep(tmp_path, pipe_dir, clip_dir):
    full = sensitivity(pipe_dir, out=str(tmp_path / "full"), clip_model=clip_dir, **{**FAST, "num_prompts": 12})
    raced = sensitivity(pipe_dir, out=str(tmp_path / "race"), clip_model=clip_dir, **RACE, race_target=1.0)
    assert (raced["prompts"] == 12).all()
    columns = ["unit", "sensitivity", "sensitivity_low", "sensitivity_high", "clip_score"]
    pd.testing.assert_frame_equal(raced[columns].set_index("unit").sort_index(),  # batches of other sizes: 1e-5
                                  full[columns].set_index("unit").sort_index(), rtol=1e-3, atol=1e-3)


def test_a_race_spends_prompts_only_where_the_ranking_is_unsure(tmp_path, pipe_dir, clip_dir):
    quick = sensitivity(pipe_dir, out=str(tmp_path / "quick"), clip_model=clip_dir, **RACE, race_target=0.0)
    assert (quick["prompts"] == 8).all()  # the first round (MIN_PROMPTS) already agrees "well enough"
    sure = sensitivity(pipe_dir, out=str(tmp_path / "sure"), clip_model=clip_dir, **RACE, race_target=0.9)
    spent = sure.set_index("unit")["prompts"]
    assert set(spent) <= {8, 10, 12} and 8 in set(spent) and spent.max() > 8  # more prompts for some units only
    record = json.loads((tmp_path / "sure" / "run.json").read_text())
    assert record["args"]["race"] == 2 and record["args"]["race_target"] == 0.9
    with pytest.raises(PrunekitError, match="race_target: 0.9 there, 0.5 here"):
        sensitivity(pipe_dir, out=str(tmp_path / "sure"), clip_model=clip_dir, **RACE, race_target=0.5)


def test_cli_runs_and_reports_user_errors_in_one_line(tmp_path, pipe_dir, clip_dir, capsys):
    args = ["sensitivity", "--model", pipe_dir, "--out", str(tmp_path / "run"), "--prompts", "shapes",
            "--num-prompts", "2", "--steps", "2", "--clip-model", clip_dir, "--units", "mid,up1.pair1"]
    assert main(args) == 0
    assert "2 units -> " in capsys.readouterr().out
    assert main(args + ["--metrics", "clip,sharpness"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown metric 'sharpness'" in error


# -- proxy mode ------------------------------------------------------------------------------------------------

def _case(size: int, family: str = "sd1"):
    """A random U-Net of `family` (SD-1's or SDXL's topology), and a sample, timesteps and its conditioning."""
    torch.manual_seed(0)
    config = SD1 if family == "sd1" else stand_ins.SDXL_UNET
    unet = UNet2DConditionModel(**config).eval()
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, size, size, generator=generator)
    conditioning = Conditioning(torch.randn(2, 5, config["cross_attention_dim"], generator=generator))
    if family == "sdxl":
        conditioning = Conditioning(conditioning.embeds, torch.randn(2, 16, generator=generator),
                                    torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2))
    return unet, (sample, torch.tensor([10, 700]), conditioning)


@pytest.mark.parametrize("size, family", [(16, "sd1"), (12, "sd1"), (16, "sdxl")],
                         ids=["even", "odd-upsample-size", "sdxl-added-conditioning"])
def test_block_forward_equals_diffusers_bit_for_bit_from_every_block(size, family):
    unet, (sample, timestep, text) = _case(size, family)
    forward = BlockForward(unet)
    with torch.no_grad():
        expected = unet(sample, timestep, **text.unet_kwargs()).sample
        context = forward.context(sample, timestep, text)
    keep = []
    assert torch.equal(forward.run(context, (sample, ()), keep=keep), expected)
    assert len(keep) == len(forward.stages) == 3 + len(unet.down_blocks) + len(unet.up_blocks)
    for start in range(len(keep)):
        assert torch.equal(forward.run(context, keep[start], start), expected), forward.stages[start][0]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_resumed_forward_equals_the_ablated_unet_for_every_unit(family):
    unet, (sample, timestep, text) = _case(16, family)
    forward = BlockForward(unet)
    with torch.no_grad():
        context = forward.context(sample, timestep, text)
    keep = []
    forward.run(context, (sample, ()), keep=keep)
    for unit in unit_table(unet).values():
        with ablate(unet, unit), torch.no_grad():
            expected = unet(sample, timestep, **text.unet_kwargs()).sample
            start = forward.first_stage(unit)
            assert torch.equal(forward.run(context, keep[start], start), expected), unit.name


def test_proxy_scores_the_noise_prediction_error():
    unet, (latents, _, text) = _case(16)
    alphas = torch.linspace(0.99, 0.01, 1000)
    proxy = Proxy(unet, latents, text, timesteps=2, alphas_cumprod=alphas, seed=0)
    assert proxy.timesteps == [250, 750] == fixed_timesteps(2, 1000)
    noisy = proxy.batches[0][1][0][0]
    with torch.no_grad():
        intact = unet(noisy, torch.tensor(proxy.timesteps), text.embeds).sample
        for name in ("down0.pair0", "mid", "up3.pair2"):
            with ablate(unet, name) as (unit,):
                ablated = unet(noisy, torch.tensor(proxy.timesteps), text.embeds).sample
                assert float(proxy.eps_mse(unit).mean()) == pytest.approx(float(((ablated - intact) ** 2).mean()),
                                                                         rel=1e-6)


@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_an_sdxl_pipeline_is_swept_down_to_its_transformer_layers(tmp_path, sdxl_dir, clip_dir, mode):
    """SDXL's pipeline samples the sweep (pooled text and time ids reach the U-Net); the proxy feeds them too."""
    units = ["down2.attn0.t1", "up0.attn2.t0", "mid.attn0", "down1.pair0"]
    table = sensitivity(sdxl_dir, out=str(tmp_path / mode), mode=mode, clip_model=clip_dir, units=units,
                        proxy_latents="rendered", timesteps=2, **FAST) if mode == "proxy" else \
        sensitivity(sdxl_dir, out=str(tmp_path / mode), clip_model=clip_dir, units=units, **FAST)
    assert list(table["unit"]) == units
    column = "eps_mse" if mode == "proxy" else "latent_mse"
    assert (table[column] > 0).all()


@pytest.mark.parametrize("latents", ["rendered", "baseline"])
def test_proxy_sweep(tmp_path, pipe_dir, latents):
    out = tmp_path / "proxy"
    table = sensitivity(pipe_dir, out=str(out), mode="proxy", proxy_latents=latents, timesteps=2, **FAST)
    assert list(table.columns) == UNIT_COLUMNS + ["eps_mse", "sensitivity"] + INTERVAL_COLUMNS
    assert (table["eps_mse"] > 0).all() and (table["sensitivity"] == table["eps_mse"]).all()
    info = json.loads((out / "run.json").read_text())
    assert info["baseline"] == {"timesteps": [250, 750]} and info["args"]["proxy_latents"] == latents
    assert (out / "images" / "baseline").is_dir() == (latents == "baseline")


# -- random weights and several processes -------------------------------------------------------------------------

def test_random_init_pipeline_has_sd_scale_on_the_meta_device():
    pipe = random_pipeline(unet_config("sd-v1-4"), "meta", seed=0)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(pipe.unet) == count(build_meta(unet_config("sd-v1-4"))) == 859_520_964
    assert count(pipe.vae) == 83_653_863  # SD's VAE
    assert pipe.text_encoder.config.hidden_size == 768 and pipe.text_encoder.config.num_hidden_layers == 12
    assert pipe.tokenizer.model_max_length == 77


def test_random_init_gives_sdxl_an_sdxl_pipeline_on_the_meta_device():
    """sdxl-base gets StableDiffusionXLPipeline with SDXL's widths: 768 + 1280 text states, a 1280-wide projection."""
    from diffusers import StableDiffusionXLPipeline

    pipe = random_pipeline(unet_config("sdxl-base"), "meta", seed=0)
    assert type(pipe) is StableDiffusionXLPipeline
    assert sum(p.numel() for p in pipe.unet.parameters()) == 2_567_463_684
    assert (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size,
            pipe.text_encoder_2.config.projection_dim) == (768, 1280, 1280)
    assert pipe.vae.config.scaling_factor == 0.13025


def test_random_init_gives_sd3_an_sd3_pipeline_without_t5_and_runs_from_its_config(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    pipe = random_pipeline(unet_config("sd3-medium"), "meta", seed=0)
    assert type(pipe) is StableDiffusion3Pipeline and pipe.text_encoder_3 is None
    assert sum(p.numel() for p in pipe.transformer.parameters()) == 2_028_328_000
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == 0.0609
    config_dir = tmp_path / "transformer-only"
    stand_ins.sd3_pipeline().transformer.save_config(config_dir)
    table = sensitivity(str(config_dir), out=str(tmp_path / "run"), init="random", prompts="shapes", num_prompts=1,
                        steps=1, units="block1,block3.ff", granularity="block", progress=False)
    assert list(table["unit"]) == ["block1", "block3.ff"] and set(table["init"]) == {"random"}


def test_random_init_runs_from_a_unet_config_and_says_so(tmp_path):
    config_dir = tmp_path / "unet-only"
    stand_ins.pipeline().unet.save_config(config_dir)
    out = tmp_path / "run"
    table = sensitivity(str(config_dir), out=str(out), init="random", prompts="shapes", num_prompts=1, steps=1,
                        units="mid,up1.pair1", progress=False)
    assert list(table.columns) == UNIT_COLUMNS + ["latent_mse", "psnr", "ssim", "init", "sensitivity"] + INTERVAL_COLUMNS
    assert set(table["init"]) == {"random"}
    info = json.loads((out / "run.json").read_text())
    assert info["init"] == "random" and any("timing only" in note for note in info["notes"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_write_the_same_table_as_one(tmp_path, pipe_dir, clip_dir):
    args = ["sensitivity", "--model", pipe_dir, "--prompts", "shapes", "--num-prompts", "2", "--steps", "2",
            "--metrics", "clip,teacher,fid", "--clip-model", clip_dir, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # accelerate's --cpu launcher starts several processes only through MPI; --multi_gpu starts them with
    # torchrun, and --device cpu makes prunekit join them over gloo
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "prunekit"]
    two = subprocess.run(launch + args + ["--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    one_rows, two_rows = _rows(tmp_path / "one" / "sensitivity.csv"), _rows(tmp_path / "two" / "sensitivity.csv")
    assert len(one_rows) == 9 and _numbers(two_rows) == _numbers(one_rows)
    assert not (tmp_path / "two" / "shards").exists()
    assert len(list((tmp_path / "two" / "images" / "units").iterdir())) == 9


# -- the analysis scripts, on the stand-in pipeline ---------------------------------------------------------------

def test_bench_script_prints_the_three_ratios(tmp_path, pipe_dir, clip_dir, capsys, analysis_script):
    result = analysis_script("bench_sensitivity").main(
        ["--model", pipe_dir, "--clip-model", clip_dir, "--num-prompts", "4", "--steps", "1",
         "--units", "mid,up1.pair1", "--naive-units", "1", "--out", str(tmp_path)])
    assert set(result["ratios"]) == {"full / floor", "naive / full", "full / proxy"}
    assert "naive extrapolated" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratios.png", "table.csv", "table.md"]


def test_proxy_vs_full_script_writes_its_report(tmp_path, pipe_dir, clip_dir, analysis_script):
    analysis_script("proxy_vs_full").main(["--model", pipe_dir, "--clip-model", clip_dir, "--num-prompts", "4",
                                           "--steps", "1", "--latents", "rendered", "--timesteps", "1,2",
                                           "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proxy_vs_full.png", "summary.md", "units.csv"]
    assert "| rendered, K=1 |" in (tmp_path / "summary.md").read_text()


# -- the bundled tiny-sd ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "tiny-sd").is_dir() or not (ASSETS / "tiny-clip").is_dir(),
                    reason="the bundled tiny-sd and tiny-clip are not built yet")
def test_tiny_sd_full_and_proxy(tmp_path):
    full = sensitivity("tiny-sd", out=str(tmp_path / "full"), num_prompts=4, steps=5, units="down0.pair0,mid",
                       progress=False)
    assert list(full["unit"]) == ["down0.pair0", "mid"] and "delta_attr_all" in full.columns
    info = json.loads((tmp_path / "full" / "run.json").read_text())
    assert info["args"]["prompts"] == "shapes" and info["args"]["clip_model"] == "tiny-clip"
    proxy = sensitivity("tiny-sd", out=str(tmp_path / "proxy"), mode="proxy", num_prompts=4, progress=False)
    assert len(proxy) == len(enumerate_units(unet_config("tiny-sd"), "pair")) and (proxy["eps_mse"] > 0).all()


def test_two_tables_on_one_file_keep_each_others_rows(tmp_path):
    run, columns = RunDir(tmp_path), ["unit", "value"]
    mine, theirs = run.table(columns), run.table(columns)  # two processes' views of one sensitivity.csv
    mine.append({"unit": "a", "value": 1})
    theirs.append({"unit": "b", "value": 2})
    mine.append({"unit": "c", "value": 3}, {"unit": "b", "value": 9})  # b is there already: the first row stays
    assert (tmp_path / "sensitivity.csv").read_text() == "unit,value\na,1\nb,2\nc,3\n"


def test_two_sweeps_of_other_units_into_one_directory_at_once_lose_no_row(tmp_path, pipe_dir, clip_dir):
    out = tmp_path / "run"
    units = [unit.name for unit in enumerate_units(unet_config(pipe_dir), "block")]
    command = [sys.executable, "-m", "prunekit", "sensitivity", "--model", pipe_dir, "--out", str(out), "--prompts",
               "shapes", "--num-prompts", "2", "--steps", "1", "--clip-model", clip_dir, "--device", "cpu",
               "--granularity", "block", "--units"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command + [",".join(part)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for part in (units[::2], units[1::2])]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    rows = _rows(out / "sensitivity.csv")
    assert len(units) >= 10 and sorted(row["unit"] for row in rows) == sorted(units)


# -- the field's cheap block scores ---------------------------------------------------------------------------

def test_block_cosine_is_one_minus_the_cosine_of_a_blocks_input_and_output():
    from prunekit.families import family_of
    from prunekit.graph import all_units
    from prunekit.sensitivity.criteria import BlockScores

    pipe = stand_ins.sd3_pipeline()
    model = pipe.transformer.eval()
    family = family_of({"_class_name": "SD3Transformer2DModel"})
    units = [all_units(model, costs=False)[name] for name in ("block1", "block3", "block2.ff")]
    conditioning = Conditioning(torch.randn(2, 9, 32), torch.randn(2, 32))
    batch = (torch.randn(2, 4, 16, 16), torch.tensor([300.0, 700.0]), conditioning)
    seen = {}
    hook = model.transformer_blocks[1].register_forward_hook(
        lambda module, args, kwargs, output: seen.update(x=kwargs["hidden_states"], y=output[1]), with_kwargs=True)
    scores = BlockScores(model, family, units, [batch])
    hook.remove()
    cosine = torch.nn.functional.cosine_similarity(seen["x"], seen["y"], dim=-1).mean(1)
    assert torch.allclose(scores(units[0], "cosine"), (1 - cosine).double(), atol=1e-6)
    assert torch.allclose(scores(units[0], "mse"), (seen["x"] - seen["y"]).pow(2).mean((1, 2)).double(), atol=1e-6)
    assert (scores(units[1], "mse") > 0).all()  # the last, text-free block
    assert torch.allclose(scores(units[2], "cosine"), torch.ones(2, dtype=torch.float64))  # a part's stand-in: zeros


@pytest.mark.parametrize("mode", ["cosine", "mse"])
def test_criteria_sweeps_score_every_unit_in_one_pass_and_plan(tmp_path, sd3_dir, pipe_dir, mode):
    from prunekit.planner import plan

    column = {"cosine": "block_cosine", "mse": "block_mse"}[mode]
    table = sensitivity(sd3_dir, out=str(tmp_path / "sd3"), mode=mode, granularity="block", timesteps=2, **FAST)
    assert len(table) == 12 and (table[column] >= 0).all() and (table["sensitivity"] == table[column]).all()
    made = plan(sd3_dir, budget=0.7, sensitivity=str(tmp_path / "sd3"), progress=False)
    assert made.remove and made.predicted["params_fraction"] <= 0.7
    unet = sensitivity(pipe_dir, out=str(tmp_path / "unet"), mode=mode, granularity="pair", timesteps=2, **FAST)
    assert (unet[column] >= 0).all() and len(unet) == len(enumerate_units(unet_config(pipe_dir), "pair"))
    record = json.loads((tmp_path / "unet" / "run.json").read_text())
    assert any(note.startswith(f"{mode} mode:") for note in record["notes"])


def test_a_latent_mode_refuses_metrics_and_proxy_refuses_transformers(tmp_path, sd3_dir):
    with pytest.raises(PrunekitError, match=r"cosine mode scores by .* \(block_cosine\) only"):
        sensitivity(sd3_dir, out=str(tmp_path / "a"), mode="cosine", metrics="clip", **FAST)
    with pytest.raises(PrunekitError, match="proxy mode runs U-Nets block by block"):
        sensitivity(sd3_dir, out=str(tmp_path / "b"), mode="proxy", granularity="block", timesteps=2, **FAST)


def test_a_stage_is_scored_by_its_parts_stand_ins(tmp_path, pipe_dir):
    table = sensitivity(pipe_dir, out=str(tmp_path / "stage"), mode="mse", granularity="stage", timesteps=2, **FAST)
    assert set(table["unit"]) == {u.name for u in enumerate_units(unet_config(pipe_dir), "stage")}
    assert (table["block_mse"] > 0).all()
