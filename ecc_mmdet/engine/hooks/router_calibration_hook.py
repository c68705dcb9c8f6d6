"""Calibrate a dynamic system on a calibration split before every validation / test.

A router configured with ``target_offload_ratio`` needs a threshold: this hook runs the edge
exits on a calibration split (never the evaluation split) and sets it to the matching percentile
of the router's scores, then logs the threshold. With ``model.calibrate_scores=True`` it first
fits the per-tier score maps on the same images (both tiers run on them). Exits that are still
training are recalibrated before each validation. Its config-time check (a router that needs
calibration has this hook, on a split that is not evaluated) lives here too and is registered into
:func:`~ecc_mmdet.utils.check_config`.

    custom_hooks = [dict(type='RouterCalibrationHook', num_images=200,
                         dataloader=dict(batch_size=4, num_workers=0, dataset=dict(...)))]
"""
import copy

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from ...deployment.calibration import calibrate_dynamic, check_calibration_split
from ...errors import ConfigError
from ...models.routers import BaseRouter
from ...utils.config_checks import check_dataset_paths, iter_datasets, register_config_check

__all__ = ['RouterCalibrationHook', 'check_router_calibration']


@register_config_check
def check_router_calibration(cfg: Config) -> None:
    """A router whose rule asks for calibration needs a calibration split (this hook) that is
    not an evaluation split; run by :func:`~ecc_mmdet.utils.check_config`."""
    model = cfg.get('model') or {}
    router = model.get('router')
    if not isinstance(router, dict) or model.get('edge_exit') is None or \
            not BaseRouter.config_needs_calibration(router):
        return
    calib = [h for h in cfg.get('custom_hooks') or []
             if isinstance(h, dict) and h.get('type') == 'RouterCalibrationHook']
    if not calib:
        ratio = BaseRouter.target_ratio(router.get('threshold'), router.get('target_offload_ratio'))
        raise ConfigError(
            f'model.router.target_offload_ratio={ratio} needs a calibration split, and the '
            'config has none. Add\n    custom_hooks = [dict(type=\'RouterCalibrationHook\', '
            'dataloader=dict(..., dataset=dict(... a split that is not the test split)))]\n'
            'or give model.router.threshold instead')
    evals = list(iter_datasets(cfg, ('val_dataloader', 'test_dataloader')))
    for h in calib:
        loader = h.get('dataloader') or {}
        check_calibration_split(loader.get('dataset'), evals)
        check_dataset_paths(Config(dict(calibration_dataloader=loader)),
                            ('calibration_dataloader', ), ())


@HOOKS.register_module()
class RouterCalibrationHook(Hook):
    """Args:
        dataloader: dataloader config of the calibration split (test pipeline).
        num_images: calibration images used (all of the split when None).
    """

    priority = 'HIGH'

    def __init__(self, dataloader: dict, num_images=None):
        if not isinstance(dataloader, dict) or 'dataset' not in dataloader:
            raise ConfigError('RouterCalibrationHook needs dataloader=dict(dataset=dict(...)) of '
                              'a calibration split')
        if num_images is not None and int(num_images) < 1:
            raise ConfigError(f'RouterCalibrationHook.num_images must be >= 1, got {num_images}')
        self.dataloader_cfg = dataloader
        self.num_images = None if num_images is None else int(num_images)
        self._loader = None

    def before_run(self, runner) -> None:
        evals = [(k, runner.cfg.get(k).get('dataset', {}))
                 for k in ('val_dataloader', 'test_dataloader') if runner.cfg.get(k)]
        check_calibration_split(self.dataloader_cfg.get('dataset'), evals)

    def before_val(self, runner) -> None:
        self._calibrate(runner)

    def before_test(self, runner) -> None:
        self._calibrate(runner)

    def _get_loader(self, runner):
        if self._loader is None:
            self._loader = runner.build_dataloader(copy.deepcopy(self.dataloader_cfg))
        return self._loader

    def _batches(self, runner, model):
        seen = 0
        for data in self._get_loader(runner):
            if self.num_images is not None and seen >= self.num_images:
                return
            pre = model.data_preprocessor(data, False)
            inputs, samples = pre['inputs'], pre['data_samples']
            if self.num_images is not None:
                keep = self.num_images - seen
                inputs, samples = inputs[:keep], samples[:keep]
            seen += len(samples)
            yield inputs, samples

    def _calibrate(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        router = getattr(model, 'router', None)
        if getattr(model, 'edge_exit', None) is None or router is None or (
                not model.calibrate_scores and not router.needs_calibration):
            return
        ds = self._get_loader(runner).dataset
        out = calibrate_dynamic(model, lambda: self._batches(runner, model), ds.ann_file,
                                ds.cat_ids)
        if model.calibrate_scores:
            runner.logger.info('RouterCalibrationHook: per-tier score maps fitted')
        if out is not None:
            t, reached = out
            runner.logger.info(f'RouterCalibrationHook: {type(router).__name__} threshold '
                               f'{t:.6g} offloads {reached:.1%} of the calibration images '
                               f'(target {float(router.target_offload_ratio):.1%})')
