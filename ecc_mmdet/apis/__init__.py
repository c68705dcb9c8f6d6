from .inference import (build_detector, build_test_dataset, iter_batches, load_config,
                        unsplit_model_cfg)

__all__ = ['build_detector', 'build_test_dataset', 'iter_batches', 'load_config',
           'unsplit_model_cfg']
