"""Where a captioned-shapes model puts its objects: the caption or the initial noise?

1. Confusion: held-out prompts, each image's asked position against the one the judge sees, with the
   row (top / centre / bottom) and column (left / centre / right) right on their own.
2. Caption or noise: for each of `--seeds` noise seeds, one held-out combination captioned at each of the
   five positions and sampled from that same noise. If the caption decides, the five images land at five
   places; if the noise decides, at one.

Writes reports/position_confusion/{table.md, table.csv}:
`python analyses/position_confusion.py [--model tiny-sd] [--num-prompts 200] [--seeds 40]`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
from collections import Counter
from pathlib import Path

from prunekit.shapes.judge import read
from prunekit.shapes.data import POSITIONS, parse_caption, prompts
from prunekit.generate import generate, image_seeds
from prunekit.models import resolve_model

UNREAD = "(unread)"


def _row(position: str) -> str:
    return next((word for word in ("top", "bottom") if word in position), "middle")


def _column(position: str) -> str:
    return next((word for word in ("left", "right") if word in position), "middle")


def seen_positions(pipe, captions: list[str], seeds: list[int], steps: int, guidance: float) -> list[str]:
    """The position the judge reads in each generated image (UNREAD where it reads none)."""
    readings = [read(image) for image in generate(pipe, captions, seeds, steps, guidance, progress=False)]
    return [UNREAD if reading is None else reading.position for reading in readings]


def confusion(pipe, num_prompts: int, seed: int, steps: int, guidance: float) -> tuple[Counter, dict]:
    """Counts of (asked, seen) positions on held-out prompts, and the row / column / exact accuracies."""
    captions = prompts("heldout", num_prompts, seed)
    asked = [parse_caption(caption).position for caption in captions]
    seen = seen_positions(pipe, captions, image_seeds(seed, num_prompts), steps, guidance)
    pairs = Counter(zip(asked, seen))

    def share(same) -> float:
        return sum(same(a, s) for a, s in zip(asked, seen)) / num_prompts

    accuracy = {"exact": share(lambda a, s: a == s),
                "row": share(lambda a, s: s != UNREAD and _row(a) == _row(s)),
                "column": share(lambda a, s: s != UNREAD and _column(a) == _column(s))}
    return pairs, accuracy


def caption_or_noise(pipe, num_seeds: int, seed: int, steps: int, guidance: float) -> dict:
    """Per noise seed, one combination at all five positions: how many distinct places, how many right."""
    combos = [parse_caption(caption) for caption in prompts("heldout", num_seeds, seed)]
    names = list(POSITIONS)
    captions = [dataclasses.replace(combo, position=name).caption() for combo in combos for name in names]
    seeds = [noise for noise in image_seeds(seed + 1, num_seeds) for _ in names]
    seen = seen_positions(pipe, captions, seeds, steps, guidance)
    groups = [seen[i:i + len(names)] for i in range(0, len(seen), len(names))]
    return {"seeds": num_seeds,
            "mean_distinct_places": sum(len(set(group)) for group in groups) / num_seeds,
            "right": sum(s == name for group in groups for s, name in zip(group, names)) / len(seen),
            "one_place_for_all_five": sum(len(set(group)) == 1 for group in groups) / num_seeds}


def markdown(model: str, guidance: float, pairs: Counter, accuracy: dict, probe: dict, num_prompts: int) -> str:
    names = [*POSITIONS, UNREAD]
    lines = ["# Where the model puts its objects", "",
             f"Model `{model}`, guidance {guidance:g}, 25 PNDM steps; made by `python analyses/position_confusion.py`.",
             "", f"## Asked (rows) against seen (columns), {num_prompts} held-out prompts", "",
             "| asked \\ seen | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for asked in POSITIONS:
        lines.append(f"| {asked} | " + " | ".join(str(pairs[asked, seen]) for seen in names) + " |")
    lines += ["", f"Exact position {accuracy['exact']:.3f}; row (top / middle / bottom) {accuracy['row']:.3f}; "
              f"column (left / middle / right) {accuracy['column']:.3f}.", "",
              f"## Caption or noise ({probe['seeds']} noise seeds, each sampled at all five positions)", "",
              f"- distinct places per seed: {probe['mean_distinct_places']:.2f} of 5 (1: the noise decides; "
              "5: the caption does)",
              f"- seeds whose five captions all land at one place: {probe['one_place_for_all_five']:.3f}",
              f"- images at the asked position: {probe['right']:.3f}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="a captioned-shapes model: tiny-sd or a pipeline directory")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=40, help="noise seeds of the caption-or-noise probe")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, help="default: the model's recommended guidance")
    parser.add_argument("--out", default="reports/position_confusion")
    args = parser.parse_args(argv)
    model = resolve_model(args.model)
    pipe = model.pipeline()
    guidance = model.card.guidance if args.guidance is None else args.guidance
    pairs, accuracy = confusion(pipe, args.num_prompts, args.seed, args.steps, guidance)
    probe = caption_or_noise(pipe, args.seeds, args.seed, args.steps, guidance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["asked", "seen", "count"])
        writer.writerows([asked, seen, count] for (asked, seen), count in sorted(pairs.items()))
    (out / "table.md").write_text(markdown(args.model, guidance, pairs, accuracy, probe, args.num_prompts))
    print((out / "table.md").read_text())
    return {**accuracy, **probe}


if __name__ == "__main__":
    main()
