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
    assert rows["stage2"][5] == "73.45M" and "0.00G" not in table  # tiny-sd's MACs in M, not 0.00G
    assert "MACs+attn is torch's FLOP counter halved" in table


def test_user_error_is_one_line_and_exit_2():
    result = run("inspect", "no-such-model")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown model" in result.stderr
    assert "Traceback" not in result.stderr

