"""Scoring predictions against references: voxel, pooled, surface and lesion-wise metrics, operating
points (thresholds), calibration, and the evaluator that writes `cases.csv` and `summary.json`."""
