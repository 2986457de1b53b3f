"""Evaluation: curves on unseen seeds, statistics, baseline tuning and figures."""
