"""The mmdet / mmengine internals the library relies on, each behind one wrapper: these tests fail
when the framework changes what the wrapper assumes.

* ``CloudOnlyAccountingHook`` wraps the loop's ``val_step`` / ``test_step``
  (``measure_step``) because the loops hand the step's output to ``evaluator.process`` before
  ``after_*_iter``;
* ``KnowledgeAdaptationHook`` reads ``Runner._has_loaded`` (``runner_has_loaded``);
* response distillation scores given RoIs with ``RoIHead._bbox_forward`` (``roi_cls_scores``).
"""
import inspect
import types

import torch
from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox2roi
from mmengine.runner import Runner, loops
from mmengine.structures import InstanceData
from torch import nn

import ecc_mmdet  # noqa: F401
from ecc_mmdet.distillation.distiller import roi_cls_scores
from ecc_mmdet.engine.hooks.cloud_only_accounting_hook import CloudOnlyAccountingHook
from ecc_mmdet.engine.hooks.knowledge_adaptation_hook import runner_has_loaded
from ecc_mmdet.structures import comm_record
from ecc_mmdet.structures.comm_record import CommRecord

from conftest import TINY_FRCNN, fake_batch, tiny_model_cfg


def test_loops_run_the_step_then_the_evaluator_then_the_iteration_hook():
    for loop, step, hook in ((loops.ValLoop, 'val_step', 'after_val_iter'),
                             (loops.TestLoop, 'test_step', 'after_test_iter')):
        src = inspect.getsource(loop.run_iter)
        order = [src.find(f'runner.model.{step}('), src.find('evaluator.process('),
                 src.find(f"'{hook}'")]
        assert -1 not in order and order == sorted(order), (loop.__name__, order)


class _CloudOnly(nn.Module):
    """A cloud-only 'detector': its samples carry a record without the cloud's share."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def test_step(self, data):
        self.conv(torch.zeros(1, 3, 16, 16))
        for s in data['data_samples']:
            comm_record.attach(s, CommRecord(payload_bytes=100, header_bytes=0, codec='jpeg',
                                             codec_time_s=0.001))
        return data['data_samples']


def test_the_hook_wraps_the_step_for_the_loop_only():
    model = _CloudOnly()
    runner = types.SimpleNamespace(model=model)
    hook = CloudOnlyAccountingHook()
    hook.before_test(runner)
    assert 'test_step' in model.__dict__
    samples = [DetDataSample(metainfo=dict(img_shape=(16, 16))) for _ in range(2)]
    out = runner.model.test_step(dict(inputs=None, data_samples=samples))
    recs = [comm_record.read(s) for s in out]
    assert all(r.cloud_time_s > 0 and r.cloud_flops > 0 and r.edge_time_s == 0.001
               for r in recs)
    hook.after_test(runner)
    assert 'test_step' not in model.__dict__
    assert model.test_step.__func__ is _CloudOnly.test_step


def test_runner_marks_loaded_checkpoints_in_has_loaded():
    assert 'self._has_loaded = False' in inspect.getsource(Runner.__init__)
    src = inspect.getsource(Runner.load_or_resume)
    assert 'if self._has_loaded' in src and src.count('self._has_loaded = True') >= 1
    assert runner_has_loaded(types.SimpleNamespace(_has_loaded=True))
    assert not runner_has_loaded(types.SimpleNamespace())


def test_bbox_forward_scores_given_rois_as_the_public_forward_does():
    for head, params in ((StandardRoIHead, ['self', 'x', 'rois']),
                         (CascadeRoIHead, ['self', 'stage', 'x', 'rois'])):
        assert list(inspect.signature(head._bbox_forward).parameters) == params
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(TINY_FRCNN)).eval()
    inputs, _ = fake_batch(model, n=1)
    boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [28.0, 20.0, 60.0, 58.0]])
    with torch.no_grad():
        x = model.extract_feat(inputs)
        got = roi_cls_scores(model.roi_head, x, bbox2roi([boxes]))
        ref = model.roi_head.forward(x, [InstanceData(bboxes=boxes)])[0]
    assert got.shape == (2, model.roi_head.bbox_head.num_classes + 1)
    assert torch.equal(got, ref)
