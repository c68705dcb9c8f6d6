"""The ``ecc_mmdet`` config scope: ``_base_ = 'ecc_mmdet::configs/<path>'``, as ``mmdet::`` works.

mmengine needs two things for a scope. The config loader maps it to a package whose
``.mim/configs`` holds the files (``MODULE2PACKAGE``, a fixed list of OpenMMLab projects; the
wheel ships the repository's ``configs/`` as ``ecc_mmdet/.mim/configs/configs``), and it stamps
``_scope_='ecc_mmdet'`` on the dicts inherited that way, so the builders then look for the
registries of that scope: children of mmdet's, which hold nothing of their own and find everything
in mmdet's (where this package registers its components).

The scope exists once ``ecc_mmdet`` is imported: mmengine resolves ``_base_`` before it imports a
config's ``custom_imports``, so the process that loads such a config imports ``ecc_mmdet`` first.
"""
from mmdet import registry as mmdet_registry
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import Registry

SCOPE = 'ecc_mmdet'

# mmengine builds in this scope through `<scope>.registry`, found by scope in each registry tree;
# the locations are mmdet's, so a lookup imports what mmdet's own lookup would.
REGISTRIES = {
    name: Registry(reg.name, parent=reg, scope=SCOPE, locations=list(reg._locations))
    for name, reg in vars(mmdet_registry).items()
    if isinstance(reg, Registry) and reg.scope == 'mmdet'}

# A module name, not the distribution's: mmengine then locates the configs beside the imported
# package (importlib's spec), in every install mode; the distribution's recorded location is
# site-packages, where a PEP 660 editable install has no package directory.
MODULE2PACKAGE[SCOPE] = __name__
