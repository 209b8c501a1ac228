"""The Gen-neG loop (Algorithm 1): balanced oracle-labelled data, classifier training, guidance stacking,
distillation, runs and reports.

Submodules are imported on use (``from genneg.pipeline.balanced import draw_balanced``); this package
imports nothing eagerly so that ``import genneg.pipeline`` stays cheap.
"""
