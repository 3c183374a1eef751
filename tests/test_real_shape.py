"""analyses/real_shape.py: the loop's commands on a random pipeline of an alias's architecture, stage by stage."""
import json

import pytest


@pytest.fixture
def script(analysis_script):
    return analysis_script("real_shape")


@pytest.mark.slow
def test_the_loop_runs_on_a_random_pipeline_and_the_student_reloads_at_the_plans_size(script, tmp_path, capsys):
    argv = ["--model", "tiny-sd", "--budget", "macs=0.9", "--work", str(tmp_path), "--out", str(tmp_path / "out")]
    summary = script.main(argv)
    stages = summary["stages"]
    assert list(stages) == ["build", "sensitivity", "plan", "distill", "report", "reload"]
    assert not stages["build"]["kept"]  # built by this run
    assert all(stage["rc"] == 0 for stage in stages.values())
    assert all(stages[name]["peak_gb"] > 0.1 for name in ("build", "sensitivity", "plan", "distill", "report"))
    assert stages["reload"]["params"] == stages["reload"]["planned"]
    folder = tmp_path / "tiny-sd"
    assert json.loads((folder / "stages.json").read_text()) == summary
    assert (folder / "run" / "report.html").is_file()
    assert json.loads((folder / "pipe" / "unet" / "config.json").read_text())["sample_size"] == 16
    assert "reload       plain diffusers" in capsys.readouterr().out
    table = (tmp_path / "out" / "tiny-sd.md").read_text()
    assert f"`python analyses/real_shape.py {' '.join(argv)}`" in table and "| distill | 0 |" in table
    assert f"{stages['reload']['params']:,} denoiser parameters" in table


def test_a_failing_stage_stops_the_check_and_names_its_log(script, tmp_path):
    with pytest.raises(SystemExit, match=r"sensitivity failed on tiny-sd \(see .*sensitivity\.log\)"):
        script.main(["--model", "tiny-sd", "--units", "nosuch", "--work", str(tmp_path), "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "tiny-sd" / "stages.json").read_text())
    assert summary["stages"]["sensitivity"]["rc"] == 2 and "plan" not in summary["stages"]
    assert "no unit 'nosuch'" in (tmp_path / "tiny-sd" / "sensitivity.log").read_text()
    assert "| sensitivity | 2 |" in (tmp_path / "tiny-sd.md").read_text()
