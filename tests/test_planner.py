"""The planner: plan spaces (checked against surgery), costs that add up, greedy and Optuna (BK-SDM's plans
reproduced on SD-v1.4 when the sensitivities point there), the objectives and their caches, latency budgets,
the free space, Optuna's determinism, resume and Pareto front, the refusals, and the CLI."""
import csv
import itertools
import json
import random

import pytest
import torch
from diffusers import UNet2DConditionModel

import stand_ins
from prunekit.ablation import ablate
from prunekit.cli import main
from prunekit.costs import denoiser_costs
from prunekit.errors import PrunekitError
from prunekit.graph import all_units
from prunekit.families import canonical_config
from prunekit.models import build_meta, fingerprint, unet_config
from prunekit.plan import Plan, preset_remove
from prunekit import latency
from prunekit.planner import plan, summary
from prunekit.planner.budget import Budget
from prunekit.planner.objective import Additive
from prunekit.planner.search import best_trial, search
from prunekit.planner.space import DiffusersSpace, Layout, StageChoice
from prunekit.surgery import derive

TINY = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
BUDGETS = {"bk-base": 0.675, "bk-small": 0.562, "bk-tiny": 0.377}  # BK-SDM keeps 0.6741, 0.5612, 0.3762 of SD-v1.4


def write_run(path, config: dict, values: dict, name: str = "model"):
    """A sensitivity run directory as the sensitivity sweep writes it (run.json, sensitivity.csv)."""
    path.mkdir(parents=True, exist_ok=True)
    info = {"command": "sensitivity", "model": {"name": name, "unet_fingerprint": fingerprint(config)}}
    (path / "run.json").write_text(json.dumps(info))
    with (path / "sensitivity.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["unit", "kind", "stage", "params", "macs", "full_macs", "seconds", "sensitivity"])
        for unit, value in values.items():
            writer.writerow([unit, "", "", 0, 0, 0, 0, value])
    return path


def pointing_at(preset: str, config: dict, seed: int = 0) -> dict:
    """Sensitivities of every unit: tiny for the units `preset` removes, large for all others."""
    removed = set(preset_remove(preset, config))
    rng = random.Random(seed)
    return {name: (1e-4 if name in removed else 1.0) * (1 + rng.random()) for name in all_units(config, costs=False)}


def random_table(config: dict, seed: int = 0) -> dict:
    rng = random.Random(seed)
    return {name: rng.random() for name in all_units(config, costs=False)}


@pytest.fixture(scope="module")
def sd():
    return unet_config("sd-v1-4")


@pytest.fixture(scope="module")
def sd_space(sd):
    return DiffusersSpace(sd)


@pytest.fixture(scope="module")
def tiny_space():
    return DiffusersSpace(TINY)


def expressible(config: dict, remove: list[str]) -> bool:
    try:
        derive(config, remove, "diffusers")
    except PrunekitError:
        return False
    return True


def test_the_space_holds_exactly_what_surgery_can_express(tiny_space):
    full = tiny_space.full()
    for d in range(tiny_space.n):
        downs, ups = (sum(1 for name in tiny_space.units if name.startswith(f"{side}{s}.res"))
                      for side, s in (("down", d), ("up", tiny_space.n - 1 - d)))
        for k in range(1, downs + 1):
            for down, up in itertools.product(itertools.combinations(range(downs), k),
                                              itertools.combinations(range(ups), k + 1)):
                choice = StageChoice(down, up)
                stages = full.stages[:d] + (choice,) + full.stages[d + 1:]
                remove = tiny_space.remove(Layout(0, "keep", stages))
                assert (choice in tiny_space.options[d]) == expressible(TINY, remove), remove
    for m, mid in itertools.product(range(tiny_space.n), ("keep", "resnet", "drop")):
        remove = tiny_space.remove(Layout(m, mid, full.stages))
        assert ((m, mid) in tiny_space.cores) == expressible(TINY, remove), remove
    assert tiny_space.size() == sum(1 for _ in tiny_space.states())


def test_costs_add_up_exactly(tiny_space):
    teacher = denoiser_costs(TINY, full=False)
    rng = random.Random(0)
    everything = list(tiny_space.states())
    picked = rng.sample(everything, 4) + [s for s in everything if s.dropped and s.mid == "keep"][:2]
    for state in picked:
        student = denoiser_costs(derive(TINY, tiny_space.remove(state), "diffusers")[0], full=False)
        assert tiny_space.fraction(state, "params") == pytest.approx(student.params / teacher.params, abs=1e-12)
        assert tiny_space.fraction(state, "macs") == pytest.approx(student.macs / teacher.macs, abs=1e-12)


def test_sdxl_attentions_lose_transformer_layers_in_the_space(tmp_path):
    """On SDXL's topology every kept attention of depth above one may keep its first k layers, the mid block
    following the innermost down stage's first attention: each state is a diffusers student of exactly the
    predicted costs, the space counts its states right, and both SDXL presets are states of it."""
    space = DiffusersSpace(stand_ins.SDXL_UNET)
    assert set(space.deep) == {"down1.attn0", "down1.attn1", "down2.attn0", "down2.attn1",
                               *(f"up{s}.attn{i}" for s in (0, 1) for i in range(3))}
    assert ("mid.attn0.t2" in space.removable() and "down2.attn0.t0" not in space.removable()
            and (0, "resnet") in space.cores)
    everything = list(space.states())
    assert len(everything) == len(set(everything)) == space.size()
    teacher = denoiser_costs(stand_ins.SDXL_UNET, full=False)
    for state in random.Random(0).sample(everything, 6) + [space.smallest("params")]:
        student = denoiser_costs(derive(stand_ins.SDXL_UNET, space.remove(state), "diffusers")[0], full=False)
        assert space.fraction(state, "params") == pytest.approx(student.params / teacher.params, abs=1e-12)
        assert space.fraction(state, "macs") == pytest.approx(student.macs / teacher.macs, abs=1e-12)
    plans = {frozenset(space.remove(state)) for state in everything}
    for preset in ("koala-like", "ssd-like"):
        assert frozenset(preset_remove(preset, stand_ins.SDXL_UNET)) in plans
    # a pair-granularity sweep scores none of the finer units: the space is the pair space
    coarse = DiffusersSpace(stand_ins.SDXL_UNET, scorable=lambda name: ".t" not in name and not name.startswith("mid."))
    assert not coarse.deep and (0, "resnet") not in coarse.cores
    assert not any(".t" in name for name in coarse.removable())


def test_sdxl_plans_at_transformer_depth_from_a_block_sweep(tmp_path):
    """Greedy and Optuna plan SDXL-shaped U-Nets from a block sweep, whose table scores transformer layers."""
    run = write_run(tmp_path / "run", stand_ins.SDXL_UNET, random_table(stand_ins.SDXL_UNET, seed=3))
    for method in ("greedy", "optuna"):
        made = plan(str(write_config(tmp_path, stand_ins.SDXL_UNET)), budget=0.6, sensitivity=str(run), method=method,
                    trials=60, out=str(tmp_path / f"{method}.json"), progress=False)
        assert made.predicted["params_fraction"] <= 0.6 and made.kind == "diffusers"
        assert any(".t" in name for name in made.remove), made.remove
        derive(stand_ins.SDXL_UNET, made.remove, "diffusers")


def test_presets_are_states_of_the_sd_space(sd, sd_space):
    plans = {tuple(sd_space.remove(state)) for state in sd_space.states()}
    for preset in BUDGETS:
        assert tuple(preset_remove(preset, sd)) in plans
    smallest = sd_space.smallest("params")
    assert sd_space.fraction(smallest, "params") == pytest.approx(0.3762, abs=1e-4)


@pytest.fixture(scope="module")
def sd_runs(sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {preset: write_run(root / preset, sd, pointing_at(preset, sd), "sd-v1-4") for preset in BUDGETS}


@pytest.mark.parametrize("method", ["greedy", "optuna"])
@pytest.mark.parametrize("preset", list(BUDGETS))
def test_bk_sdm_plans_are_found_when_the_sensitivities_point_there(sd, sd_runs, preset, method, tmp_path):
    made = plan("sd-v1-4", budget=BUDGETS[preset], sensitivity=sd_runs[preset], method=method, seed=0,
                out=tmp_path / "plan.json", progress=False)
    assert made.remove == preset_remove(preset, sd)
    assert made.method == method and made.kind == "diffusers"
    assert made.budget == {"params": BUDGETS[preset]}
    assert made.predicted["params_fraction"] <= BUDGETS[preset]
    assert made.predicted["loss"] == pytest.approx(made.provenance["planner"]["presets"][preset]["loss"])
    assert Plan.load(tmp_path / "plan.json", sd).remove == made.remove


@pytest.mark.parametrize("preset", list(BUDGETS))
def test_tpe_alone_finds_them_too(sd, sd_space, preset):
    """The API enumerates a space no larger than --trials; TPE (seed 0, 200 trials) finds the plans as well."""
    objective = Additive(pointing_at(preset, sd), sd_space.units)
    budget = Budget.parse(BUDGETS[preset])
    study = search(sd_space.undominated(["params"], objective.unit), lambda s: {"params": sd_space.fraction(s, "params")},
                   lambda s: objective(sd_space.remove(s)), budget, trials=200, seed=0, exhaustive=False)
    assert type(study.sampler).__name__ == "TPESampler"
    assert best_trial(study, budget).user_attrs["plan"]["remove"] == preset_remove(preset, sd)


def test_pruning_dominated_choices_keeps_the_best_plan(tiny_space):
    objective = Additive(random_table(TINY), tiny_space.units)
    pruned = tiny_space.undominated(["params"], objective.unit)
    assert pruned.size() < tiny_space.size()
    for budget in (0.4, 0.6, 0.8):
        best = [min(objective(space.remove(s)) for s in space.states() if space.fraction(s, "params") <= budget)
                for space in (tiny_space, pruned)]
        assert best[0] == pytest.approx(best[1])


def test_greedy_respects_the_budget_and_gives_back_what_fits(tmp_path):
    run = write_run(tmp_path / "run", TINY, random_table(TINY, seed=3))
    for budget in (0.9, 0.7, 0.5):
        made = plan(str(write_config(tmp_path)), budget=budget, sensitivity=run, out=tmp_path / "p.json", force=True,
                    progress=False)
        assert made.predicted["params_fraction"] <= budget


def write_config(tmp_path, config: dict = TINY):
    folder = tmp_path / "tiny"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_optuna_is_deterministic_and_resumes_an_interrupted_study(tiny_space, tmp_path):
    objective = Additive(random_table(TINY), tiny_space.units)

    def run(trials, storage=None):
        return search(tiny_space, lambda s: {"params": tiny_space.fraction(s, "params")},
                      lambda s: objective(tiny_space.remove(s)), Budget.parse(0.6), trials=trials, storage=storage,
                      study_name="resume", seed=7, exhaustive=False)

    def sampled(study):
        return [t.params for t in study.trials]

    assert sampled(run(20)) == sampled(run(20))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = sampled(run(12, storage))
    resumed = run(20, storage)
    assert len(resumed.trials) == 20 and sampled(resumed)[:12] == first
    assert len(run(20, storage).trials) == 20  # a finished study runs nothing more


def test_pareto_front_is_written_beside_the_plan(sd, sd_runs):
    made = plan("sd-v1-4", budget=0.562, sensitivity=sd_runs["bk-small"], method="optuna", pareto=True, progress=False)
    assert made.remove == preset_remove("bk-small", sd)
    assert (sd_runs["bk-small"] / "optuna.db").is_file() and (sd_runs["bk-small"] / "plan.json").is_file()
    with (sd_runs["bk-small"] / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["params_fraction", "macs_fraction", "loss", "remove", "is_preset"]
    presets = [row["remove"].split() for row in rows if row["is_preset"] == "True"]
    assert presets == [preset_remove(p, sd) for p in BUDGETS]
    front = [(float(r["params_fraction"]), float(r["loss"])) for r in rows if r["is_preset"] == "False"]
    assert front == sorted(front) and all(a[1] > b[1] for a, b in zip(front, front[1:]))


def test_measured_objective_measures_each_candidate_once(tmp_path):
    table = random_table(TINY, seed=1)
    calls = []

    def measure(remove):
        calls.append(tuple(remove))
        return sum(table[name] for name in remove)

    run = write_run(tmp_path / "run", TINY, table)
    model = str(write_config(tmp_path))
    additive = plan(model, budget=0.6, sensitivity=run, out=tmp_path / "a.json", progress=False)
    measured = plan(model, budget=0.6, sensitivity=run, objective="measured", measure=measure, out=tmp_path / "m.json",
                    progress=False)
    assert measured.remove == additive.remove
    assert measured.predicted["loss"] == pytest.approx(additive.predicted["loss"])
    assert len(calls) == len(set(calls)) > 0
    done = len(calls)
    plan(model, budget=0.6, sensitivity=run, objective="measured", measure=measure, out=tmp_path / "m.json", force=True,
         progress=False)
    assert len(calls) == done  # every candidate came from the run directory's cache



def test_a_plan_is_costed_at_the_models_text_length(tmp_path):
    """tiny-sd's pipeline encodes 32 tokens: its plans, a preset's budget and latency timings all count 32."""
    from prunekit.models import resolve_model

    config = resolve_model("tiny-sd").config
    run = write_run(tmp_path / "run", config, random_table(config, seed=3), name="tiny-sd")
    made = plan("tiny-sd", budget="bk-small", sensitivity=run, out=tmp_path / "p.json", progress=False)
    assert made.predicted["tokens"] == Plan.load(tmp_path / "p.json").predicted["tokens"] == 32
    exact = denoiser_costs(made.student_config, 32).macs / denoiser_costs(config, 32).macs
    assert made.predicted["macs_fraction"] == pytest.approx(exact)
    assert Budget.parse(made.budget) == Budget.of_preset("bk-small", config, 32) != Budget.of_preset("bk-small", config)
    assert "|32 tokens" in latency.LatencyMeter(config, "cpu", tokens=32).prefix
    assert "|77 tokens" in latency.LatencyMeter(config, "cpu").prefix


def test_latency_budget_times_each_candidate_once(tmp_path, monkeypatch):
    """With a stand-in clock proportional to the parameters that run (on meta students), a latency budget plans
    as a parameter budget does."""
    timed = []

    def clock(self, unet, config):
        timed.append(1)
        return sum(p.numel() for p in unet.parameters()) * 1e-9

    monkeypatch.setattr(latency.LatencyMeter, "_time", clock)
    monkeypatch.setattr(latency.LatencyMeter, "_build", lambda self, config: build_meta(config))
    run = write_run(tmp_path / "run", TINY, random_table(TINY, seed=2))
    model = str(write_config(tmp_path))
    by_params = plan(model, budget=0.9, sensitivity=run, out=tmp_path / "p.json", progress=False)
    for space in ("diffusers", "free"):
        by_latency = plan(model, budget=0.9, metric="latency", kind=space, sensitivity=run, out=tmp_path / "l.json",
                          force=True,
                          progress=False)
        assert by_latency.predicted["latency_fraction"] <= 0.9
        assert by_latency.provenance["planner"]["latency"]["timing"] == "eager"
        if space == "diffusers":
            assert by_latency.remove == by_params.remove
            assert by_latency.predicted["latency_fraction"] == pytest.approx(by_params.predicted["params_fraction"])
    done = len(timed)
    plan(model, budget=0.9, metric="latency", sensitivity=run, out=tmp_path / "l.json", force=True, progress=False)
    assert len(timed) == done


def test_latency_is_timed_for_real_students_and_stand_ins(one_thread):
    meter = latency.LatencyMeter(TINY, "cpu")
    assert meter.seconds([]) > 0
    assert meter.seconds(preset_remove("bk-tiny", TINY)) > 0
    assert meter.seconds(["down1.attn0", "up2.res1"], kind="free") > 0
    assert meter.describe()["timing"] == "eager" and meter.describe()["dtype"] == "float32"


@pytest.mark.parametrize("granularity", ["block", "pair"])
def test_free_plans_keep_the_teacher_and_name_stand_ins(tmp_path, granularity):
    from prunekit.graph import enumerate_units

    names = {u.name for u in enumerate_units(TINY, granularity, costs=False)}
    table = {name: value for name, value in random_table(TINY, seed=4).items() if name in names}
    run = write_run(tmp_path / "run", TINY, table)
    made = plan(str(write_config(tmp_path)), budget=0.5, kind="free", sensitivity=run, out=tmp_path / "free.json",
                progress=False)
    assert made.kind == "free" and set(made.remove) <= names
    assert made.student_config == {**canonical_config(TINY), "_prunekit_removed": made.remove}
    assert "stand-ins" in made.provenance["planner"]["student"]
    teacher_params = made.predicted["teacher_params"]
    removed = sum(all_units(TINY)[name].params for name in made.remove)
    assert made.predicted["params"] == teacher_params - removed <= 0.5 * teacher_params
    assert Plan.load(tmp_path / "free.json", TINY).kind == "free"
    torch.manual_seed(0)
    teacher = UNet2DConditionModel.from_config(TINY).eval()
    with torch.no_grad(), ablate(teacher, made.remove):
        out = teacher(torch.randn(1, 4, 16, 16), 10, torch.randn(1, 5, 32)).sample
    assert out.shape == (1, 4, 16, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, r"outside \(0, 1\]"),
    ({"budget": 1.5}, r"outside \(0, 1\]"),
    ({"budget": 0.05}, r"smallest reachable is 0\.\d{4}"),
    ({"metric": "flops"}, "unknown metric 'flops'"),
    ({"pareto": True}, "add --method optuna"),
    ({"sensitivity": None}, "needs --sensitivity"),
    ({"objective": "measured"}, "measuring function"),
])
def test_bad_requests_are_refused(tmp_path, kwargs, message):
    run = write_run(tmp_path / "run", TINY, random_table(TINY))
    args = {"model": str(write_config(tmp_path)), "budget": 0.5, "sensitivity": run, "out": tmp_path / "p.json",
            "progress": False, **kwargs}
    with pytest.raises(PrunekitError, match=message):
        plan(**args)


def test_sensitivity_runs_of_another_unet_or_without_rows_are_refused(tmp_path, sd):
    model = str(write_config(tmp_path))
    with pytest.raises(PrunekitError, match="sensitivity.csv is missing"):
        plan(model, budget=0.5, sensitivity=tmp_path, progress=False)
    other = write_run(tmp_path / "sd", sd, random_table(TINY), "sd-v1-4")
    with pytest.raises(PrunekitError, match=r"another U-Net \(sd-v1-4"):
        plan(model, budget=0.5, sensitivity=other, progress=False)
    sparse = write_run(tmp_path / "sparse", TINY, {"down0.pair1": 0.1})
    with pytest.raises(PrunekitError, match="has no row for"):
        plan(model, budget=0.5, sensitivity=sparse, progress=False)


def test_cli_plans_under_a_budget_and_prints_the_presets_beside(tmp_path, capsys):
    run = write_run(tmp_path / "run", TINY, pointing_at("bk-small", TINY))
    model = str(write_config(tmp_path))
    assert main(["plan", "--model", model, "--budget", "0.6", "--sensitivity", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "this plan" in printed and all(p in printed for p in BUDGETS) and str(run / "plan.json") in printed
    assert Plan.load(run / "plan.json").remove == preset_remove("bk-small", TINY)
    assert "removes 9 units" in summary(Plan.load(run / "plan.json"))
    assert main(["plan", "--model", model, "--budget", "1.5", "--sensitivity", str(run)]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err


# -- budgets on several costs -------------------------------------------------------------------------------

def test_budgets_parse_one_cost_or_several():
    assert Budget.parse(0.5).to_json() == {"params": 0.5}
    assert Budget.parse("0.5", "macs").to_json() == {"macs": 0.5}
    assert Budget.parse("params=0.6,macs=0.65").to_json() == {"params": 0.6, "macs": 0.65}
    assert str(Budget.parse({"latency": 0.7})) == "latency=0.7"
    budget = Budget.parse("params=0.6,macs=0.65")
    assert budget.fits({"params": 0.6, "macs": 0.5}) and not budget.fits({"params": 0.5, "macs": 0.7})
    assert budget.excess({"params": 0.6, "macs": 0.5}) == 0 and budget.excess({"params": 0.9, "macs": 0.65}) > 0
    for bad, message in (("flops=0.5", "unknown cost 'flops'"), ("params=x", "not a number"),
                         ("params=1.5", r"outside \(0, 1\]"), ("params=0.5,params=0.6", "twice"), (float("nan"), "outside"),
                         (0, "outside"), ("", "not a number"), (",", "bounds nothing")):
        with pytest.raises(PrunekitError, match=message):
            Budget.parse(bad)


def test_a_plan_meets_every_bound_and_is_warned_of_when_its_costs_part(tmp_path):
    run = write_run(tmp_path / "run", TINY, random_table(TINY, seed=5))
    model = str(write_config(tmp_path))
    by_params = plan(model, budget=0.5, sensitivity=run, out=tmp_path / "p.json", progress=False)
    both = plan(model, budget="params=0.5,macs=0.6", sensitivity=run, out=tmp_path / "b.json", progress=False)
    assert by_params.predicted["params_fraction"] <= 0.5
    assert both.predicted["params_fraction"] <= 0.5 and both.predicted["macs_fraction"] <= 0.6
    assert both.budget == {"params": 0.5, "macs": 0.6} and "within budget" in summary(both)
    for made in (by_params, both):
        apart = made.predicted["macs_fraction"] - made.predicted["params_fraction"] > 0.2
        assert ("warning" in made.provenance["planner"]) == apart
        assert ("warning: this plan keeps" in summary(made)) == apart
    optuna = plan(model, budget="params=0.5,macs=0.6", sensitivity=run, method="optuna", trials=40,
                  out=tmp_path / "o.json", progress=False)
    assert optuna.predicted["params_fraction"] <= 0.5 and optuna.predicted["macs_fraction"] <= 0.6
    with pytest.raises(PrunekitError, match="no diffusers plan keeps macs within 0.01"):
        plan(model, budget="params=0.9,macs=0.01", sensitivity=run, out=tmp_path / "x.json", progress=False)


def test_the_summary_says_when_a_preset_beats_the_plan_within_its_budget(tmp_path):
    run = write_run(tmp_path / "run", TINY, random_table(TINY, seed=5))
    made = plan(str(write_config(tmp_path)), budget=0.9, sensitivity=run, out=tmp_path / "p.json", progress=False)
    presets = made.provenance["planner"]["presets"]
    assert "note:" not in summary(made)  # no preset within 0.9 of the parameters scores below the plan here
    fits = next(name for name, row in presets.items() if row["params_fraction"] <= 0.9)
    presets[fits]["loss"] = made.predicted["loss"] / 2
    assert f"note: {fits} fits the budget at a lower loss" in summary(made) and "--method optuna" in summary(made)


def test_cli_takes_bounds_on_several_costs(tmp_path, capsys):
    run = write_run(tmp_path / "run", TINY, pointing_at("bk-small", TINY))
    model = str(write_config(tmp_path))
    assert main(["plan", "--model", model, "--budget", "params=0.6,macs=0.7", "--sensitivity", str(run)]) == 0
    assert "budget params=0.6,macs=0.7" in capsys.readouterr().out
    assert main(["plan", "--model", model, "--budget", "params=0.6,flops=1", "--sensitivity", str(run),
                 "--force"]) == 2
    assert "unknown cost 'flops'" in capsys.readouterr().err


def test_greedy_treats_steps_it_cannot_tell_apart_as_ties_and_saves_more():
    from prunekit.planner.greedy import greedy

    class TwoUnits:  # removing a saves 0.1 of the cost at 0.09 loss, b saves 0.3 at 0.30
        def full(self):
            return frozenset()

        def removals(self, state):
            return [state | {name} for name in ("a", "b") if name not in state]

        def restorations(self, state):
            return [state - {name} for name in state]

        def remove(self, state):
            return sorted(state)

    saves, losses = {"a": 0.1, "b": 0.3}, {"a": 0.09, "b": 0.30}
    cost = lambda state: 1 - sum(saves[n] for n in state) - 0.9  # noqa: E731 - excess over a budget of 0.9
    loss = lambda state: sum(losses[n] for n in state)  # noqa: E731
    assert greedy(TwoUnits(), cost, loss, 0.0) == {"a"}  # the lower loss per cost saved
    widths = {"a": 0.02, "b": 0.01}  # rates 0.9 +- 0.2 and 1.0 +- 0.03: they overlap
    assert greedy(TwoUnits(), cost, loss, 0.0, lambda state: sum(widths[n] for n in state)) == {"b"}
    narrow = {"a": 0.001, "b": 0.001}
    assert greedy(TwoUnits(), cost, loss, 0.0, lambda state: sum(narrow[n] for n in state)) == {"a"}


# -- the recoverable objective's search -------------------------------------------------------------------

def _halving(candidates, loss_at, storage, name="halving"):
    from prunekit.planner.search import successive_halving

    return successive_halving(candidates, loss_at, schedule=[10, 30, 90], reduction=3, storage=storage,
                              study_name=name)


def test_successive_halving_keeps_the_best_third_of_every_rung_whatever_the_order(tmp_path):
    finals = [0.5, 0.4, 0.9, 0.3, 0.95, 0.8, 0.2]  # each candidate's loss, the same at every rung
    for order, name in ((range(7), "forward"), (reversed(range(7)), "backward")):
        candidates = [{"remove": [f"u{i}"], "costs": {"params": 0.5}} for i in order]
        spent = []

        def loss_at(remove, steps):
            spent.append((remove[0], steps))
            return finals[int(remove[0][1:])]

        study = _halving(candidates, loss_at, f"sqlite:///{tmp_path / 's.db'}", name)
        reached = {t.user_attrs["plan"]["remove"][0]: (t.state.name, t.last_step) for t in study.trials}
        assert reached["u6"] == ("COMPLETE", 90) and reached["u3"] == ("PRUNED", 30)  # 7 // 3 = 2 go on, then 1
        assert all(reached[f"u{i}"] == ("PRUNED", 10) for i in (0, 1, 2, 4, 5)), reached
        assert sorted(spent) == sorted([(f"u{i}", 10) for i in range(7)] + [("u3", 30), ("u6", 30), ("u6", 90)])
        best = min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
        assert best.user_attrs["plan"]["remove"] == ["u6"] and best.value == 0.2


def test_an_interrupted_recoverable_search_resumes_where_it_stopped(tmp_path):
    candidates = [{"remove": [f"u{i}"], "costs": {"params": 0.5}} for i in range(6)]
    measured, calls = {}, []

    def loss_at(remove, steps, stop_at=None):  # caches as the recoverable objective does
        if (remove[0], steps) == stop_at:
            raise KeyboardInterrupt
        if (remove[0], steps) not in measured:
            calls.append((remove[0], steps))
            measured[remove[0], steps] = int(remove[0][1:]) / steps
        return measured[remove[0], steps]

    storage = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(KeyboardInterrupt):  # killed while the second finalist went on to 30 steps
        _halving(candidates, lambda r, s: loss_at(r, s, stop_at=("u1", 30)), storage)
    assert calls == [(f"u{i}", 10) for i in range(6)] + [("u0", 30)]
    study = _halving(candidates, loss_at, storage)
    assert calls[7:] == [("u1", 30), ("u0", 90)]  # nothing it finished is measured again
    finished = {t.user_attrs["plan"]["remove"][0]: t.state.name for t in study.trials
                if t.state.name in ("COMPLETE", "PRUNED")}
    assert finished == {"u0": "COMPLETE", "u1": "PRUNED", **{f"u{i}": "PRUNED" for i in range(2, 6)}}
