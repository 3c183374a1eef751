"""The study that settles it: prunekit's plans against the presets after equal retraining, on a bundled model.

    python analyses/after_kd.py [--model tiny-sd] [--presets bk-base,bk-small,bk-tiny] [--seeds 0,1,2]
        [--steps 300] [--random 4] [--num-prompts 100] [--granularity pair|block]
        [--objectives additive,measured,recoverable] [--criteria cosine,mse] [--work runs/after_kd]
        [--out reports/after_kd]

The sweep is at pair granularity (then stages), or with `--granularity block` at block granularity, whose
transformer layers the planner may then remove (SDXL). A space too large to list (transformer depths) gives its
random plans by sampling, and has no recoverable search.

At each preset's own cost (a budget of its parameters and its MACs, both at most the preset's), the candidates
are the preset, the plans of the additive, measured and recoverable objectives (prunekit.planner, from one
full sensitivity sweep of the model), and `--random` random plans of the diffusers space within the budget that
use at least 90% of a bound. Every distinct candidate is distilled with one recipe (the same steps, data and
settings; `--seeds` seeds each) and scored on held-out shapes prompts; its quality is attributes-all and CLIP
score, mean and sd over the seeds. A plan beats the preset when its mean exceeds the preset's by more than
twice the larger of the two sds. Each objective's prediction (its loss: the additive sum, the measured loss on
8 prompts, the recoverable loss after the first rung) is correlated with the quality after retraining
(Spearman, over every candidate; lower loss should mean higher quality), and so is each cheap criterion's
(`--criteria`: the sum of the candidate's unit scores from a `--mode cosine` or `--mode mse` sweep, one intact
pass each, in WORK/sweep-CRITERION), beside each one's sweep minutes. The recoverable search's cost is its
KD steps and wall time against one distillation of the recipe (the time of the run that searched, kept in
WORK/PRESET/search-OBJECTIVE.json, as a rerun resumes the search from its storage), with and without the
latent cache the search builds and every retraining reads (a distillation's time is its training alone). Everything finished is kept in --work: a rerun
measures only what is missing. Writes into --out: results.csv, table.md, plot.png; and every candidate into the
sweep's comparison.csv (prunekit.comparison), so `prunekit report WORK/sweep` sets them side by side.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from prunekit.quiet import quiet_libraries

quiet_libraries()
import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from prunekit import comparison  # noqa: E402
from prunekit.distill import DistillOptions, checkpoints, distill  # noqa: E402
from prunekit.evaluate import evaluate  # noqa: E402
from prunekit.graph import all_units  # noqa: E402
from prunekit.models import resolve_model  # noqa: E402
from prunekit.plan import Plan, make_plan  # noqa: E402
from prunekit.planner import plan  # noqa: E402
from prunekit.planner.budget import Budget  # noqa: E402
from prunekit.cache import Cache  # noqa: E402
from prunekit.planner.measured import deferred_measurer  # noqa: E402
from prunekit.planner.objective import Additive  # noqa: E402
from prunekit.planner.recoverable import (  # noqa: E402
    ENUMERABLE, RecoverOptions, Recoverable, feasible, latent_cache, random_plans)
from prunekit.families import family_of  # noqa: E402
from prunekit.planner.space import Space, make_space  # noqa: E402
from prunekit.rundir import RunDir  # noqa: E402
from prunekit.sensitivity import sensitivity  # noqa: E402
from prunekit.students import load_student_unet, pipeline_with  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

QUALITY = ("attr_all", "clip_score")
OBJECTIVES = ("additive", "measured", "recoverable")


def recipe(args, seed: int, resume: bool) -> DistillOptions:
    """The one retraining every candidate gets (analyses/recovery.py found it; see reports/recovery), from the
    recoverable search's latent cache (the same data: whichever runs first builds it for all)."""
    return DistillOptions(steps=args.steps, batch_size=32, lr=5e-4, lr_schedule="cosine", warmup=args.steps // 10,
                          ema=True, ema_decay=0.999, caption_dropout=0.1, feat_norm="teacher", cache_latents=True,
                          cache_dir=str(latent_cache(RunDir(args.work / "sweep"))), num_examples=10_000, checkpoint_every=args.steps,
                          keep_checkpoints=1, seed=seed, eval_num_prompts=0, resume=resume, progress=False)


def quality(model, pipe, args) -> dict[str, float]:
    """Attributes-all and CLIP score on the held-out prompts (the same for the teacher and every student)."""
    result = evaluate(model, pipeline=pipe, prompts="shapes", num_prompts=args.num_prompts, progress=False)
    return {"attr_all": result["attribute_accuracy"]["all"], "clip_score": result["clip_score"]}


