"""The main job on the embedded default: data -> train the baseline -> COCO evaluation -> table.

    python tools/demo.py [--work-dir work_dirs/demo] [--data data/synthetic_coco] [--epochs 12]

Each stage is skipped when its result already exists (the dataset, the final checkpoint, the
metrics file), so a re-run only redoes what is missing. The underlying commands are printed so
that every step can be reproduced by hand with tools/train.py and tools/test.py.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from ecc_mmdet.datasets.synthetic_coco import ensure_synthetic_coco  # noqa: E402

BASELINE_CFG = 'configs/faster_rcnn_r18_fpn_synthetic.py'
PROGRESS = re.compile(r'Epoch\((train|val|test)\)|bbox_mAP_copypaste|Error|error:|Traceback')


def run_logged(cmd, log_file):
    """Run a tool, keep its full log in ``log_file`` and echo only progress lines."""
    print('$ ' + ' '.join(cmd), flush=True)
    with open(log_file, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
        for line in proc.stdout:
            log.write(line)
            if PROGRESS.search(line):
                print('  ' + line.rstrip()[:160], flush=True)
        rc = proc.wait()
    if rc != 0:
        sys.exit(f'command failed (exit {rc}); full log: {log_file}')


def latest_metrics(work_dir):
    files = sorted(glob.glob(osp.join(work_dir, '*', '*.json')), key=osp.getmtime)
    return json.load(open(files[-1])) if files else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data', default='data/synthetic_coco')
    parser.add_argument('--epochs', type=int, default=12)
    args = parser.parse_args(argv)
    os.chdir(REPO)
    t_start = time.time()
    py = sys.executable

    print('[1/3] synthetic COCO dataset', flush=True)
    summary = ensure_synthetic_coco(args.data, progress=True)
    print(f"  {'generated' if summary['generated'] else 'reused'} {args.data}: "
          f"{summary['num_images']['train']} train / {summary['num_images']['val']} val images",
          flush=True)

    teacher_dir = osp.join(args.work_dir, 'baseline')
    ckpt = osp.join(teacher_dir, f'epoch_{args.epochs}.pth')
    print(f'[2/3] train the baseline Faster R-CNN R18 ({args.epochs} epochs)', flush=True)
    if osp.isfile(ckpt):
        print(f'  reusing {ckpt}', flush=True)
    else:
        os.makedirs(teacher_dir, exist_ok=True)
        resume = ['--resume'] if glob.glob(osp.join(teacher_dir, 'epoch_*.pth')) else []
        run_logged([py, 'tools/train.py', BASELINE_CFG, '--work-dir', teacher_dir, *resume,
                    '--data-root', args.data, '--cfg-options',
                    f'train_cfg.max_epochs={args.epochs}'], osp.join(teacher_dir, 'train.log'))

    print('[3/3] evaluate with CocoMetric', flush=True)
    test_dir = osp.join(args.work_dir, 'baseline_test')
    run_logged([py, 'tools/test.py', BASELINE_CFG, ckpt, '--work-dir', test_dir,
                '--data-root', args.data], osp.join(args.work_dir, 'test.log'))
    m = latest_metrics(test_dir)
    rows = [('bbox mAP', 'coco/bbox_mAP'), ('bbox mAP@50', 'coco/bbox_mAP_50'),
            ('bbox mAP@75', 'coco/bbox_mAP_75'), ('bbox mAP small', 'coco/bbox_mAP_s'),
            ('bbox mAP medium', 'coco/bbox_mAP_m')]
    print('\nBaseline Faster R-CNN R18-FPN on the synthetic validation set')
    print('-' * 40)
    for name, key in rows:
        print(f'{name:<20}{100 * m[key]:>8.1f}')
    print('-' * 40)
    print(f'wall time {time.time() - t_start:.0f} s; logs and checkpoints in {args.work_dir}')
    with open(osp.join(args.work_dir, 'summary.json'), 'w') as f:
        json.dump({'baseline': m, 'wall_time_s': time.time() - t_start}, f, indent=2)


if __name__ == '__main__':
    main()
