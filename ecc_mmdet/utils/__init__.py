from ..errors import ConfigError, DatasetNotFoundError
from .checkpoint_compat import allow_mmengine_checkpoints
from .config_checks import check_config, check_custom_imports, check_dataset_paths
from .data_root import set_data_root, use_data_classes
from .dist import finish_distributed, setup_cpu_distributed

__all__ = ['allow_mmengine_checkpoints', 'ConfigError', 'DatasetNotFoundError', 'check_config',
           'check_custom_imports', 'check_dataset_paths', 'finish_distributed', 'set_data_root',
           'setup_cpu_distributed', 'use_data_classes']
