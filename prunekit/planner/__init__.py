"""The planner: which units to remove so that the student meets a budget with the least loss.

- space.py: what may be removed together (`diffusers`: standard diffusers students; `free`: any units)
- objective.py: the loss of a candidate (additive sensitivity, or measured)
- latency.py: the latency of a candidate, timed on a device
- greedy.py, search.py: the two methods (greedy; Optuna TPE / NSGA-II)
- api.py: `plan(...)`, what `prunekit plan --budget` calls, and the printed `summary`
"""
from prunekit.planner.api import output_path, plan, summary

__all__ = ["output_path", "plan", "summary"]
