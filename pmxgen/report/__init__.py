"""Reports of fits: result files and tables."""
from .tables import results_summary, write_fit

__all__ = ["results_summary", "write_fit"]
