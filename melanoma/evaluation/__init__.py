"""Evaluation: metrics with CIs, GradCAM and the report."""
