"""The library's import graph: layers that only point down, and no loops.

Every ``import`` in ``ecc_mmdet/`` counts, inside functions too (an in-function import that dodges
a loop is still the loop). A module may import its own group and the groups of lower layers; a
package may import its own submodules. ``ecc_edge`` (the torch-free device package) imports
nothing of ``ecc_mmdet``.
"""
import ast
import os
import os.path as osp
from collections import defaultdict

from conftest import REPO

#: bottom to top; groups in one layer do not import each other
LAYERS = [
    ('ecc_mmdet.errors', 'ecc_mmdet.version', 'ecc_mmdet.registry'),
    ('ecc_mmdet.utils',),
    ('ecc_mmdet.structures',),
    ('ecc_mmdet.entropy_models',),
    ('ecc_mmdet.evaluation',),
    ('ecc_mmdet.datasets',),
    ('ecc_mmdet.deployment',),
    ('ecc_mmdet.models.split', 'ecc_mmdet.models.compressors', 'ecc_mmdet.models.exits',
     'ecc_mmdet.models.routers'),
    ('ecc_mmdet.models.detectors',),
    ('ecc_mmdet.distillation',),
    ('ecc_mmdet.adaptation',),
    ('ecc_mmdet.apis',),
    ('ecc_mmdet.engine', 'ecc_mmdet.serving'),
]
LAYER_OF = {group: i for i, groups in enumerate(LAYERS) for group in groups}


def _module_name(path: str, root: str) -> str:
    rel = osp.relpath(path, root)[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def import_graph(package: str) -> dict:
    """module -> set of imported modules of the project (``ecc_mmdet`` and ``ecc_edge``)."""
    root = REPO
    modules = {}
    for d, _, files in os.walk(osp.join(root, package)):
        for f in files:
            if f.endswith('.py'):
                modules[_module_name(osp.join(d, f), root)] = osp.join(d, f)
    graph = defaultdict(set)
    for name, path in modules.items():
        is_pkg = path.endswith('__init__.py')
        base = name.split('.') if is_pkg else name.split('.')[:-1]
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom):
                parts = base[:len(base) - node.level + 1] if node.level else []
                target = '.'.join(parts + ([node.module] if node.module else []))
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f'{target}.{alias.name}'
                    graph[name].add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names)
    project = ('ecc_mmdet', 'ecc_edge')
    return {m: {t for t in ts if t.split('.')[0] in project} for m, ts in graph.items()}


def _group(module: str) -> str:
    parts = module.split('.')
    depth = 3 if len(parts) > 2 and parts[1] == 'models' else 2
    return '.'.join(parts[:depth])


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_every_group_has_a_layer():
    graph = import_graph('ecc_mmdet')
    groups = {_group(m) for m in graph} - {'ecc_mmdet', 'ecc_mmdet.models'}
    assert groups <= set(LAYER_OF), f'give these groups a layer: {sorted(groups - set(LAYER_OF))}'


def test_no_import_loops():
    assert _cycles(import_graph('ecc_mmdet')) == []


def test_imports_only_point_down():
    upward = []
    for module, targets in import_graph('ecc_mmdet').items():
        src = _group(module)
        if src not in LAYER_OF:  # package roots import their own subpackages
            assert all(t.startswith(module + '.') or t == 'ecc_edge' or t.startswith('ecc_edge.')
                       or _group(t) in LAYER_OF for t in targets), module
            continue
        for t in targets:
            dst = _group(t)
            if t.split('.')[0] == 'ecc_edge' or dst == src:
                continue
            if dst not in LAYER_OF or LAYER_OF[dst] >= LAYER_OF[src]:
                upward.append(f'{module} -> {t}')
    assert upward == [], '\n'.join(sorted(upward))


def test_the_device_package_imports_nothing_of_the_library():
    graph = import_graph('ecc_edge')
    bad = [f'{m} -> {t}' for m, ts in graph.items() for t in ts if t.startswith('ecc_mmdet')]
    assert bad == []


def test_the_checker_sees_a_loop_and_an_upward_import():
    """The checks above can fail: a planted loop and a planted upward arrow are found."""
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    graph = import_graph('ecc_mmdet')
    assert 'ecc_mmdet.errors' in graph['ecc_mmdet.models.routers.base']
    assert LAYER_OF[_group('ecc_mmdet.models.routers.base')] > LAYER_OF['ecc_mmdet.deployment']
