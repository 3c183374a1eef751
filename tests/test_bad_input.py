"""A battery of bad inputs for the command line, as a new user would type them (issue: bad input, one sentence).

The promise: every user error prints ONE sentence on stderr, `prunekit: error: ...`, with no traceback, and
exits 2; nothing is silently accepted; library warnings never reach the terminal; nothing is written into the
working directory. Each case runs `prunekit.cli.main(argv)` in this process with the file descriptors
captured (capfd), so a library's logger writing to the real stderr is caught too; the cases marked
`fresh=True` run `python -m prunekit` in a new process instead, where import-time warnings would show. The
few cases of kind `works` must succeed cleanly; cases that expect `either` pass when prunekit succeeds
cleanly or refuses correctly. Every fixture is built under pytest's tmp_path.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_SD = ROOT / "prunekit" / "assets" / "tiny-sd"
PREFIX = "prunekit: error:"
DEFAULT_TIMEOUT = 150  # seconds per command; every case here should answer in well under that on 2 CPU cores
WARNING_RE = re.compile(r"\b[A-Z]\w*Warning\b|warnings\.warn|[Dd]eprecat")  # a library's, not prunekit's own "warning:"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

CAPTURE: list = []  # the running test's capfd, for the in-process runner


# ----------------------------------------------------------------------------------------------------------------
# running the CLI


def _env() -> dict:
    env = dict(os.environ)
    # prunekit must quiet the libraries itself: do not let the caller's environment do it for it
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "PYTHONWARNINGS", "TQDM_DISABLE"):
        env.pop(name, None)
    env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float


def run_fresh(argv: list[str], timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """`python -m prunekit ARGV` in a new process."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "prunekit", *argv], cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, errors="replace",
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        rc = None
    return Outcome(argv, rc, out, err, time.monotonic() - start)


