"""`prunekit report`: sections follow the run directory's files, user strings are escaped, the page needs
no network, and a real headless Chromium renders it without console errors (tests at the end)."""
import base64
import csv
import fcntl
import json
import os
import random
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from prunekit.errors import PrunekitError
from prunekit.graph import Removed, Unit, all_units, enumerate_units
from prunekit.models import fingerprint, unet_config
from prunekit.plan import make_plan, preset_remove
from prunekit.report import build_report

TINY = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
EVIL = "<script>alert(1)</script>"
PROMPTS = [EVIL, "a red circle at the top left", "a small blue square", "a green triangle & a \"quote\""]
PARTS = ("run", "sensitivity", "images", "plan", "pareto", "logs", "eval")
ALL_SECTIONS = {"run", "costs", "sensitivity", "images", "units", "plan", "pareto", "distill"}


def _csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colour = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (64, 64), (245, 245, 240))
    image.paste(colour, (rng.randrange(8, 24), rng.randrange(8, 24), rng.randrange(36, 56), rng.randrange(36, 56)))
    image.save(path)


def write_run(root: Path, parts=PARTS, model=None) -> Path:
    """A plausible run directory for the TINY U-Net (or the alias `model`) holding the files of `parts`."""
    rng = random.Random(0)
    config = unet_config(model) if model else TINY
    if model is None:
        (root / "teacher").mkdir(parents=True, exist_ok=True)
        (root / "teacher" / "config.json").write_text(json.dumps(TINY))
        model = str(root / "teacher")
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    units = enumerate_units(config, "pair")
    if "run" in parts:
        (run / "run.json").write_text(json.dumps({
            "command": "sensitivity", "created": "2025-01-02T03:04:05+00:00", "init": "pretrained",
            "args": {"granularity": "pair", "prompts": 4, "seed": 0, "note": "<b>not bold</b>"},
            "versions": {"prunekit": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1"},
            "model": {"name": model, "unet_fingerprint": fingerprint(config)},
            "baseline": {"clip_score": 27.5, "attr_all": 0.81}, "notes": ["tiny run for the report tests"]}))
    if "sensitivity" in parts:
        rows = []
        for unit in units:
            clip, attr = -rng.uniform(0, 3), -rng.uniform(0, 0.4)
            rows.append({"unit": unit.name, "kind": unit.kind, "stage": unit.stage, "params": unit.params,
                         "macs": unit.macs, "full_macs": unit.full_macs, "seconds": round(rng.uniform(1, 9), 2),
                         "clip_score": 27.5 + clip, "delta_clip_score": clip, "attr_all": 0.81 + attr,
                         "delta_attr_all": attr, "sensitivity": -clip})
        _csv(run / "sensitivity.csv", rows)
    if "images" in parts:
        (run / "images").mkdir(parents=True, exist_ok=True)
        (run / "images" / "prompts.json").write_text(json.dumps(PROMPTS + ["a fifth prompt"]))
        for i in range(len(PROMPTS)):
            _png(run / "images" / "baseline" / f"{i}.png", i)
            for k, unit in enumerate(units[:6]):
                _png(run / "images" / "units" / unit.name / f"{i}.png", 100 * k + i)
    if "plan" in parts:
        make_plan(model, config, preset_remove("bk-small", config), "optuna", {"metric": "params", "fraction": 0.6},
                  loss=1.25).save(run / "plan.json")
    if "pareto" in parts:
        names = [u.name for u in units if u.stage != "down0"]
        rows = []
        for _ in range(40):
            removed = rng.sample(names, rng.randrange(1, 8))
            kept = 1 - 0.08 * len(removed) - rng.uniform(0, 0.05)
            rows.append({"params_fraction": kept, "macs_fraction": kept + 0.1,
                         "loss": rng.uniform(0.1, 0.3) * len(removed), "remove": " ".join(removed), "is_preset": False})
        for i, preset in enumerate(("bk-base", "bk-small", "bk-tiny")):
            rows.append({"params_fraction": 0.7 - 0.15 * i, "macs_fraction": 0.8 - 0.1 * i, "loss": 0.6 + 0.5 * i,
                         "remove": " ".join(preset_remove(preset, config)), "is_preset": True})
        _csv(run / "pareto.csv", rows)
    if "logs" in parts:
        _csv(run / "distill" / "logs.csv", [
            {"step": s, "loss": 2 / (1 + s / 20) + rng.uniform(0, 0.2), "loss_task": 1 / (1 + s / 30),
             "loss_out": 0.6 / (1 + s / 25), "loss_feat": 0.4 / (1 + s / 15), "lr": 1e-4 * min(1, s / 20),
             "seconds": round(0.5 * s, 1)} for s in range(1, 201)])
    if "eval" in parts:
        (run / "distill").mkdir(exist_ok=True)
        (run / "distill" / "eval.json").write_text(json.dumps({
            "teacher": {"clip_score": 27.5, "attr": {"color": 0.9, "shape": 0.8}},
            "student_before": {"clip_score": 21.0, "attr": {"color": 0.4, "shape": 0.3}},
            "student_after": {"clip_score": 26.2, "attr": {"color": 0.85, "shape": 0.7}}}))
    return run


def sections(html: str) -> set[str]:
    return set(re.findall(r'<section id="(\w+)"', html))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    return build_report(write_run(tmp_path_factory.mktemp("full")))


def test_a_full_run_shows_every_section(full_report):
    html = full_report.read_text()
    assert full_report.name == "report.html" and full_report.parent.name == "run"
    assert sections(html) == ALL_SECTIONS
    assert html.count('<img src="data:image/png;base64,') == 3 + 3 + 7 * 4  # figures, 3 sensitivity charts, grid
    assert "bk-base, bk-small, bk-tiny are marked" in html
    assert "a fifth prompt" not in html and "1 more prompt(s)" in html
    assert '<td class="num">26.2</td><td class="num">80%</td>' in html  # recovered (26.2 - 21) / (27.5 - 21)


def test_user_strings_are_escaped(full_report):
    html = full_report.read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>not bold</b>" not in html and "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert "a green triangle &amp; a &#34;quote&#34;" in html
    assert html.count("<script") == 1  # the page's own sorting script


def test_the_page_needs_no_network(full_report):
    html = full_report.read_text()
    references = re.findall(r'(?:src|href|action)\s*=\s*"([^"]*)"', html)
    assert references and all(ref.startswith(("data:", "#")) for ref in references)
    assert not re.search(r"url\(|@import|https?://", html)


def test_the_plan_drawing_strikes_the_removed_units(full_report):
    html = full_report.read_text()
    removed = preset_remove("bk-small", TINY)
    blocks = enumerate_units(TINY, "block")
    gone = Removed.of(all_units(TINY)[name] for name in removed)
    expected = sum(gone.state(u) == "removed" for u in blocks)
    assert expected > 0 and html.count('<g class="removed">') == expected
    assert html.count('<g class="kept">') == len(blocks) - expected


def test_removal_state():
    def state(modules, removed):
        unit = Unit("u", "pair", "a", tuple(modules), 0, 0, 0, 0, 0, 0, 0)
        return Removed(frozenset(removed)).state(unit)

    assert state(("down_blocks.1.attentions.0",), {"down_blocks.1"}) == "removed"
    assert state(("a.resnets.1", "a.attentions.1"), {"a.resnets.1"}) == "kept"
    assert state(("a.resnets.1", "a.attentions.1"), {"a.resnets.1", "a.attentions.1"}) == "removed"
    assert state(("a.attentions.0",), {"a.attentions.0.transformer_blocks.3"}) == "partial"


@pytest.mark.parametrize("parts, expected", [
    (("run",), {"run", "costs", "units"}),
    (("sensitivity",), {"sensitivity", "units"}),
    (("images",), {"images"}),
    (("plan",), {"costs", "units", "plan"}),
    (("pareto",), {"pareto"}),
    (("logs",), {"distill"}),
    (("eval",), {"distill"}),
    (("run", "sensitivity", "images"), {"run", "costs", "sensitivity", "images", "units"}),
])
def test_sections_follow_the_files(tmp_path, parts, expected):
    html = build_report(write_run(tmp_path, parts), tmp_path / "out" / "page.html").read_text()
    assert sections(html) == expected
    assert (tmp_path / "out" / "page.html").is_file() and not (tmp_path / "run" / "report.html").exists()


def test_proxy_mode_sensitivity_charts_eps_mse(tmp_path):
    rows = [{"unit": u.name, "kind": u.kind, "stage": u.stage, "params": u.params, "macs": u.macs,
             "full_macs": u.full_macs, "seconds": 1.0, "eps_mse": 0.01 * i} for i, u in enumerate(enumerate_units(TINY))]
    _csv(tmp_path / "sensitivity.csv", rows)
    html = build_report(tmp_path).read_text()
    assert html.count('alt="eps_mse of the ablated model (lower is better)"') == 1
    assert f"most harmful: {rows[-1]['unit']}" in html


def test_real_sd_config_costs(tmp_path):
    html = build_report(write_run(tmp_path, ("run",), model="sd-v1-4")).read_text()
    assert "859.52M" in html and "338.83G" in html
    assert "<code>down3</code>" in html and "<code>up3</code>" in html and "now differs" not in html


def test_a_changed_model_config_is_flagged(tmp_path):
    run = write_run(tmp_path, ("run",))
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({**TINY, "cross_attention_dim": 16}))
    assert "now differs from the one this run used" in build_report(run).read_text()