def sampled(space: Space, costs, budget: Budget, count: int, seed: int, exclude) -> list[dict]:
    """`count` random plans of a space too large to list: states drawn uniformly (seeded) within the budget and
    using at least 90% of a bound, none of `exclude`."""
    rng, found = random.Random(seed), {}
    for _ in range(200_000 if count else 0):
        state = space.sample(rng)
        spent, remove = costs(state), space.remove(state)
        if budget.fits(spent) and max(spent[m] / budget[m] for m in budget.metrics) >= 0.9 and remove not in exclude:
            found.setdefault(" ".join(remove), {"remove": remove, "costs": spent})
            if len(found) == count:
                break
    return list(found.values())


def candidates(model, run: RunDir, preset: str, budget: Budget, args, work: Path) -> list[dict]:
    """The preset, the objectives' plans and the random plans at `budget` (duplicates merged)."""
    from prunekit.plan import preset_remove

    additive = Additive(run.sensitivities(), all_units(model.config, costs=False))
    space = make_space("diffusers", model.config, scorable=additive.scores,  # the planner's space for this sweep
                       tokens=model.tokens)
    found = [{"method": f"preset:{preset}", "remove": preset_remove(preset, model.config)}]
    for objective in args.objectives:
        timing = work / f"search-{objective}.json"  # the first search's wall time: a rerun resumes from storage
        started, clock = time.perf_counter(), time.time()
        measure = deferred_measurer(model.name, str(run.path)) if objective == "measured" else None
        made = plan(model, budget=budget, sensitivity=str(run.path), objective=objective, method="optuna",
                    trials=100, measure=measure, recover=RecoverOptions(first_rung=args.first_rung, pool=args.pool),
                    out=work / f"plan-{objective}.json", force=True, progress=False)
        if not timing.is_file():
            build = latent_cache(run) / "build.json"  # the shared latent cache, if this search built it
            built = build.is_file() and build.stat().st_mtime >= clock
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started,
                                          "cache_seconds": json.loads(build.read_text())["seconds"] if built else 0}))
        kept = json.loads(timing.read_text())  # seconds null: searched before times were kept
        search = {**kept, "kd_steps": made.provenance["planner"].get("kd_steps")}
        found.append({"method": objective, "remove": made.remove, "searches": {objective: search}})
    costs = lambda state: {m: space.fraction(state, m) for m in ("params", "macs")}  # noqa: E731
    exclude = [c["remove"] for c in found]
    chosen = (random_plans(feasible(space, costs, budget), budget, args.random, args.seed, exclude)
              if space.size() <= ENUMERABLE else sampled(space, costs, budget, args.random, args.seed, exclude))
    for index, chosen in enumerate(chosen):
        found.append({"method": f"random {index + 1}", "remove": chosen["remove"]})
    merged: dict[str, dict] = {}
    for candidate in found:  # one candidate per distinct plan; its methods joined
        key = " ".join(sorted(candidate["remove"]))
        if key in merged:
            kept = merged[key]
            kept.setdefault("searches", {}).update(candidate.get("searches", {}))  # each objective's own search
            kept["method"] += f" = {candidate['method']}"
        else:
            merged[key] = candidate
    return list(merged.values())


