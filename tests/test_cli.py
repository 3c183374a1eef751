"""The command line: every command has --help, output formats, and user errors exit 2 with one line."""
import json
import subprocess
import sys

import pytest

from prunekit.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, timeout=300)


def test_every_command_has_help(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: prunekit " + name in capsys.readouterr().out


def test_inspect_table_json_csv(capsys):
    assert main(["inspect", "sd-v1-4", "--granularity", "pair"]) == 0
    table = capsys.readouterr().out
    assert "down0.pair1" in table and "859,520,964 params" in table and "338.83G MACs per step" in table
    assert main(["inspect", "sd-v1-4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["params"] == 859_520_964 and len(data["units"]) == 44
    assert main(["inspect", "sdxl-base", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("unit,kind,stage,depth,params")


def test_inspect_says_where_each_unit_lies_in_units_that_suit_it(capsys):
    assert main(["inspect", "tiny-sd", "--granularity", "stage"]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:6]}
    assert [rows[name][2] for name in ("mid", "stage0", "stage1", "stage2")] == ["4", "3", "2", "1"]  # depth
    assert rows["stage2"][5] == "69.76M" and "0.00G" not in table  # tiny-sd's MACs (32 tokens) in M, not 0.00G
    assert "MACs+attn is torch's FLOP counter halved" in table


def test_user_error_is_one_line_and_exit_2():
    result = run("inspect", "no-such-model")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown model" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sweep_is_extended_with_its_own_settings(tmp_path, capsys):
    """A stage sweep cannot feed the planner's pair space; sweeping its missing units into the same run, without
    repeating its settings, extends it with them (an explicit setting that differs is still refused)."""
    out = str(tmp_path / "run")
    assert main(["sensitivity", "--model", "tiny-sd", "--out", out, "--units", "stage2", "--num-prompts", "1",
                 "--steps", "2", "--metrics", "teacher"]) == 0
    capsys.readouterr()
    assert main(["sensitivity", "--model", "tiny-sd", "--out", out, "--units", "down0.pair0"]) == 0
    said = capsys.readouterr().out
    assert "extending it with its own" in said and "--num-prompts 1" in said and "--steps 2" in said
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["args"]["num_prompts"] == 1 and record["args"]["metrics"] == ["teacher"]
    rows = (tmp_path / "run" / "sensitivity.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["stage2", "down0.pair0"]
    assert main(["sensitivity", "--model", "tiny-sd", "--out", out, "--units", "mid", "--steps", "3"]) == 2
    assert "steps: 2 there, 3 here" in capsys.readouterr().err


def test_sdxl_presets_are_planned_offline_and_misfits_refused(tmp_path, capsys):
    from prunekit.cli import PRESET_NAMES
    from prunekit.plan import PRESETS

    assert PRESET_NAMES == PRESETS  # the parser's list, kept free of torch, is the registry's
    assert main(["plan", "--model", "sdxl-base", "--preset", "koala-like", "-o", str(tmp_path / "k.json")]) == 0
    assert json.loads((tmp_path / "k.json").read_text())["predicted"]["params"] == 1_161_184_324
    assert main(["plan", "--model", "sd-v1-4", "--preset", "ssd-like", "-o", str(tmp_path / "s.json")]) == 2
    assert "needs an SDXL-like U-Net" in capsys.readouterr().err and not (tmp_path / "s.json").exists()
