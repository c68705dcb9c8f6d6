"""Fit the learned router of a dynamic model (after its exits are trained) and save a checkpoint.

    python tools/train_router.py configs/ecc_faster_rcnn_r18_synthetic_dynamic.py \
        work_dirs/demo/dynamic/epoch_12.pth --out work_dirs/demo/dynamic/learned_router.pth \
        [--skip 200] [--num-images 200] [--data-root DIR]

The router (an MLP on the exit's outputs) learns, per image, the gain of the cloud's detections
over the exit's: it regresses or ranks the per-image AP gain, or classifies "the cloud finds more
objects here" (``model.router.objective``). The pairs come from the config's calibration split
(held-out images: the exit and the cloud overfit their own training images, so gains measured there would be
biased), skipping the first ``--skip`` images, which RouterCalibrationHook uses to set the
threshold. The output is the input checkpoint plus the router's weights; use it with
``--cfg-options model.router.type=LearnedRouter`` (the router refuses any other exits).
"""
import argparse
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
import torch
from mmengine.config import DictAction
from mmengine.runner import save_checkpoint

from ecc_mmdet.apis import load_config
from ecc_mmdet.models.routers import LearnedRouter, exit_fingerprint
from ecc_mmdet.utils import ConfigError

from ecc_tools.dynamic import exit_scores, load_dynamic, offload_targets, router_target, run_pass


def _load(args):
    """(model with a fresh LearnedRouter, calibration split, input checkpoint, whether the
    config itself routes with a LearnedRouter); ConfigError for a checkpoint without trained
    exits (the router would be fitted for random ones)."""
    cfg = load_config(args.config, args.data_root, args.cfg_options)
    router_cfg = cfg.model.get('router') or {}
    learned = router_cfg.get('type') == 'LearnedRouter'
    # the router's settings as the config has them, so the checkpoint loads into it
    router = dict(type='LearnedRouter', threshold=0.0, **{
        k: router_cfg[k] for k in ('top_k', 'hidden', 'pool_features', 'gain_features',
                                   'ood_features', 'objective') if learned and k in router_cfg})
    cfg, model, calib = load_dynamic(args.config, args.checkpoint, args.data_root,
                                     cfg_options=args.cfg_options,
                                     router=router, train_exits_only=False)
    ckpt = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
    if not any(k.startswith('edge_exit.') for k in ckpt.get('state_dict', ckpt)):
        raise ConfigError(f'{args.checkpoint} holds no edge_exit weights: a router fitted on it '
                          'would route for untrained exits (and be refused with trained ones). '
                          'Give the checkpoint of the trained dynamic model (tools/train.py on '
                          'the dynamic config)')
    return model, calib, ckpt, learned


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', help='the dynamic model with trained exits')
    p.add_argument('--out', required=True, help='checkpoint to write (model + router)')
    p.add_argument('--skip', type=int, default=200,
                   help='calibration-split images left to the threshold calibration')
    p.add_argument('--num-images', type=int, default=200)
    p.add_argument('--data-root')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings in the config, key=value (e.g. '
                   'model.router.objective=rank)')
    args = p.parse_args(argv)
    try:
        model, calib, ckpt, learned = _load(args)
    except (ConfigError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    idx = list(range(args.skip, args.skip + args.num_images))
    if idx[-1] >= len(calib):
        print(f'error: the calibration split has {len(calib)} images; --skip {args.skip} + '
              f'--num-images {args.num_images} need more (tools/make_synthetic_coco.py '
              '--num-calib N)', file=sys.stderr)
        return 2
    print(f'exit and cloud on {len(idx)} held-out images', flush=True)
    edge = run_pass(model, calib, idx, False, 'edge exit')
    cloud = run_pass(model, calib, idx, True, 'cloud')
    router: LearnedRouter = model.router
    targets = router_target(router, offload_targets(calib.ann_file, edge, cloud, calib.cat_ids))
    _, feats = exit_scores(model, calib, idx, {}, dict(router=router))
    try:
        fit = router.fit(feats['router'], targets, exit_fingerprint(model.edge_exit))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f"fitted ({fit['objective']}): {fit['epochs']} epochs (chosen on a hold-out), "
          f"hold-out loss {fit['holdout_loss']:.4f}; target variance {float(targets.var()):.4f}, "
          f"mean {float(targets.mean()):+.3f}, {float((targets > 0).double().mean()):.0%} of "
          'images gain')
    state = ckpt.get('state_dict', ckpt)
    state.update({f'router.{k}': v for k, v in router.state_dict().items()})
    save_checkpoint(dict(state_dict=state, meta=dict(ckpt.get('meta') or {},
                                                     learned_router=fit)), args.out)
    how = '' if learned else ' --cfg-options model.router.type=LearnedRouter'
    print(f'wrote {args.out}; evaluate with python tools/test.py {args.config} {args.out}{how}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
