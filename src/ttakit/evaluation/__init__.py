"""Scoring TTA on labelled data: the logits store, metrics, paired statistics, search, the report."""