def retrain(model, remove: list[str], folder: Path, args) -> list[dict]:
    """The candidate distilled with every seed: its held-out scores per seed (finished runs are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    plan_path = folder / "plan.json"
    if not plan_path.is_file():
        make_plan(model.name, model.config, remove, "after-kd candidate", tokens=model.tokens).save(plan_path)
    elif sorted(Plan.load(plan_path).remove) != sorted(remove):  # a slug reused by another plan: never mix runs
        raise SystemExit(f"{folder} holds another plan's runs; move it away or choose another --work.")
    scores = []
    for seed in args.seeds:
        out = folder / f"seed{seed}"
        result_path = out / "quality.json"
        if not result_path.is_file():
            if not (out / "student_ema" / "prunekit_student.json").is_file():
                distill(plan_path, out=out, teacher=model,
                        options=recipe(args, seed, bool(checkpoints.complete(out / "checkpoints"))))
            teacher = model.pipeline()
            unet = load_student_unet(out / "student_ema")
            pipe = pipeline_with(teacher, unet.eval())
            result_path.write_text(json.dumps(quality(model, pipe, args)))
        scores.append({"seed": seed, **json.loads(result_path.read_text())})
    return scores



def criteria_sweeps(model, args) -> dict[str, float]:
    """Each cheap criterion's sweep (`--mode cosine|mse`, one intact pass) of every unit the study plans with, in
    WORK/sweep-CRITERION; its wall time (kept from the run that swept)."""
    minutes = {}
    for criterion in args.criteria:
        folder = args.work / f"sweep-{criterion}"
        timing = folder / "minutes.json"
        started = time.perf_counter()
        for granularity in args.swept:
            sensitivity(model, str(folder), mode=criterion, granularity=granularity, num_prompts=args.sweep_prompts,
                        progress=False)
        if not timing.is_file():
            timing.write_text(json.dumps({"minutes": (time.perf_counter() - started) / 60}))
        minutes[criterion] = json.loads(timing.read_text())["minutes"]
    return minutes


def covered(model, folder: Path, remove: list[str], args, **mode) -> RunDir:
    """The sweep in `folder`, extended to any unit of `remove` it lacks (a measured plan may name units finer than
    the sweep's granularity: the one-resnet mid block's)."""
    run = RunDir(folder)
    missing = [name for name in remove if name not in run.sensitivities()]
    if missing:
        sensitivity(model, str(folder), units=",".join(missing), granularity="block", num_prompts=args.sweep_prompts,
                    progress=False, **mode)
    return run


def predictions(model, run: RunDir, remove: list[str], args) -> dict[str, float]:
    """Each objective's and criterion's loss for a candidate (lower should mean better after retraining)."""
    from prunekit.planner.objective import Measured

    losses = {"additive": lambda: Additive(run.sensitivities(), all_units(model.config, costs=False))(remove),
              "measured": lambda: Measured(deferred_measurer(model.name, str(run.path)),
                                           Cache(run.cache_path, "measured"))(remove),
              "recoverable": lambda: Recoverable(model, run,
                                                 RecoverOptions(first_rung=args.first_rung, pool=args.pool),
                                                 Cache(run.cache_path, "recoverable")).predict(remove)}
    covered(model, run.path, remove, args)
    found = {objective: losses[objective]() for objective in args.objectives}
    units = all_units(model.config, costs=False)
    for criterion in args.criteria:  # the sum of the criterion's unit scores, as the additive objective sums
        sweep = covered(model, args.work / f"sweep-{criterion}", remove, args, mode=criterion)
        found[criterion] = Additive(sweep.sensitivities(), units)(remove)
    return found


def summarise(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for key in QUALITY:
        frame[f"{key}_mean"] = frame["scores"].map(lambda s: statistics.mean(x[key] for x in s))
        frame[f"{key}_sd"] = frame["scores"].map(lambda s: statistics.stdev(x[key] for x in s) if len(s) > 1 else 0)
    return frame


def verdicts(frame: pd.DataFrame, objectives) -> list[dict]:
    """Per budget and objective: its plan against the preset, by more than 2 sd (the larger of the two)."""
    out = []
    for preset, group in frame.groupby("preset"):
        base = group[group["method"].str.contains("preset:")].iloc[0]
        for objective in objectives:
            row = group[group["method"].str.contains(objective)].iloc[0]
            entry = {"preset": preset, "objective": objective, "same plan": row["method"] == base["method"]}
            for key in QUALITY:
                margin = row[f"{key}_mean"] - base[f"{key}_mean"]
                sd = max(row[f"{key}_sd"], base[f"{key}_sd"])
                entry[f"{key} diff"] = margin
                entry[f"{key} 2sd"] = 2 * sd
                entry[f"{key} needed"] = base[f"{key}_mean"] + 2 * sd  # the mean that would beat the preset
                entry[f"{key} beats"] = bool(margin > 2 * sd)
            out.append(entry)
    return out


def correlations(frame: pd.DataFrame, objectives, minutes: dict[str, float]) -> list[dict]:
    rows = []
    for objective in objectives:
        row = {"objective": objective, "sweep minutes": minutes.get(objective, float("nan"))}
        for key in QUALITY:
            rank = lambda g: spearmanr(-g[f"pred_{objective}"], g[f"{key}_mean"]).statistic  # noqa: E731
            row[f"{key} (all)"] = float(rank(frame)) if len(frame) > 2 else float("nan")  # two points rank as +-1
            within = [rank(g) for _, g in frame.groupby("preset") if len(g) > 2]
            row[f"{key} (within budgets)"] = float(statistics.mean(within)) if within else float("nan")
        rows.append(row)
    return rows


def markdown(rows: list[dict] | pd.DataFrame, columns: list[str]) -> str:
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in records]
    return "\n".join(lines)


def write(out: Path, frame: pd.DataFrame, teacher: dict, args, cost: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame.drop(columns=["scores"]).assign(remove=frame["remove"].map(" ".join)).to_csv(out / "results.csv",
                                                                                       index=False)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, key, label in ((axes[0], "attr_all", "attributes, all four"), (axes[1], "clip_score", "CLIP score")):
        for preset, group in frame.groupby("preset"):
            axis.errorbar(group["params_fraction"], group[f"{key}_mean"], yerr=group[f"{key}_sd"], fmt="o",
                          markersize=4, capsize=2, label=preset, alpha=0.8)
            chosen = group[group["method"].str.contains("recoverable")]
            axis.scatter(chosen["params_fraction"], chosen[f"{key}_mean"], marker="*", s=120, color="#D55E00",
                         zorder=3)
            base = group[group["method"].str.contains("preset:")]
            axis.scatter(base["params_fraction"], base[f"{key}_mean"], marker="s", s=60, facecolors="none",
                         edgecolors="black", zorder=3)
        axis.axhline(teacher[key], color="gray", linewidth=0.8, label="teacher")
        axis.set_xlabel("parameters kept (fraction of the teacher's U-Net)")
        axis.set_ylabel(f"{label} after retraining")
        axis.legend(fontsize=7)
    figure.suptitle("After equal retraining: presets (squares), recoverable plans (stars), other plans", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "plot.png", dpi=120)
    plt.close(figure)
    shown = frame.assign(attr=frame.apply(lambda r: f"{r['attr_all_mean']:.3f} ± {r['attr_all_sd']:.3f}", axis=1),
                         clip=frame.apply(lambda r: f"{r['clip_score_mean']:.2f} ± {r['clip_score_sd']:.2f}", axis=1))
    command = (f"--model {args.model} --presets {args.presets} --granularity {args.granularity} --objectives "
               f"{','.join(args.objectives)} --criteria {','.join(args.criteria) or 'none'} --seeds {','.join(map(str, args.seeds))} --steps {args.steps} "
               f"--random {args.random} --num-prompts {args.num_prompts}")
    searched = "recoverable" in args.objectives
    lines = [f"# After retraining: planned students against the presets on {args.model}", "",
             f"`python analyses/after_kd.py {command}`. Every candidate is distilled with the same "
             f"recipe ({args.steps} steps, batch 32, lr 5e-4 cosine, EMA, caption dropout 0.1, task + output KD + "
             f"feature KD) and scored on {args.num_prompts} held-out shapes prompts; mean ± sd over seeds "
             f"{', '.join(map(str, args.seeds))}. Teacher: attributes-all {teacher['attr_all']:.3f}, CLIP "
             f"{teacher['clip_score']:.2f}.", "",
             "## Candidates", "",
             markdown(shown, ["preset", "method", "params_fraction", "macs_fraction", "attr", "clip",
                              *(f"pred_{name}" for name in args.objectives + args.criteria)]), "",
             "## Each objective's plan against the preset (beats: by more than 2 sd)", "",
             "needed: the mean a plan must pass to beat the preset; retraining cannot take a student far past its "
             "teacher's score (above).", "",
             markdown(verdicts(frame, args.objectives),
                      ["preset", "objective", "same plan", "attr_all diff", "attr_all 2sd", "attr_all needed",
                       "attr_all beats", "clip_score diff", "clip_score 2sd", "clip_score needed",
                       "clip_score beats"]),
             "", "## How well each objective and criterion predicts quality after retraining (Spearman of -loss "
             "with quality)", "",
             "A criterion's loss is the sum of its unit scores over the candidate's units (cosine: one minus the "
             "cosine similarity of each unit's output and its stand-in's, ShortGPT's and SANA-1.5's; mse: their "
             "mean squared difference, Flux.1-Lite's), from one intact pass; the full sweep's minutes are the sum "
             "of its units' own.", "",
             markdown(correlations(frame, args.objectives + args.criteria, cost["sweep_minutes"]),
                      ["objective", "sweep minutes", "attr_all (all)", "attr_all (within budgets)",
                       "clip_score (all)", "clip_score (within budgets)"]), "",
             *(["## The recoverable search's cost", "",
                markdown(cost["rows"], ["preset", "kd_steps", "kd_ratio", "search_minutes", "wall_ratio",
                                         "cache_minutes", "ratio_less_cache"]), "",
                "cache_minutes: the latent cache the search built, which every retraining then reads; "
                "ratio_less_cache leaves it out, as the distillations' own training time does.", ""]
               if searched else []),
             f"A distillation of the recipe: {args.steps} KD steps, {cost['distill_minutes']:.2f} min of training "
             "(median of the study's runs).", ""]
    (out / "table.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-sd", help="a bundled model (tiny-sd, tiny-sdxl, tiny-sd3)")
    parser.add_argument("--presets", default="bk-base,bk-small,bk-tiny")
    parser.add_argument("--granularity", choices=("pair", "block"), default="pair",
                        help="the sweep's: pairs then stages, or blocks (transformer layers too)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help="the planner objectives compared")
    parser.add_argument("--criteria", default="cosine,mse",
                        help="the cheap block scores compared (sweep modes; 'none' for none)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300, help="KD steps of the recipe")
    parser.add_argument("--random", type=int, default=4, help="random plans per budget")
    parser.add_argument("--first-rung", type=int, default=RecoverOptions.first_rung,
                        help="the recoverable search's first rung (its last: 3x)")
    parser.add_argument("--pool", type=int, default=6, help="the recoverable search's candidates")
    parser.add_argument("--num-prompts", type=int, default=100, help="held-out prompts per score")
    parser.add_argument("--sweep-prompts", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="picks the random plans")
    parser.add_argument("--work", default="runs/after_kd")
    parser.add_argument("--out", default="reports/after_kd")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.objectives = args.objectives.split(",")
    args.criteria = [] if args.criteria == "none" else args.criteria.split(",")
    args.work = Path(args.work)
    model = resolve_model(args.model)
    run = RunDir(args.work / "sweep")
    swept = ("pair", "stage") if args.granularity == "pair" else ("block",)
    args.swept = [g for g in swept if g in family_of(model.config).granularities]
    for granularity in args.swept:
        sensitivity(model, str(run.path), granularity=granularity, num_prompts=args.sweep_prompts, progress=False)
    sweep_minutes = {"additive": float(pd.read_csv(run.table_path)["seconds"].sum()) / 60,  # the full sweep's units
                     **criteria_sweeps(model, args)}

    rows, timings, cost_rows, compared = [], [], [], []
    for preset in args.presets.split(","):
        budget = Budget.of_preset(preset, model.config, model.tokens)
        work = args.work / preset
        found = candidates(model, run, preset, budget, args, work)
        for candidate in found:
            made = make_plan(model.name, model.config, candidate["remove"], "after-kd candidate", tokens=model.tokens)
            slug = "-".join(candidate["method"].split(" = ")[0].replace(":", "-").split())
            started = time.perf_counter()
            scores = retrain(model, candidate["remove"], work / slug, args)
            timings.append(time.perf_counter() - started)
            rows.append({"preset": preset, "budget": str(budget), "method": candidate["method"],
                         "params_fraction": made.predicted["params_fraction"],
                         "macs_fraction": made.predicted["macs_fraction"], "remove": candidate["remove"],
                         "scores": scores, **{f"pred_{k}": v for k, v in predictions(model, run, candidate["remove"],
                                                                                      args).items()}})
            compared.append(comparison.row(budget, candidate["method"], made,
                                           [{key: score[key] for key in QUALITY} for score in scores]))
            comparison.write(run.comparison_path, compared)
            print(rows[-1]["preset"], rows[-1]["method"], scores, flush=True)
            search = candidate.get("searches", {}).get("recoverable")
            if search is not None:
                seconds = search["seconds"]  # None: searched by an earlier run that kept no time
                cache = search.get("cache_seconds")  # None: searched before the cache build was kept
                cost_rows.append({"preset": preset, "kd_steps": search["kd_steps"],
                                  "search_minutes": float("nan") if seconds is None else seconds / 60,
                                  "cache_minutes": float("nan") if cache is None else cache / 60})
    distill_minutes = statistics.median(  # training alone, the latent cache built once for all
        json.loads(p.read_text())["seconds"] / 60 for p in args.work.glob("*/*/seed*/checkpoints/*/trainer_state.json"))
    for row in cost_rows:
        row["kd_ratio"] = (row["kd_steps"] or 0) / args.steps
        row["wall_ratio"] = row["search_minutes"] / distill_minutes if distill_minutes else float("nan")
        row["ratio_less_cache"] = ((row["search_minutes"] - row["cache_minutes"]) / distill_minutes
                                   if distill_minutes else float("nan"))
    teacher_path = args.work / "teacher_quality.json"
    if not teacher_path.is_file():
        teacher_path.write_text(json.dumps(quality(model, model.pipeline(), args)))
    teacher = json.loads(teacher_path.read_text())
    frame = summarise(rows)
    write(Path(args.out), frame, teacher, args, {"rows": cost_rows, "distill_minutes": distill_minutes,
                                                 "sweep_minutes": sweep_minutes})
    print((Path(args.out) / "table.md").read_text())
    return frame


if __name__ == "__main__":
    main()
