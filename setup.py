"""Install ecc_mmdet: `pip install -e .` (use tools/setup_env.sh for the full pinned stack).

mmcv is deliberately *not* in install_requires: it must be built from source for torch 2.13 and
pip would otherwise try to rebuild or replace it. tools/setup_env.sh installs it first.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'",
                    (HERE / 'ecc_mmdet' / 'version.py').read_text()).group(1)

setup(
    name='ecc_mmdet',
    version=VERSION,
    description='Edge-cloud collaborative object detection for MMDetection 3.x',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['ecc_mmdet', 'ecc_mmdet.*', 'ecc_edge', 'ecc_edge.*']),
    python_requires='>=3.9',
    install_requires=[
        'mmengine>=0.10.0,<0.11',
        'mmdet>=3.3.0,<3.4',
        'constriction>=0.4',
        'pycocotools',
        'numpy',
    ],
    extras_require={'tests': ['pytest']},
    license='Apache-2.0',
    zip_safe=False,
)
