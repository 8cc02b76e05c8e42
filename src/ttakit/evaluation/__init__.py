"""Scoring TTA on labelled data: the store of every task's per-view outputs, metrics, paired statistics, search, the report."""
