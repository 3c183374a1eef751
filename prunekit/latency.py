"""Latency: seconds per denoiser step (batch 1 and the model's text length by default) of candidate students on a
device.

A diffusers candidate is its surgery student (random weights); a free one is the teacher with random
weights and the candidate ablated (prunekit's stand-ins, as its student has them). On a CUDA device the step
is captured in a CUDA graph and replayed, in float16, so Python and kernel-launch overhead do not hide what the
blocks cost; on the CPU it runs eagerly in float32. Each candidate is timed once: timings are cached (in the run directory)
by teacher, device, precision and candidate. Fractions are relative to the teacher timed the same way.
"""
from __future__ import annotations

import statistics
import time

import torch

from prunekit.options import resolve_device
from prunekit.cache import Cache


def _time_eager(step, min_seconds: float = 0.5, min_runs: int = 3, max_runs: int = 200) -> float:
    """Median seconds of `step()` after one warm-up run, over at least `min_runs` runs and `min_seconds`."""
    step()
    times: list[float] = []
    while len(times) < min_runs or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_cuda_graph(step, replays: int = 20, rounds: int = 5) -> float:
    """Median seconds of one replay of `step` captured in a CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000 / replays)
    return statistics.median(times)


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    """`inputs` (nested dicts of tensors) with floating-point tensors in `dtype`."""
    return {key: _cast(value, dtype) if isinstance(value, dict)
            else value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}


class LatencyMeter:
    """Times candidate students of the denoiser of `teacher_config` on `device`, its text `tokens` long (None:
    the family's length; see the module docstring)."""

    def __init__(self, teacher_config: dict, device: str = "cpu", cache: Cache | None = None, batch: int = 1,
                 tokens: int | None = None):
        from prunekit.families import family_of
        from prunekit.models import fingerprint

        self.device = torch.device(resolve_device(device))
        cuda = self.device.type == "cuda"
        self.config, self.batch = teacher_config, batch
        self.tokens = family_of(teacher_config).tokens if tokens is None else tokens
        self.timing = "cuda-graphs" if cuda else "eager"
        self.dtype = torch.float16 if cuda else torch.float32
        self.name = torch.cuda.get_device_name(self.device) if cuda else "cpu"
        self.cache = cache or Cache(None, "latency")
        self.prefix = (f"{fingerprint(teacher_config)[:23]}|{self.name}|{self.dtype}|{self.timing}|batch {batch}"
                       f"|{self.tokens} tokens")
        self._teacher = None  # the random-weight teacher that free candidates are ablated from

    def describe(self) -> dict:
        """How the timings were taken: what a plan records next to its predicted latency."""
        return {"device": self.name, "timing": self.timing, "dtype": str(self.dtype).removeprefix("torch."),
                "batch": self.batch, "tokens": self.tokens, "teacher_ms": 1000 * self.seconds([])}

    def fraction(self, remove: list[str], kind: str = "diffusers") -> float:
        """The candidate's latency as a fraction of the teacher's."""
        return self.seconds(remove, kind) / self.seconds([])

    def seconds(self, remove: list[str], kind: str = "diffusers") -> float:
        """Seconds per step of the student of a plan of `kind` removing `remove`, timed once."""
        kind = kind if remove else "diffusers"  # the teacher itself
        key = f"{self.prefix}|{kind}|{' '.join(sorted(remove))}"
        value = self.cache.get(key)
        if value is None:
            value = self._diffusers(remove) if kind == "diffusers" else self._free(remove)
            self.cache.put(key, value)
        return value

    def _build(self, config: dict):
        from prunekit.families import family_of

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)  # random weights, the same for every candidate, the caller's RNG left alone
            with torch.device(self.device):
                unet = family_of(config).model_class(config).from_config(config).eval()
        return unet.half() if self.dtype == torch.float16 else unet

    def _time(self, unet, config: dict) -> float:
        from prunekit.costs import example_inputs

        inputs = _cast(example_inputs(config, self.batch, self.tokens, self.device), self.dtype)
        with torch.no_grad():
            def step():
                return unet(**inputs)

            return _time_cuda_graph(step) if self.timing == "cuda-graphs" else _time_eager(step)

    def _diffusers(self, remove: list[str]) -> float:
        from prunekit.surgery import derive

        config = derive(self.config, remove, "diffusers")[0] if remove else self.config
        unet = self._build(config)
        try:
            return self._time(unet, config)
        finally:
            del unet
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _free(self, remove: list[str]) -> float:
        from prunekit.ablation import ablate

        if self._teacher is None:
            self._teacher = self._build(self.config)
        with ablate(self._teacher, remove):
            return self._time(self._teacher, self.config)
