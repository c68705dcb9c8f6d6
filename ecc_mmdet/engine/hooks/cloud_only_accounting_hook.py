"""Cloud time and FLOPs of cloud-only baselines when the Runner validates or tests.

The records of a cloud-only baseline (``JPEGCompressImage`` in the test pipeline) carry the
uplink bytes but not what the cloud spent running the whole detector, so without this hook
``tools/test.py`` could report neither ``comm/cloud_gflops`` nor a modelled latency. The hook
runs the model's ``val_step``/``test_step`` (preprocessing + predict) as a measured ``cloud``
step of :class:`~ecc_mmdet.evaluation.cloud_only_accounting.CloudOnlyAccounting` (time per image,
FLOPs once per input shape) and completes the records before the evaluator reads them. Split
detectors account for themselves; for them (and for records that are already complete) it
changes nothing.

Why a wrapper around the step, not ``before_*_iter`` / ``after_*_iter``: mmengine's
``ValLoop`` / ``TestLoop`` call ``evaluator.process`` (which copies the records) between the step
and ``after_*_iter``, so the records must be complete when the step returns. The hook shadows the
step with an instance attribute for the duration of the loop (:func:`measure_step`) and removes it
afterwards; ``tests/test_engine/test_framework_internals.py`` fails when mmengine's loops change
that order.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ...evaluation.cloud_only_accounting import CloudOnlyAccounting

__all__ = ['CloudOnlyAccountingHook']


@HOOKS.register_module()
class CloudOnlyAccountingHook(Hook):
    """Complete cloud-only communication records with the cloud's time and FLOPs.

    Add it next to a cloud-only test pipeline and ``CommunicationMetric``::

        custom_hooks = [dict(type='CloudOnlyAccountingHook')]

    Args:
        max_shapes: input shapes whose FLOP counts are cached (least recently used first out).
    """

    priority = 'LOW'

    def __init__(self, max_shapes: int = 16):
        self.accounting = CloudOnlyAccounting(max_shapes)

    def before_val(self, runner) -> None:
        self._wrap(runner, 'val_step')

    def after_val(self, runner) -> None:
        self._unwrap(runner, 'val_step')

    def before_test(self, runner) -> None:
        self._wrap(runner, 'test_step')

    def after_test(self, runner) -> None:
        self._unwrap(runner, 'test_step')

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def _wrap(self, runner, step: str) -> None:
        model = self._model(runner)
        if hasattr(model, 'compressor') or step in model.__dict__:
            return  # a split detector fills its own records; already wrapped
        measure_step(model, step, self.accounting)

    def _unwrap(self, runner, step: str) -> None:
        model = self._model(runner)
        if step in model.__dict__:
            delattr(model, step)  # the class's step shows through again


def measure_step(model, step: str, accounting: CloudOnlyAccounting) -> None:
    """Shadow ``model.<step>`` (``val_step`` / ``test_step``) with the same step run as a
    measured ``cloud`` step; ``delattr(model, step)`` undoes it. The only place that wraps a
    step of the model (see the module docstring for why)."""
    original = getattr(model, step)

    def accounted_step(data):
        samples = data.get('data_samples') or [] if isinstance(data, dict) else []
        # the unpadded input size of the first image keys the FLOP cache (batches of one
        # size share it); the step's own output tells the padded shape only afterwards
        shape = tuple(samples[0].metainfo.get('img_shape', ())) if samples else ()
        n = max(len(samples), 1)
        return accounting.run(lambda: original(data), n, shape)

    setattr(model, step, accounted_step)  # a plain function: nn.Module stores it as is
