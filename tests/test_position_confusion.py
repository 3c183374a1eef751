"""analyses/position_confusion.py: its bookkeeping on known readings, and a run on a stand-in pipeline."""
import pytest

from prunekit.shapes.data import POSITIONS, parse_caption


@pytest.fixture
def script(analysis_script):
    return analysis_script("position_confusion")


def test_a_model_that_follows_its_captions_scores_every_place_right(script, monkeypatch):
    monkeypatch.setattr(script, "seen_positions",
                        lambda pipe, captions, seeds, steps, guidance: [parse_caption(c).position for c in captions])
    pairs, accuracy = script.confusion(None, 12, seed=0, steps=1, guidance=1.0)
    assert accuracy == {"exact": 1.0, "row": 1.0, "column": 1.0}
    assert sum(pairs.values()) == 12 and all(asked == seen for asked, seen in pairs)
    probe = script.caption_or_noise(None, 3, seed=0, steps=1, guidance=1.0)
    assert probe == {"seeds": 3, "mean_distinct_places": 5.0, "right": 1.0, "one_place_for_all_five": 0.0}


def test_a_model_led_by_its_noise_lands_once_per_seed_and_mirrors_are_split_into_row_and_column(script, monkeypatch):
    mirror = {"in the top left": "in the top right", "in the top right": "in the top left",
              "in the bottom left": "in the bottom right", "in the bottom right": "in the bottom left",
              "in the center": "in the center"}
    monkeypatch.setattr(script, "seen_positions",
                        lambda pipe, captions, seeds, steps, guidance: [mirror[parse_caption(c).position]
                                                                        for c in captions])
    _, accuracy = script.confusion(None, 40, seed=0, steps=1, guidance=1.0)
    assert accuracy["row"] == 1.0 and accuracy["exact"] == accuracy["column"] < 0.5
    monkeypatch.setattr(script, "seen_positions",
                        lambda pipe, captions, seeds, steps, guidance: ["in the center"] * len(captions))
    probe = script.caption_or_noise(None, 2, seed=0, steps=1, guidance=1.0)
    assert probe["mean_distinct_places"] == 1.0 and probe["one_place_for_all_five"] == 1.0
    assert probe["right"] == pytest.approx(1 / len(POSITIONS))


def test_a_run_writes_a_confusion_table_over_every_prompt(script, pipe_dir, tmp_path, one_thread):
    result = script.main(["--model", str(pipe_dir), "--num-prompts", "4", "--seeds", "1", "--steps", "2",
                          "--guidance", "1.5", "--out", str(tmp_path)])
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert rows[0] == "asked,seen,count" and sum(int(row.rsplit(",", 1)[1]) for row in rows[1:]) == 4
    assert 1.0 <= result["mean_distinct_places"] <= 5.0
    assert "guidance 1.5" in (tmp_path / "table.md").read_text()