def test_user_errors_say_what_to_do(tmp_path):
    with pytest.raises(PrunekitError, match="not a directory"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(PrunekitError, match="is it a run directory"):
        build_report(tmp_path)
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(PrunekitError, match="run.json.*fix or remove it"):
        build_report(tmp_path)
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(PrunekitError, match="holds a list, not a dict"):
        build_report(tmp_path)
    (tmp_path / "run.json").unlink()
    (tmp_path / "sensitivity.csv").write_text("unit,kind\ndown0.res0,res\n")
    with pytest.raises(PrunekitError, match="lacks the column.*stage"):
        build_report(tmp_path)


# -- the real browser ---------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,2000", "--remote-debugging-pipe"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; missing, the test fails in CI (CI=true) and is skipped elsewhere, saying why."""
    found = shutil.which("chromium")
    if found:
        return found
    message = "Chromium is missing: the real-browser test needs Debian's chromium (apt-get install chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + "; CI (CI=true) must install it (.ci/run does).")
    pytest.skip(message + "; skipped outside CI.")


def _above_9(fd: int) -> int:
    """`fd` moved to a number above 9, so that the browser's fds 3 and 4 cannot clash with it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """Chromium driven through the DevTools protocol over --remote-debugging-pipe: JSON messages ending in
    NUL, read by the browser on its fd 3 and written on its fd 4. Events are kept in `events`."""

    def __init__(self, executable: str, profile: Path, log: Path, timeout: float = 90):
        to_browser, self._to = map(_above_9, os.pipe())
        self._from, from_browser = map(_above_9, os.pipe())
        redirect = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-'
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(["bash", "-c", redirect, executable, *CHROMIUM_FLAGS,
                                             f"--user-data-dir={profile}", "about:blank"],
                                            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                            pass_fds=(to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        self.deadline = time.monotonic() + timeout
        self.events, self._buffer, self._id = [], b"", 0

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from], [], [], max(0.0, self.deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def wait_for(self, event: str) -> None:
        while not any(e["method"] == event for e in self.events):
            self._receive()

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._to)
            os.close(self._from)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, dialogs, and requests that would need the network."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                     for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append("log: " + params["entry"]["text"])
            elif method == "Page.javascriptDialogOpening":
                found.append("dialog: " + params.get("message", ""))
            elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(("data:", "file:")):
                found.append("network request: " + params["request"]["url"])
        return found


SORT_PROBE = """(() => {
  const table = document.getElementById("unit-table");
  const headings = [...table.tHead.rows[0].cells].map(c => c.textContent.trim());
  const button = table.tHead.rows[0].cells[headings.indexOf("params")].querySelector("button");
  const first = () => table.tBodies[0].rows[0].cells[0].textContent.trim();
  button.click(); const ascending = first();
  button.click(); const descending = first();
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  return {ascending, descending, broken, sections: [...document.querySelectorAll("main section")].map(s => s.id)};
})()"""


def open_page(executable: str, page: Path, workdir: Path, probe: str) -> tuple[list[str], object, Image.Image]:
    """Open `page` in headless Chromium at 1280x2000: what went wrong, the value of `probe` (a JS expression)
    evaluated after load, and a screenshot (also saved as workdir/screenshot.png)."""
    browser = DevTools(executable, workdir / "profile", workdir / "chromium.log")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=1280, height=2000, deviceScaleFactor=1,
                     mobile=False)
        browser.send("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        value = browser.send("Runtime.evaluate", session, expression=probe, returnByValue=True)["result"].get("value")
        shot = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"])
    finally:
        browser.close()
    (workdir / "screenshot.png").write_bytes(shot)
    return browser.problems(), value, Image.open(workdir / "screenshot.png").convert("L")


def test_chromium_renders_the_report_without_errors(chromium, full_report, tmp_path):
    problems, result, screenshot = open_page(chromium, full_report, tmp_path, SORT_PROBE)
    assert problems == [], (tmp_path / "chromium.log").read_text()[-2000:]
    params = {u.name: u.params for u in enumerate_units(TINY, "pair")}
    assert params[result["ascending"]] == min(params.values())
    assert params[result["descending"]] == max(params.values())
    assert result["broken"] == 0 and set(result["sections"]) == ALL_SECTIONS
    assert screenshot.size == (1280, 2000)
    assert ImageStat.Stat(screenshot).stddev[0] > 20, f"{tmp_path / 'screenshot.png'} looks blank"


def test_the_browser_check_sees_errors(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><title>broken</title><img src="https://example.invalid/x.png">'
                    '<script>console.error("logged"); missing();</script>')
    problems, value, _ = open_page(chromium, page, tmp_path, "document.title")
    assert value == "broken"
    assert any(p.startswith("uncaught: ReferenceError: missing") for p in problems), problems
    assert "console.error: logged" in problems
    assert "network request: https://example.invalid/x.png" in problems
