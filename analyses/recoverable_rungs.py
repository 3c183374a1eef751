"""Which rung of the recoverable search predicts quality after retraining: every candidate through every rung.

    python analyses/recoverable_rungs.py [--results A.csv,B.csv+C.csv] [--first-rung 30] [--rungs 3]
        [--work runs/recoverable_rungs] [--out reports/recoverable_rungs]

The recoverable objective (prunekit.planner.recoverable) scores a candidate after each rung of one short
distillation, and after_kd.py correlates its first rung's loss with the quality after retraining. Here every
distinct candidate of one or more after_kd studies (their results.csv: each plan's held-out quality over 3 seeds)
runs every rung, unpruned, and each rung's loss is correlated (Spearman of -loss) with attributes-all and CLIP
score after retraining, over each study's candidates and over all of them, and with both at once (the sum of
a candidate's two quality ranks). Beside them, how well the two qualities rank the candidates alike: one loss
that ranks one quality well can rank the other little better than that. Finished rungs are kept in --work (the
objective's own cache), so a rerun measures only what is missing; `--from RUNGS.csv` tabulates a kept rungs.csv
again without distilling. Writes rungs.csv and table.md into --out.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from prunekit.quiet import quiet_libraries

quiet_libraries()
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from prunekit.cache import Cache  # noqa: E402
from prunekit.models import resolve_model  # noqa: E402
from prunekit.planner.recoverable import RecoverOptions, Recoverable  # noqa: E402
from prunekit.rundir import RunDir  # noqa: E402

QUALITY = ("attr_all_mean", "clip_score_mean")


def distilled(model, studies: list[pd.DataFrame], options: RecoverOptions, work: Path) -> pd.DataFrame:
    """Every distinct candidate of the studies through every rung: its quality and its loss at each rung."""
    run = RunDir(work)
    run.path.mkdir(parents=True, exist_ok=True)
    objective = Recoverable(model, run, options, Cache(run.cache_path, "recoverable"))
    distinct = pd.concat(studies).drop_duplicates("remove").reset_index(drop=True)  # a plan in two studies: its first
    rows = []
    for _, candidate in distinct.iterrows():
        started = time.perf_counter()
        losses = {steps: objective.at(candidate["remove"].split(), steps) for steps in options.schedule}
        rows.append({"study": candidate["study"], "method": f"{candidate['preset']} {candidate['method']}",
                     "remove": candidate["remove"], **{q: candidate[q] for q in QUALITY},
                     **{f"loss@{s}": v for s, v in losses.items()}})
        print(rows[-1]["method"], {s: round(v, 3) for s, v in losses.items()},
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--results", default="reports/after_kd/results.csv",
                        help="after_kd studies' results.csv files, comma-separated (a+b: two files of one study)")
    parser.add_argument("--first-rung", type=int, default=30)
    parser.add_argument("--rungs", type=int, default=3)
    parser.add_argument("--work", default="runs/recoverable_rungs")
    parser.add_argument("--out", default="reports/recoverable_rungs")
    parser.add_argument("--from", dest="kept", help="a rungs.csv this script wrote: tabulate it again, distilling "
                                                    "nothing")
    args = parser.parse_args(argv)
    model = resolve_model(args.model)
    options = RecoverOptions(first_rung=args.first_rung, rungs=args.rungs)
    studies = [pd.concat(pd.read_csv(part) for part in path.split("+")).assign(study=path)  # a+b: one study
               for path in args.results.split(",")]
    frame = pd.read_csv(args.kept) if args.kept else distilled(model, studies, options, Path(args.work))
    groups = [(path, frame[frame["remove"].isin(study["remove"])]) for path, study in
              zip(args.results.split(","), studies)] + ([("all", frame)] if len(studies) > 1 else [])
    table = []
    for name, group in groups:
        both = sum(group[q].rank() for q in QUALITY)  # a candidate's two quality ranks, summed
        for label, quality in [*((q.removesuffix("_mean"), group[q]) for q in QUALITY), ("both (rank sum)", both)]:
            table.append({"candidates": f"{name} ({len(group)})", "quality": label,
                          **{f"after {steps} KD steps": spearmanr(-group[f"loss@{steps}"], quality).statistic
                             for steps in options.schedule},
                          "attr_all with clip_score": spearmanr(*(group[q] for q in QUALITY)).statistic})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "rungs.csv", index=False)
    lines = [f"# The recoverable objective's rungs against quality after retraining ({model.name})", "",
             f"`python analyses/recoverable_rungs.py --results {args.results} --first-rung {args.first_rung} "
             f"--rungs {args.rungs}`: {len(frame)} distinct candidates, each distilled through every rung "
             f"(one run, lr schedule over {options.schedule[-1]} steps, seed {options.seed}) and scored on "
             f"{options.num_prompts} calibration prompts; Spearman of -loss with each candidate's held-out quality "
             "after retraining (3 seeds, the study's); the last column: Spearman of the two qualities with each "
             "other over the same candidates.", "",
             "| " + " | ".join(table[0]) + " |", "|" + " --- |" * len(table[0])]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
              for row in table]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print((out / "table.md").read_text())
    return frame


if __name__ == "__main__":
    main()
