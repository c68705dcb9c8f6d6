"""Coding tables of the averaged model that mmengine's ``EMAHook`` evaluates and saves.

mmdet's RTMDet and YOLOX configs keep an exponential moving average of the weights (``EMAHook``
with ``ExpMomentumEMA``) and evaluate and save that average instead of the trained weights. An
entropy model's integer coding tables are derived from its weights, so the average must code
with tables built from the averaged weights -- never averaged, nor copied from the trained model.

* Evaluation needs nothing from this hook: ``EMAHook`` swaps the averaged weights into the model
  before validation and test, and ``eval()`` rebuilds the tables, whose fingerprint no longer
  matches. The tables are not buffers (see :class:`FactorizedEntropyModel`), so the swap, which
  copies buffers in place, leaves them alone.
* Saving: ``EMAHook`` writes the averaged weights into the checkpoint's ``state_dict`` (the one
  ``tools/test.py`` and the edge/cloud exports deploy). This hook runs after it, builds the
  averaged model's tables and writes them next to those weights, so the edge and the cloud load
  the same integers rather than each rebuilding them (float maths may differ across machines).
  Without it the checkpoint holds stale tables (the trained model's, or none), which the
  fingerprint marks as such: a deployment then rebuilds them on ``eval()``.
* The averaged copy otherwise holds no tables: they would be stale at once, and mmengine copies
  the copy's state dict entry by entry from the model until the average starts
  (``begin_iter``/``begin_epoch``), which tables of another size would break.
"""
from typing import Iterator, Optional, Tuple

from mmengine.hooks import EMAHook, Hook
from mmdet.registry import HOOKS, MODELS
from torch import nn

from ...entropy_models import FactorizedEntropyModel
from ...errors import ConfigError
from ...models.compressors import EntropyBottleneckNeck
from ...utils.config_checks import register_config_check

__all__ = ['EMACodingTablesHook']


def _models_with_tables(module: nn.Module) -> Iterator[Tuple[str, FactorizedEntropyModel]]:
    """(state-dict prefix, model) of every entropy model whose tables follow its weights."""
    for name, mod in module.named_modules():
        if isinstance(mod, FactorizedEntropyModel):
            yield name, mod


@HOOKS.register_module()
class EMACodingTablesHook(Hook):
    """Give the checkpoints of ``EMAHook``'s averaged model the tables of its own weights.

    List it in ``custom_hooks`` next to ``EMAHook``; it must run after it (its default priority,
    ``BELOW_NORMAL``, is below mmdet's 49 and mmengine's default ``NORMAL``).
    """

    priority = 'BELOW_NORMAL'

    def __init__(self):
        self._ema_hook: Optional[EMAHook] = None

    def before_run(self, runner) -> None:
        hooks = list(runner.hooks)
        ema = [h for h in hooks if isinstance(h, EMAHook)]
        self._ema_hook = ema[0] if ema else None
        if self._ema_hook is not None and hooks.index(self) < hooks.index(self._ema_hook):
            raise ConfigError('EMACodingTablesHook must run after EMAHook (it completes the '
                              "checkpoints EMAHook writes): give it a larger 'priority' than "
                              "EMAHook's, e.g. the default 'BELOW_NORMAL'")

    def _averaged_model(self) -> Optional[nn.Module]:
        ema_model = getattr(self._ema_hook, 'ema_model', None)
        return None if ema_model is None else ema_model.module

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """``EMAHook`` has just loaded the checkpoint into the averaged copy: drop its tables."""
        averaged = self._averaged_model()
        for _, em in _models_with_tables(averaged) if averaged is not None else ():
            em.reset_tables()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Build the averaged model's tables and store them with its weights."""
        averaged = self._averaged_model()
        if averaged is None:
            return
        state = checkpoint['state_dict']
        for name, em in _models_with_tables(averaged):
            em.update()  # the quantiles and tables of the averaged weights
            state.update({k: v.detach().cpu() for k, v in
                          em.state_dict(prefix=f'{name}.').items()})
            em.reset_tables()


@register_config_check
def check_ema_tables(cfg) -> None:
    """``EMAHook`` with an entropy-coded compressor needs this hook, or its checkpoints carry
    tables of other weights than the averaged ones they hold; run by ``check_config``."""
    hooks = [h.get('type') for h in cfg.get('custom_hooks') or [] if isinstance(h, dict)]
    compressor = (cfg.get('model') or {}).get('compressor') or {}
    cls = MODELS.get(compressor['type']) if isinstance(compressor, dict) and \
        compressor.get('type') else None  # an unsplit config has none
    coded = isinstance(cls, type) and issubclass(cls, EntropyBottleneckNeck)
    if coded and 'EMAHook' in hooks and 'EMACodingTablesHook' not in hooks:
        raise ConfigError(
            f"custom_hooks has EMAHook and model.compressor is {compressor['type']}, whose coding "
            'tables follow the weights: add dict(type=\'EMACodingTablesHook\') to custom_hooks '
            '(after EMAHook) so that checkpoints of the averaged model carry its own tables')
