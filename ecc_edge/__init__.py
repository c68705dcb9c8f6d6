"""ecc_edge: what an edge device needs to speak the ecc_mmdet bitstream, without PyTorch,
MMDetection or mmcv.

* :mod:`ecc_edge.codecs` -- payload framing (format v2), range coding (constriction) and the
  compact detections report; numpy only. ``ecc_mmdet`` uses these very modules.
* :mod:`ecc_edge.runtime` -- the light edge runtime: an edge graph exported to ONNX
  (``tools/export_edge_onnx.py``) run with ONNX Runtime, preprocessing with OpenCV/numpy,
  entropy coding and framing as above.

Nothing in this package may import torch, mmdet, mmcv or ecc_mmdet (tested in a subprocess).
"""
