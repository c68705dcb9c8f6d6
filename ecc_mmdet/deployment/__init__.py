"""The deployment path (edge -> exits -> router -> encode -> cloud -> merge), its accounting,
and the edge-only / cloud-only builds."""
from .meter import DeploymentMeter
from .pipeline import EdgeOutcome, run_cloud, run_deployment, run_edge
from .sides import RemovedModule, build_cloud, build_edge

__all__ = ['DeploymentMeter', 'EdgeOutcome', 'RemovedModule', 'build_cloud', 'build_edge',
           'run_cloud', 'run_deployment', 'run_edge']
