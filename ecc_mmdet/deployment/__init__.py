"""The deployment path (edge -> exits -> router -> encode -> cloud -> merge), its accounting,
the edge-only / cloud-only builds, and the normalisation-parameter downlink."""
from ..evaluation.meter import DeploymentMeter
from .param_update import (StaleUpdateError, apply_param_update, edge_norm_modules,
                           edge_norm_parameters,
                           make_param_update)
from .pipeline import EdgeOutcome, meter_for, run_cloud, run_deployment, run_edge
from .sides import RemovedModule, build_cloud, build_edge

__all__ = ['DeploymentMeter', 'EdgeOutcome', 'RemovedModule', 'StaleUpdateError',
           'apply_param_update', 'build_cloud', 'build_edge', 'edge_norm_modules',
           'edge_norm_parameters',
           'make_param_update', 'meter_for', 'run_cloud', 'run_deployment', 'run_edge']