def run_cli(argv: list[str], timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """`prunekit.cli.main(ARGV)` in this process, stdout and stderr captured at the file descriptors; an exception
    that escapes main is a traceback (exit 1), as it would be on a terminal."""
    from prunekit.cli import main

    capture = CAPTURE[-1]
    capture.readouterr()
    start = time.monotonic()
    try:
        rc = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    except Exception:  # noqa: BLE001 - what a user would see as a traceback
        sys.stderr.write(traceback.format_exc())
        rc = 1
    out, err = capture.readouterr()
    return Outcome(argv, rc, out, err, time.monotonic() - start)


@pytest.fixture(autouse=True)
def _capture(capfd, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    CAPTURE.append(capfd)
    yield
    CAPTURE.pop()


def _stderr_lines(text: str) -> list[str]:
    # tqdm redraws with \r; a refusal should not draw bars anyway, but count what a terminal would show
    return [line for line in re.split(r"[\r\n]+", text.strip()) if line.strip()]


def error_problems(o: Outcome) -> list[str]:
    """What is wrong with `o` as a refusal (empty: a correct one)."""
    problems = []
    lines = _stderr_lines(o.stderr)
    if o.rc is None:
        problems.append(f"no answer within {o.seconds:.0f}s (killed)")
    elif o.rc != 2:
        problems.append(f"exit {o.rc}, not 2")
    if "Traceback" in o.stderr or "Traceback" in o.stdout:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"stderr has {len(lines)} lines, not 1")
    if not lines or not lines[0].startswith(PREFIX):
        problems.append("stderr does not start with 'prunekit: error:'")
    if lines and lines[0].startswith("usage:"):
        problems.append("argparse usage block")
    if WARNING_RE.search(o.stdout):
        problems.append("warning on stdout")
    return problems


def success_problems(o: Outcome) -> list[str]:
    problems = []
    if o.rc is None:
        problems.append(f"no answer within {o.seconds:.0f}s (killed)")
    elif o.rc != 0:
        problems.append(f"exit {o.rc}, not 0")
    if "Traceback" in o.stderr or "Traceback" in o.stdout:
        problems.append("traceback")
    if WARNING_RE.search(o.stdout) or WARNING_RE.search(o.stderr):
        problems.append("library warning reached the terminal")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# fixtures: built once per session under tmp_path_factory, or per case under tmp_path


class Shared:
    """Expensive things several cases start from, built lazily once per session."""

    def __init__(self, base: Path):
        self.base = base
        self._cache: dict[str, Path] = {}

    def _once(self, key: str, build: Callable[[Path], None]) -> Path:
        if key not in self._cache:
            path = self.base / key
            build(path)
            self._cache[key] = path
        return self._cache[key]

    def proxy_run(self) -> Path:
        """A complete pair-granularity proxy sensitivity run of tiny-sd (about 15 s on 2 cores)."""
        def build(path):
            o = run_cli(["sensitivity", "--out", str(path), "--mode", "proxy", "--num-prompts", "2", "--steps", "1",
                         "--timesteps", "1"], timeout=300)
            assert o.rc == 0 and (path / "sensitivity.csv").is_file(), o.stderr[-2000:]
        return self._once("proxy-run", build)

    def image_run(self) -> Path:
        """A tiny full-mode sensitivity run (one unit, two prompts) that holds images."""
        def build(path):
            o = run_cli(["sensitivity", "--out", str(path), "--num-prompts", "2", "--steps", "1", "--units", "mid"])
            assert o.rc == 0 and (path / "images" / "baseline" / "0.png").is_file(), o.stderr[-2000:]
        return self._once("image-run", build)

    def plan(self, model: str = "tiny-sd", preset: str = "bk-small") -> Path:
        def build(path):
            o = run_cli(["plan", "--model", model, "--preset", preset, "-o", str(path)])
            assert o.rc == 0 and path.is_file(), o.stderr[-2000:]
        return self._once(f"plan-{model}-{preset}.json", build)


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Shared:
    return Shared(tmp_path_factory.mktemp("shared"))


class Ctx:
    """What a case's builder gets: its own tmp dir, the shared fixtures and small helpers."""

    def __init__(self, tmp: Path, shared: Shared):
        self.tmp = tmp
        self.shared = shared
        self.checks: list[Callable[[Outcome], list[str]]] = []
        self.notes: list[str] = []

    def p(self, *parts) -> Path:
        return self.tmp.joinpath(*parts)

    def write(self, rel: str, data, mode: int | None = None) -> Path:
        path = self.p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    def tiny_copy(self, rel: str = "model") -> Path:
        """tiny-sd as a local pipeline directory, every file a symlink into the bundled one (cheap)."""
        dst = self.p(rel)
        shutil.copytree(TINY_SD, dst, copy_function=os.symlink)
        return dst

    def tiny_unet_config(self) -> dict:
        return json.loads((TINY_SD / "unet" / "config.json").read_text())

    def model_with_unet_config(self, config) -> Path:
        """A copy of tiny-sd whose unet/config.json is `config` (bytes, str or JSON)."""
        model = self.tiny_copy()
        target = model / "unet" / "config.json"
        target.unlink()
        if isinstance(config, bytes):
            target.write_bytes(config)
        else:
            target.write_text(config if isinstance(config, str) else json.dumps(config, indent=1))
        return model

    def copy_run(self, source: Path, rel: str = "run") -> Path:
        dst = self.p(rel)
        shutil.copytree(source, dst)
        return dst

    def marker_not_created(self, marker: Path):
        self.checks.append(lambda o: [f"hostile code ran: {marker.name} was created"] if marker.exists() else [])


@dataclass
class Case:
    id: str
    kind: str
    build: Callable[[Ctx], list[str]]
    expect: str = "error"  # error | ok | either
    note: str = ""
    timeout: float = DEFAULT_TIMEOUT
    fresh: bool = False  # run in a new process, where import-time warnings would show
    skip_if: Callable[[], str | None] | None = None
    mentions: tuple[str, ...] | None = None  # a refusal must name one of these (default: by kind, see mentions_for)


CASES: list[Case] = []


def case(id: str, kind: str, build, **kw):
    CASES.append(Case(id, kind, build, **kw))


# ----------------------------------------------------------------------------------------------------------------
# argument builders with small settings


def sens(ctx: Ctx, *extra, out: str | None = None, units: str | None = "mid") -> list[str]:
    args = ["sensitivity", "--out", out or str(ctx.p("sens")), "--num-prompts", "2", "--steps", "1"]
    if units is not None:
        args += ["--units", units]
    return args + [str(e) for e in extra]


def evl(ctx: Ctx, *extra, model: str = "tiny-sd") -> list[str]:
    return ["eval", model, "--num-prompts", "2", "--steps", "1", *[str(e) for e in extra]]


def distill_defaults() -> dict:
    return {"--steps": "1", "--batch-size": "2", "--num-examples": "4", "--eval-num-prompts": "0"}


def dst(ctx: Ctx, plan: Path | str | None = None, out: str | None = None, **overrides) -> list[str]:
    opts = distill_defaults()
    for key, value in overrides.items():
        opts["--" + key.replace("_", "-")] = value
    args = ["distill", str(plan or ctx.shared.plan()), "--out", out or str(ctx.p("distill"))]
    for key, value in opts.items():
        if value is not None:
            args += [key, str(value)]
    return args


def budget_plan(ctx: Ctx, *extra, budget: str = "0.5") -> list[str]:
    run = ctx.copy_run(ctx.shared.proxy_run())
    return ["plan", "--model", "tiny-sd", "--budget", budget, "--sensitivity", str(run), "-o", str(ctx.p("plan.json")),
            *[str(e) for e in extra]]


# ----------------------------------------------------------------------------------------------------------------
# kind: model-config (a local model folder whose U-Net config is wrong)


def _vae_config(ctx):
    return json.loads((TINY_SD / "vae" / "config.json").read_text())


def _unknown_block(ctx):
    c = ctx.tiny_unet_config()
    c["down_block_types"] = ["FooDownBlock2D", *c["down_block_types"][1:]]
    return c


def _missing_keys(ctx):
    c = ctx.tiny_unet_config()
    for key in ("block_out_channels", "down_block_types", "up_block_types", "cross_attention_dim"):
        c.pop(key)
    return c


def _channels(value):
    def make(ctx):
        c = ctx.tiny_unet_config()
        c["block_out_channels"] = [value, 64, 64, 64]
        return c
    return make


CONFIGS = {
    "invalid-json": lambda ctx: '{"_class_name": "UNet2DConditionModel", "in_channels": 4,,,',
    "non-utf8": lambda ctx: b'{"_class_name": "UNet2DConditionModel", "note": "\xff\xfe\xfa"}',
    "json-list": lambda ctx: [1, 2, 3],
    "vae-config": _vae_config,
    "unknown-block-type": _unknown_block,
    "empty-object": lambda ctx: {},
    "missing-keys": _missing_keys,
    "zero-channels": _channels(0),
    "negative-channels": _channels(-32),
}


def _config_case(command: str, name: str):
    def build(ctx: Ctx):
        model = str(ctx.model_with_unet_config(CONFIGS[name](ctx)))
        if command == "inspect":
            return ["inspect", model]
        if command == "plan":
            return ["plan", "--preset", "bk-small", "--model", model, "-o", str(ctx.p("plan.json"))]
        if command == "sensitivity":
            return ["sensitivity", "--model", model, "--init", "random", "--out", str(ctx.p("sens")),
                    "--num-prompts", "2", "--steps", "1", "--units", "mid", "--clip-model", "tiny-clip"]
        return evl(ctx, model=model)
    return build


case("config-invalid-json-inspect-fresh", "model-config", lambda ctx: _config_case("inspect", "invalid-json")(ctx),
     fresh=True)
for _cmd, _names in (("inspect", list(CONFIGS)), ("plan", list(CONFIGS)),
                     ("sensitivity", ["invalid-json", "json-list", "vae-config", "unknown-block-type",
                                      "missing-keys", "negative-channels"]),
                     ("eval", ["invalid-json", "non-utf8", "vae-config", "unknown-block-type", "missing-keys",
                               "zero-channels"])):
    for _name in _names:
        case(f"config-{_name}-{_cmd}", "model-config", _config_case(_cmd, _name),
             note="diffusers fills missing keys with SD defaults" if _name in ("empty-object", "missing-keys") else "")

case("config-empty-dir-inspect", "model-config", lambda ctx: ["inspect", str(ctx.p("empty").mkdir() or ctx.p("empty"))])


# ----------------------------------------------------------------------------------------------------------------
# kind: model-folder (hostile or broken pipeline folders)

HOSTILE_PY = "import pathlib; pathlib.Path({marker!r}).write_text('pwned')\n"


class _OpenOnUnpickle:
    """Unpickling this opens (creates) a file: proof that a pickle was loaded without weights_only."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import builtins
        return builtins.open, (self.path, "w")


def _folder(variant: str):
    def make(ctx: Ctx) -> Path:
        model = ctx.tiny_copy()
        index = json.loads((TINY_SD / "model_index.json").read_text())
        (model / "model_index.json").unlink()
        marker = ctx.p(f"marker-{variant}")
        if variant == "evil-pipeline":
            index["_class_name"] = "EvilPipeline"
            for name in ("pipeline.py", "EvilPipeline.py", "evil_pipeline.py"):
                (model / name).write_text(HOSTILE_PY.format(marker=str(marker)) + "class EvilPipeline: pass\n")
            ctx.marker_not_created(marker)
        elif variant == "unknown-library":
            index["unet"] = ["evil_library", "EvilUNet"]
            (model / "evil_library.py").write_text(HOSTILE_PY.format(marker=str(marker)) + "class EvilUNet: pass\n")
            ctx.marker_not_created(marker)
        elif variant == "bin-only-unet":
            (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
            (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_OpenOnUnpickle(str(marker))))
            ctx.marker_not_created(marker)
        if variant == "empty-index":
            (model / "model_index.json").write_text("")
        elif variant == "index-not-json":
            (model / "model_index.json").write_text("StableDiffusionPipeline, please\n")
        elif variant == "index-list":
            (model / "model_index.json").write_text("[]")
        else:
            (model / "model_index.json").write_text(json.dumps(index, indent=1))
        return model
    return make


for _variant in ("evil-pipeline", "unknown-library", "bin-only-unet", "empty-index", "index-not-json", "index-list"):
    case(f"folder-{_variant}-eval", "model-folder",
         (lambda v: lambda ctx: evl(ctx, model=str(_folder(v)(ctx))))(_variant))
    case(f"folder-{_variant}-sensitivity", "model-folder",
         (lambda v: lambda ctx: ["sensitivity", "--model", str(_folder(v)(ctx)), "--out", str(ctx.p("sens")),
                                 "--num-prompts", "2", "--steps", "1", "--units", "mid",
                                 "--clip-model", "tiny-clip"])(_variant))


# ----------------------------------------------------------------------------------------------------------------
# kind: model-name

case("model-unknown-alias", "model-name", lambda ctx: ["inspect", "sd-v9"])
case("model-missing-local-dir", "model-name", lambda ctx: ["inspect", "./no-such-model"])
case("model-hub-id-offline", "model-name", lambda ctx: ["inspect", "nobody/no-such-model"])
case("model-is-a-file", "model-name", lambda ctx: ["inspect", str(ctx.write("file.txt", "hello"))])
case("model-empty-string", "model-name", lambda ctx: ["inspect", ""])
case("model-eval-hub-id-offline", "model-name", lambda ctx: evl(ctx, model="nobody/no-such-model"),
     mentions=("no-such-model",), note="the error must be about the model the user named")
case("clip-model-missing", "model-name", lambda ctx: sens(ctx, "--clip-model", "nobody/no-such-clip"))


# ----------------------------------------------------------------------------------------------------------------
# kind: device

for _dev in ("cuda", "cuda:3", "tpu", ""):
    _label = _dev.replace(":", "") or "empty"
    case(f"device-{_label}-sensitivity", "device", (lambda d: lambda ctx: sens(ctx, "--device", d))(_dev))
    case(f"device-{_label}-eval", "device", (lambda d: lambda ctx: evl(ctx, "--device", d))(_dev))
    case(f"device-{_label}-plan-latency", "device",
         (lambda d: lambda ctx: budget_plan(ctx, "--metric", "latency", "--device", d))(_dev))


# ----------------------------------------------------------------------------------------------------------------
# kind: output


def _unwritable_dir(ctx: Ctx) -> Path:
    d = ctx.p("locked")
    d.mkdir()
    d.chmod(0o500)
    return d


def _root_skip():
    return "running as root: chmod 500 does not stop writes" if IS_ROOT else None


def _file_untouched(path: Path, content: str):
    return lambda o: [] if path.read_text() == content else [f"{path.name} was overwritten"]


def _plan_over_existing(ctx: Ctx):
    target = ctx.write("existing.json", "precious\n")
    ctx.checks.append(_file_untouched(target, "precious\n"))
    return ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", str(target)]


def _report_existing_dir(ctx: Ctx):
    run = ctx.copy_run(ctx.shared.image_run())
    (ctx.p("outdir")).mkdir()
    return ["report", str(run), "-o", str(ctx.p("outdir"))]


case("out-plan-existing-dir", "output",
     lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", str(ctx.p("dir").mkdir() or ctx.p("dir"))])
case("out-plan-under-a-file", "output",
     lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", str(ctx.write("f", "x") / "plan.json")])
case("out-plan-unwritable-dir", "output",
     lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", str(_unwritable_dir(ctx) / "plan.json")],
     skip_if=_root_skip)
case("out-plan-in-proc", "output",
     lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", "/proc/prunekit-plan.json"],
     note="unwritable even for root")
case("out-plan-empty-string", "output", lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", ""])
case("out-plan-existing-file", "output", _plan_over_existing, note="a plan is never overwritten without --force")
case("out-distill-existing-file", "output", lambda ctx: dst(ctx, out=str(ctx.write("out.txt", "x"))))
case("out-distill-under-a-file", "output", lambda ctx: dst(ctx, out=str(ctx.write("f", "x") / "out")))
case("out-report-existing-dir", "output", _report_existing_dir)
case("out-report-in-proc", "output",
     lambda ctx: ["report", str(ctx.copy_run(ctx.shared.image_run())), "-o", "/proc/prunekit-report.html"])
case("out-report-under-a-file", "output",
     lambda ctx: ["report", str(ctx.copy_run(ctx.shared.image_run())), "-o", str(ctx.write("f", "x") / "r.html")])
case("out-report-unwritable-dir", "output",
     lambda ctx: ["report", str(ctx.copy_run(ctx.shared.image_run())), "-o", str(_unwritable_dir(ctx) / "r.html")],
     skip_if=_root_skip)
case("out-sensitivity-existing-file", "output", lambda ctx: sens(ctx, out=str(ctx.write("out.txt", "x"))))
case("out-sensitivity-under-a-file", "output", lambda ctx: sens(ctx, out=str(ctx.write("f", "x") / "run")))
case("out-demo-existing-file", "output",
     lambda ctx: ["demo", "--out", str(ctx.write("out.txt", "x")), "--num-prompts", "2", "--distill-steps", "1"])


# ----------------------------------------------------------------------------------------------------------------
# kind: storage

for _url in ("notaurl", "sqlite:////nonexistent/dir/x.db", "postgresql://nohost/db", "mysql://x", ""):
    case(f"storage-{_url.split(':')[0] or 'empty'}" + ("-missing-dir" if "nonexistent" in _url else ""), "storage",
         (lambda u: lambda ctx: budget_plan(ctx, "--method", "optuna", "--trials", "2", "--storage", u))(_url))


# ----------------------------------------------------------------------------------------------------------------
# kind: number

for _flag, _value in (("--batch-size", "0"), ("--batch-size", "-1"), ("--num-prompts", "0"), ("--num-prompts", "-5"),
                      ("--steps", "0"), ("--guidance", "nan"), ("--guidance", "inf"), ("--guidance", "-1"),
                      ("--guidance", "0")):
    case(f"num-sensitivity{_flag}={_value}", "number", (lambda f, v: lambda ctx: sens(ctx, f, v))(_flag, _value),
         note="prunekit.json itself demands guidance >= 1" if _flag == "--guidance" and _value == "0" else "")
case("num-sensitivity--timesteps=0", "number", lambda ctx: sens(ctx, "--mode", "proxy", "--timesteps", "0"))
case("num-sensitivity--timesteps=-3", "number", lambda ctx: sens(ctx, "--mode", "proxy", "--timesteps", "-3"))
case("num-sensitivity--seed=-1", "number", lambda ctx: sens(ctx, "--seed", "-1"), expect="either",
     note="record: is a negative seed an error or fine?")

for _flag, _value in (("--batch-size", "0"), ("--num-prompts", "0"), ("--steps", "0"), ("--guidance", "nan"),
                      ("--guidance", "-1")):
    case(f"num-eval{_flag}={_value}", "number", (lambda f, v: lambda ctx: evl(ctx, f, v))(_flag, _value))
case("num-eval--seed=-1", "number", lambda ctx: evl(ctx, "--seed", "-1"), expect="either",
     note="record: is a negative seed an error or fine?")

for _value in ("0", "1.5", "nan", "-0.1", "inf"):
    case(f"num-plan--budget={_value}", "number", (lambda v: lambda ctx: budget_plan(ctx, budget=v))(_value))
case("num-plan--trials=0", "number", lambda ctx: budget_plan(ctx, "--method", "optuna", "--trials", "0"))
case("num-plan--trials=-1", "number", lambda ctx: budget_plan(ctx, "--method", "optuna", "--trials", "-1"))
case("num-plan--measure-prompts=0", "number",
     lambda ctx: budget_plan(ctx, "--objective", "measured", "--measure-prompts", "0", "--measure-steps", "1"))
for _flag in ("--kd-steps", "--pool"):
    case(f"num-plan{_flag}=0", "number",
         (lambda f: lambda ctx: budget_plan(ctx, "--objective", "recoverable", "--method", "optuna", f, "0"))(_flag))

for _key, _value in (("batch_size", "0"), ("batch_size", "-1"), ("steps", "0"), ("lr", "0"), ("lr", "-1"),
                     ("lr", "nan"), ("lambda_task", "nan"), ("lambda_feat", "inf"), ("lambda_out", "-1"),
                     ("eval_num_prompts", "-1"), ("checkpoint_every", "0"), ("num_examples", "0"),
                     ("grad_accum", "0"), ("num_workers", "-1")):
    case(f"num-distill--{_key.replace('_', '-')}={_value}", "number",
         (lambda k, v: lambda ctx: dst(ctx, **{k: v}))(_key, _value))
case("num-distill--eval-steps=0", "number", lambda ctx: dst(ctx, eval_num_prompts="2", eval_steps="0"))
case("num-distill-all-lambdas-0", "number", lambda ctx: dst(ctx, lambda_task="0", lambda_out="0", lambda_feat="0"),
     mentions=("lambda", "loss weight"), note="a loss that is identically zero trains nothing")

case("num-demo--num-prompts=0", "number",
     lambda ctx: ["demo", "--out", str(ctx.p("demo")), "--num-prompts", "0", "--distill-steps", "1"], note="must be refused before any long stage")
case("num-demo--distill-steps=0", "number",
     lambda ctx: ["demo", "--out", str(ctx.p("demo")), "--num-prompts", "2", "--distill-steps", "0"], note="must be refused before any long stage")
case("num-demo--num-prompts=-1", "number",
     lambda ctx: ["demo", "--out", str(ctx.p("demo")), "--num-prompts", "-1", "--distill-steps", "1"])


# ----------------------------------------------------------------------------------------------------------------
# kind: file (plans, sensitivity runs, prompt files, data folders, unit lists)


def _garbled_plan(mutate):
    def build(ctx: Ctx):
        plan = json.loads(ctx.shared.plan().read_text())
        data = mutate(plan)
        path = ctx.write("plan.json", data if isinstance(data, (str, bytes)) else json.dumps(data, indent=1))
        return dst(ctx, plan=path)
    return build


def _set(key, value):
    def mutate(plan):
        plan[key] = value
        return plan
    return mutate


def _every_unit(plan):
    o = run_cli(["inspect", "tiny-sd", "--format", "json"])
    units = json.loads(o.stdout)
    units = units.get("units", units) if isinstance(units, dict) else units
    plan["remove"] = [u["unit"] if isinstance(u, dict) and "unit" in u else u.get("name", u) for u in units]
    return plan


case("plan-not-utf8", "file", _garbled_plan(lambda p: b'{"format": "prunekit.plan/1", "model": "\xff\xfe"}'))
case("plan-not-json", "file", _garbled_plan(lambda p: "remove: mid\n"))
case("plan-json-list", "file", _garbled_plan(lambda p: ["mid"]))
case("plan-missing-fields", "file", _garbled_plan(lambda p: {"format": p["format"], "remove": p["remove"]}))
case("plan-missing-student", "file", _garbled_plan(lambda p: {k: v for k, v in p.items() if k != "student"}))
case("plan-remove-ints", "file", _garbled_plan(_set("remove", [1, 2, 3])))
case("plan-remove-overlapping", "file", _garbled_plan(_set("remove", ["mid", "mid.res0"])))
case("plan-remove-duplicated", "file", _garbled_plan(_set("remove", ["mid", "mid"])))
case("plan-remove-empty", "file", _garbled_plan(_set("remove", [])),
     note="remove list no longer matches the plan's student")
case("plan-remove-unknown-unit", "file", _garbled_plan(_set("remove", ["down9.res7"])))
case("plan-remove-every-unit", "file", _garbled_plan(_every_unit))
case("plan-wrong-format-tag", "file", _garbled_plan(_set("format", "prunekit.plan/99")))
case("plan-is-a-directory", "file", lambda ctx: dst(ctx, plan=ctx.p("d").mkdir() or ctx.p("d")))
case("plan-missing-file", "file", lambda ctx: dst(ctx, plan=ctx.p("nope.json")))
case("plan-sd14-to-tiny-teacher", "file",
     lambda ctx: dst(ctx, plan=ctx.shared.plan("sd-v1-4")) + ["--teacher", "tiny-sd"])


def _csv_text(ctx: Ctx, how: str) -> bytes:
    good = (ctx.shared.proxy_run() / "sensitivity.csv").read_text()
    if how == "binary":
        return bytes(range(256)) * 4
    if how == "wrong-columns":
        return b"a,b,c\n1,2,3\n4,5,6\n"
    if how == "non-numeric":
        rows = list(csv.DictReader(io.StringIO(good)))
        for row in rows:
            row["sensitivity"] = "lots"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().encode()
    return b""


def _garbled_run(how: str, command: str):
    def build(ctx: Ctx):
        run = ctx.copy_run(ctx.shared.proxy_run())
        (run / "sensitivity.csv").write_bytes(_csv_text(ctx, how))
        for stale in ("plan.json", "report.html"):
            (run / stale).unlink(missing_ok=True)
        if command == "report":
            return ["report", str(run)]
        return ["plan", "--budget", "0.5", "--sensitivity", str(run), "-o", str(ctx.p("plan.json"))]
    return build


for _how in ("binary", "wrong-columns", "non-numeric", "empty"):
    for _command in ("report", "plan"):
        case(f"csv-{_how}-{_command}", "file", _garbled_run(_how, _command))


def _bad_run_json(command: str):
    def build(ctx: Ctx):
        run = ctx.copy_run(ctx.shared.proxy_run())
        (run / "run.json").write_text("{ this is not json")
        (run / "report.html").unlink(missing_ok=True)
        if command == "report":
            return ["report", str(run)]
        return ["plan", "--budget", "0.5", "--sensitivity", str(run), "-o", str(ctx.p("plan.json"))]
    return build


case("runjson-not-json-report", "file", _bad_run_json("report"))
case("runjson-not-json-plan", "file", _bad_run_json("plan"))

_PROMPTS = {
    "binary": lambda ctx: str(ctx.write("prompts.bin", bytes(range(256)) * 8)),
    "directory": lambda ctx: str(ctx.p("pdir").mkdir() or ctx.p("pdir")),
    "empty": lambda ctx: str(ctx.write("prompts.txt", "")),
    "blank-lines": lambda ctx: str(ctx.write("prompts.txt", "\n   \n\n")),
    "missing": lambda ctx: str(ctx.p("no-prompts.txt")),
}
for _what in ("binary", "directory", "empty", "blank-lines", "missing"):
    case(f"prompts-{_what}-sensitivity", "file", (lambda w: lambda ctx: sens(ctx, "--prompts", _PROMPTS[w](ctx)))(_what))
for _what in ("binary", "directory", "empty"):
    case(f"prompts-{_what}-eval", "file", (lambda w: lambda ctx: evl(ctx, "--prompts", _PROMPTS[w](ctx)))(_what))


def _png_bytes(color=(200, 10, 10), size=(8, 8)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _data_folder(variant: str):
    def build(ctx: Ctx):
        folder = ctx.p("data")
        folder.mkdir()
        for i in range(4):
            (folder / f"{i}.png").write_bytes(_png_bytes((60 * i, 20, 20)))
        if variant == "broken-jsonl":
            (folder / "metadata.jsonl").write_text('{"file_name": "0.png", "text": "a red circle"}\n{not json\n')
        elif variant == "missing-images":
            (folder / "metadata.jsonl").write_text(
                "".join(json.dumps({"file_name": f"gone{i}.png", "text": "a circle"}) + "\n" for i in range(4)))
        elif variant == "no-text-field":
            (folder / "metadata.jsonl").write_text(
                "".join(json.dumps({"file_name": f"{i}.png", "caption": "x"}) + "\n" for i in range(4)))
        elif variant == "no-metadata":
            pass
        elif variant == "not-images":
            for i in range(4):
                (folder / f"{i}.png").write_text("not a png")
            (folder / "metadata.jsonl").write_text(
                "".join(json.dumps({"file_name": f"{i}.png", "text": "a circle"}) + "\n" for i in range(4)))
        return dst(ctx, data=str(folder))
    return build


for _variant in ("broken-jsonl", "missing-images", "no-text-field", "no-metadata", "not-images"):
    case(f"data-{_variant}", "file", _data_folder(_variant))
case("data-missing-dir", "file", lambda ctx: dst(ctx, data=str(ctx.p("no-such-data"))))

for _units, _label in (("foo", "unknown"), ("", "empty-string"), ("mid,mid", "duplicated"), (",", "only-comma")):
    case(f"units-{_label}", "file", (lambda u: lambda ctx: sens(ctx, units=u))(_units))
case("units-overlapping", "file", lambda ctx: sens(ctx, units="mid,mid.res0"), expect="either",
     note="record: each unit is ablated alone, so overlapping names may be legitimate here")


# ----------------------------------------------------------------------------------------------------------------
# kind: report


def _not_embedded(html_path: Path, secret: bytes, what: str):
    def check(o: Outcome):
        if o.rc != 0 or not html_path.is_file():
            return []
        html = html_path.read_text(errors="replace")
        b64 = base64.b64encode(secret).decode()
        if b64 in html or b64[:40] in html or (b"root:x:0" in secret and "root:x:0" in html):
            return [f"the report embeds {what} from outside the run directory"]
        return []
    return check


def _report_symlink(target: str):
    def build(ctx: Ctx):
        run = ctx.copy_run(ctx.shared.image_run())
        (run / "report.html").unlink(missing_ok=True)
        link = run / "images" / "baseline" / "0.png"
        link.unlink()
        if target == "passwd":
            secret_path = Path("/etc/passwd")
        else:
            secret_path = ctx.write("outside/secret.png", _png_bytes((1, 2, 3), (11, 7)))
        link.symlink_to(secret_path)
        ctx.checks.append(_not_embedded(run / "report.html", secret_path.read_bytes(), str(secret_path)))
        return ["report", str(run)]
    return build


case("report-symlink-to-etc-passwd", "report", _report_symlink("passwd"), expect="either",
     note="passes if refused or the link is skipped; fails if /etc/passwd is embedded")
case("report-symlink-to-outside-png", "report", _report_symlink("png"), expect="either",
     note="passes if refused or the link is skipped; fails if the outside PNG is embedded")
case("report-missing-dir", "report", lambda ctx: ["report", str(ctx.p("no-such-run"))])
case("report-empty-dir", "report", lambda ctx: ["report", str(ctx.p("empty").mkdir() or ctx.p("empty"))])
case("report-a-file", "report", lambda ctx: ["report", str(ctx.write("run.txt", "hello"))])


# ----------------------------------------------------------------------------------------------------------------
# kind: choice (unknown values; most are argparse's, whose usage block is two lines or more)

for _id, _argv in (
        ("inspect--granularity=layer", lambda ctx: ["inspect", "tiny-sd", "--granularity", "layer"]),
        ("inspect--format=xml", lambda ctx: ["inspect", "tiny-sd", "--format", "xml"]),
        ("sensitivity--mode=fast", lambda ctx: sens(ctx, "--mode", "fast")),
        ("sensitivity--dtype=float8", lambda ctx: sens(ctx, "--dtype", "float8")),
        ("sensitivity--batch-size=abc", lambda ctx: sens(ctx, "--batch-size", "abc")),
        ("plan--preset=bk-huge", lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-huge"]),
        ("plan--objective=nope", lambda ctx: budget_plan(ctx, "--objective", "nope")),
        ("plan--kind=weird", lambda ctx: budget_plan(ctx, "--kind", "weird")),
        ("plan-no-preset-no-budget", lambda ctx: ["plan", "--model", "tiny-sd", "-o", str(ctx.p("p.json"))]),
        ("plan-preset-and-budget", lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "--budget", "0.5"]),
        ("distill--mixed-precision=fp8", lambda ctx: dst(ctx, mixed_precision="fp8")),
        ("unknown-subcommand", lambda ctx: ["prune", "tiny-sd"]),
        ("no-subcommand", lambda ctx: []),
        ("sensitivity-without--out", lambda ctx: ["sensitivity", "--num-prompts", "2"]),
        ("unknown-option", lambda ctx: ["inspect", "tiny-sd", "--verbose"]),
):
    case(f"choice-{_id}", "choice", _argv)
case("choice-sensitivity--metrics=clip,foo", "choice", lambda ctx: sens(ctx, "--metrics", "clip,foo"))
case("choice-sensitivity--metrics=empty", "choice", lambda ctx: sens(ctx, "--metrics", ""))
case("choice-eval--prompts=everydayy", "choice", lambda ctx: evl(ctx, "--prompts", "everydayy"))
case("choice-plan-budget-without-sensitivity", "choice",
     lambda ctx: ["plan", "--model", "tiny-sd", "--budget", "0.5", "-o", str(ctx.p("p.json"))])
case("choice-plan-pareto-with-greedy", "choice", lambda ctx: budget_plan(ctx, "--pareto"),
     note="--pareto is documented as Optuna-only")
case("choice-plan-storage-with-greedy", "choice", lambda ctx: budget_plan(ctx, "--storage", "sqlite:///" + str(ctx.p("x.db"))),
     note="--storage is documented as Optuna-only; nothing may be written to the cwd either")


# ----------------------------------------------------------------------------------------------------------------
# kind: works (things a user would type that SHOULD succeed)

case("works-version", "works", lambda ctx: ["--version"], expect="ok", fresh=True)
case("works-help", "works", lambda ctx: ["--help"], expect="ok")
case("works-inspect-tiny-sd", "works", lambda ctx: ["inspect", "tiny-sd"], expect="ok", fresh=True)
case("works-inspect-sd-v1-4-json", "works", lambda ctx: ["inspect", "sd-v1-4", "--format", "json"], expect="ok")
case("works-inspect-sdxl-stage", "works", lambda ctx: ["inspect", "sdxl-base", "--granularity", "stage"], expect="ok")
case("works-plan-preset", "works",
     lambda ctx: ["plan", "--model", "tiny-sd", "--preset", "bk-small", "-o", str(ctx.p("p.json"))], expect="ok")
case("works-plan-sd-v1-4-preset", "works",
     lambda ctx: ["plan", "--model", "sd-v1-4", "--preset", "bk-tiny", "-o", str(ctx.p("p.json"))], expect="ok")
case("works-eval-tiny", "works", lambda ctx: evl(ctx), expect="ok", fresh=True)
case("works-plan-budget", "works", lambda ctx: budget_plan(ctx), expect="ok")
case("works-sensitivity-small", "works", lambda ctx: sens(ctx), expect="ok", fresh=True)
case("works-sensitivity-local-copy", "works",
     lambda ctx: ["sensitivity", "--model", str(ctx.tiny_copy()), "--out", str(ctx.p("sens")), "--num-prompts", "2",
                  "--steps", "1", "--units", "mid"], expect="ok",
     note="a local copy of tiny-sd, default options (what eval of the same folder manages offline)")
case("works-distill-small", "works", lambda ctx: dst(ctx), expect="ok", fresh=True)
case("works-report-small-run", "works", lambda ctx: ["report", str(ctx.copy_run(ctx.shared.image_run()))],
     expect="ok")


# ----------------------------------------------------------------------------------------------------------------
# the test


def _top_level(root: Path) -> set[str]:
    try:
        return set(os.listdir(root))
    except OSError:
        return set()


_PREFIX_MENTIONS = {
    "plan-": ("plan",), "csv-": ("sensitivity.csv", "csv", "sensitivity"), "runjson-": ("run.json",),
    "prompts-": ("prompt",), "data-": ("data", "metadata", "image", "caption", "text", "file_name"),
    "units-": ("unit",),
}
_KIND_MENTIONS = {
    "model-config": ("config", "u-net", "unet", "block type", "channel"),
    "model-folder": ("model_index", "pipeline", "evil", "safetensors", ".bin", "pickle", "component", "library",
                     "unet", "u-net"),
    "model-name": ("model", "fetch", "hub", "clip", "director"),
    "device": ("device", "cuda", "tpu"),
    "output": ("--out", "-o ", "output", "director", "exist", "writ", "file", "path", "permission"),
    "storage": ("storage", "optuna", "database", "url", "sqlite", "postgres", "mysql", "driver"),
    "report": ("run", "director", "report", "link", "outside"),
    "choice": ("argument", "--", "metric", "prompt", "optuna", "sensitivity"),
}


def mentions_for(c: Case) -> tuple[str, ...]:
    """Words of which a correct refusal of `c` names at least one (guards against errors about something else)."""
    if c.mentions is not None:
        return c.mentions
    if c.kind == "number":
        if "lambda" in c.id:
            return ("lambda", "loss weight")
        match = re.search(r"--([a-z-]+)=", c.id)
        if match:
            flag = match.group(1)
            return ("--" + flag, flag.replace("-", " "), flag.replace("-", "_"))
        return ()
    for prefix, words in _PREFIX_MENTIONS.items():
        if c.id.startswith(prefix):
            return words
    return _KIND_MENTIONS.get(c.kind, ())


def _scrub(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "$TMP").replace(str(ROOT), ".")


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_cli(c: Case, tmp_path: Path, shared: Shared):
    record = {"id": c.id, "kind": c.kind, "expect": c.expect, "note": c.note}
    reason = c.skip_if() if c.skip_if else None
    if reason:
        record.update(verdict="skip", why=reason, command="", rc="", first="", traceback="", seconds=0)
        pytest.skip(reason)
    ctx = Ctx(tmp_path, shared)
    try:
        argv = c.build(ctx)
    except Exception as error:  # a fixture could not be built: the battery's fault or a broken prerequisite
        record.update(verdict="fixture-error", why=repr(error)[:300], command="", rc="", first="", traceback="",
                      seconds=0)
        raise
    before = _top_level(ROOT)
    started = time.time()
    o = (run_fresh if c.fresh else run_cli)(argv, timeout=c.timeout)
    lines = _stderr_lines(o.stderr)
    if c.expect == "error":
        problems = error_problems(o)
    elif c.expect == "ok":
        problems = success_problems(o)
    else:  # either: a clean success, or a correct refusal
        problems = success_problems(o) if o.rc == 0 else error_problems(o)
    if c.id.startswith("num-demo") and re.search(r"^== 1/\d", o.stdout, re.M):
        problems.append("a stage started before the bad option was refused")
    if o.rc == 2 and lines and lines[0].startswith(PREFIX) and c.expect != "ok":
        words = mentions_for(c)
        if words and not any(w.lower() in lines[0].lower() for w in words):
            problems.append("the error is about something else (mentions none of: " + ", ".join(words) + ")")
    littered = sorted(_top_level(ROOT) - before)
    if littered:
        problems.append("wrote into the working directory: " + ", ".join(littered))
        for name in littered:  # keep the checkout clean: remove files this case created there (not folders)
            path = ROOT / name
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= started - 1:
                path.unlink()
    for check in ctx.checks:
        problems += check(o)
    record.update(
        command="prunekit " + _scrub(shlex.join(argv), tmp_path),
        rc="timeout" if o.rc is None else o.rc,
        first=_scrub(lines[0], tmp_path)[:300] if lines else "",
        lines=len(lines),
        traceback="Traceback" in o.stderr or "Traceback" in o.stdout,
        argparse=bool(lines) and lines[0].startswith("usage:"),
        seconds=round(o.seconds, 1),
        verdict="pass" if not problems else "FAIL",
        why="; ".join(problems + ctx.notes),
        stderr_tail=_scrub(o.stderr[-1500:], tmp_path),
    )
    assert not problems, (f"{record['command']}\n  problems: {'; '.join(problems)}\n  rc={o.rc}\n"
                          f"  stderr:\n{o.stderr[-3000:]}")


