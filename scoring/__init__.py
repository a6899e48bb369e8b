"""Scoring: per-AU metrics of pooled predictions, their 95% intervals over subjects, finished
run folders as compare.py reads them, and where each AU detector looks (saliency)."""
