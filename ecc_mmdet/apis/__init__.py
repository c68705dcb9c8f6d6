"""What a user imports to run models outside the Runner: build, load, feed and evaluate.

Orchestration (training stages as subprocesses, benchmark targets, tables, plots) lives with the
tools in the repository, not here: this package works from a plain ``pip install``.
"""
from .evaluation import evaluate_detector
from .inference import (SPLIT_PARTS, build_detector, build_test_dataset, iter_batches,
                        load_config, load_weights, split_model_cfg, unsplit_model_cfg)

__all__ = ['SPLIT_PARTS', 'build_detector', 'build_test_dataset', 'evaluate_detector',
           'iter_batches', 'load_config', 'load_weights', 'split_model_cfg',
           'unsplit_model_cfg']
