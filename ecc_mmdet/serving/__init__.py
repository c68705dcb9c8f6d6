"""Serving the cloud side over HTTP: runtime (payload -> detections), dynamic batching, the
service (auth, limits, idempotency, metrics), and its front ends (FastAPI app; Ray Serve
deployment). The programs are ``tools/serve_cloud.py``, ``tools/serve_ray.py`` and
``tools/edge_client.py``.

Import the submodules directly: ``fastapi``/``prometheus_client`` are needed only here, and
``ray`` only by :mod:`.ray_deployment`.
"""
