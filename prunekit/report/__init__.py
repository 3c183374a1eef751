"""`prunekit report`: one self-contained HTML page showing whatever a run directory holds."""
from prunekit.report.html import build_report

__all__ = ["build_report"]
