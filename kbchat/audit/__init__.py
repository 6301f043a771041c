"""The per-edit audit: which probes an edit gets (`probes`), how its answers before and after are
judged (`checks`), and the relation table it rephrases edits with (`relations`, data in `data/`)."""

from kbchat.audit.checks import EditView, run_checks
from kbchat.audit.probes import Probe, parse_user_probe, plan_probes

__all__ = ["EditView", "Probe", "parse_user_probe", "plan_probes", "run_checks"]
