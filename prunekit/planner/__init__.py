"""The planner: which units to remove so that the student meets a budget with the least loss.

- space.py: what may be removed together, one space per plan kind (`diffusers`: plain diffusers students;
  `free`: any units, the student keeping prunekit's stand-ins)
- objective.py: the loss of a candidate (additive sensitivity, or measured); measured.py, recoverable.py
  the measured and recoverable losses; budget.py the bounds (latency timed by prunekit.latency)
- greedy.py, search.py: the two methods (greedy; Optuna TPE / NSGA-II)
- api.py: `PlanOptions` and `plan(...)`, what `prunekit plan --budget` calls, and the printed `summary`
"""
from prunekit.planner.api import PlanOptions, output_path, plan, summary

__all__ = ["PlanOptions", "output_path", "plan", "summary"]
