"""Build models and data outside the Runner, for the benchmark tools and the edge/cloud apps."""
import copy
import os.path as osp
from typing import Iterator, Mapping, Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules

from ..errors import ConfigError
from ..models.detectors import EdgeCloudDetectorMixin
from ..utils.checkpoint_check import load_checked
from ..utils.config_checks import check_dataset_paths
from ..utils.data_root import set_data_root
from .build_errors import config_error_of

#: the top-level parts a split config adds to a detector: a checkpoint of the detector it was
#: made from lacks them, and a split checkpoint loaded into that detector has them extra
SPLIT_PARTS = EdgeCloudDetectorMixin.EDGE_CLOUD_KEYS
#: the edge tiers of a dynamic split detector: a system's checkpoint minus these is its student
EDGE_TIER_PARTS = ('edge_exit', 'extension_exit', 'router')


def _split_class(type_name):
    """The registered split detector class named ``type_name``, or None."""
    cls = MODELS.get(type_name) if isinstance(type_name, str) else type_name
    return cls if isinstance(cls, type) and issubclass(cls, EdgeCloudDetectorMixin) else None


def is_split_config(model_cfg) -> bool:
    """Whether ``model_cfg`` builds a split (EdgeCloud*) detector (asked before a checkpoint
    is loaded, so that the tools refuse an ordinary detector's config with that reason)."""
    register_all_modules(init_default_scope=True)
    return _split_class(model_cfg['type']) is not None


def load_config(config, data_root: Optional[str] = None, cfg_options: Optional[dict] = None
                ) -> Config:
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        if not osp.isfile(config):
            raise ConfigError(f'Config file not found: {config}')
        # no yapf pass over the dumped config text: mmengine formats it on every dump and log
        # (seconds per tool start); the text stays a valid config, only not reflowed
        cfg = Config.fromfile(config, format_python_code=False)
    if data_root:
        set_data_root(cfg, data_root)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def unsplit_model_cfg(model_cfg) -> dict:
    """The ordinary detector a split config was made from (same weights, no compressor)."""
    cfg = copy.deepcopy(model_cfg)
    split = _split_class(cfg['type'])
    if split is not None:
        # FasterRCNN/RetinaNet etc. are thin subclasses of Two/SingleStageDetector, which run the
        # same; RTMDet, YOLOX and the DETR family have their own split class
        cfg['type'] = split.unsplit_type
        for k in split.EDGE_CLOUD_KEYS:
            cfg.pop(k, None)
    return cfg


def split_model_cfg(model_cfg, split_after: int, compressor: dict) -> dict:
    """An ordinary detector's model config turned into a split one (inverse of the above).

    The weights of the ordinary detector load into the result unchanged (the compressor's are
    new), e.g. to evaluate training-free codecs such as ``QuantizeNeck`` on a trained model.
    """
    cfg = copy.deepcopy(model_cfg)
    own = f"EdgeCloud{cfg['type']}" if isinstance(cfg['type'], str) else None
    if own is not None and MODELS.get(own) is not None:
        cfg['type'] = own  # RTMDet, YOLOX, the DETR family (or the refusal of one)
    else:
        cfg['type'] = ('EdgeCloudTwoStageDetector' if 'roi_head' in cfg
                       else 'EdgeCloudSingleStageDetector')
    cfg.update(split_after=split_after, compressor=compressor)
    return cfg


def build_model(model_cfg):
    """``MODELS.build`` (registering mmdet's modules), a misspelled type or argument refused
    with its config key (one ConfigError line)."""
    register_all_modules(init_default_scope=True)
    try:
        return MODELS.build(copy.deepcopy(model_cfg))
    except (KeyError, TypeError) as e:
        error = config_error_of(e, model_cfg, 'model')
        if error is None:
            raise
        raise error from e


def load_weights(model, checkpoint: Union[str, Mapping], partial: Union[bool, str] = False,
                 path: Optional[str] = None) -> Mapping:
    """Load ``checkpoint`` (a path, or a checkpoint dict read from ``path``) into ``model``
    after checking that it fits (:mod:`ecc_mmdet.utils.checkpoint_check`).

    ``partial``: False refuses any missing, unexpected or reshaped key; ``'split'`` lets the
    split parts (:data:`SPLIT_PARTS`: compressor, exits, router) be absent or extra, as when a
    detector's weights initialise its split version or a split checkpoint its unsplit
    detector; ``'exits'`` lets only the edge tiers (:data:`EDGE_TIER_PARTS`) be absent or
    extra, as when a dynamic system's checkpoint is evaluated as its split student (every
    image to the cloud); True loads whatever fits. Returns the checkpoint dict."""
    allow = {'split': SPLIT_PARTS, 'exits': EDGE_TIER_PARTS}.get(partial, ())
    return load_checked(model, checkpoint, allow=allow, partial=partial is True, path=path)


def build_detector(model_cfg, checkpoint: Optional[str] = None, device: str = 'cpu',
                   partial: Union[bool, str] = False):
    """Build a detector, load ``checkpoint`` (refused when it does not fit the model, see
    :func:`load_weights` for ``partial``), put it in eval mode."""
    model = build_model(model_cfg)
    if checkpoint is not None:
        load_weights(model, checkpoint, partial)
    return model.to(device).eval()


def build_test_dataset(cfg: Config, pipeline=None):
    """The config's test dataset (optionally with another test pipeline)."""
    check_dataset_paths(cfg, ('test_dataloader',), ())
    ds_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    if pipeline is not None:
        ds_cfg.pipeline = pipeline
    return DATASETS.build(ds_cfg)


def iter_batches(model, dataset, num_images: Optional[int] = None, batch_size: int = 1
                 ) -> Iterator[Tuple[torch.Tensor, list]]:
    """Preprocessed (inputs, data_samples) batches of the dataset, as the Runner would feed."""
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        data = model.data_preprocessor(pseudo_collate(items), False)
        yield data['inputs'], data['data_samples']
