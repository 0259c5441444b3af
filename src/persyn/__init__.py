"""persyn: personalised multi-teacher data synthesis (PerSyn, arXiv 2510.10925)."""

__version__ = "0.1.0"
