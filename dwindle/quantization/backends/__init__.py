"""Integer-kernel backends of post-training int8: onnxruntime (``ort``) and torchao.

Each backend module imports its optional dependency lazily (extra ``quant``) and registers the
artifact format of the models it returns (``onnx-int8``, ``torchao-pt2``).
"""

from dwindle.quantization.backends.ort import OrtModule, ort_float
from dwindle.quantization.backends.torchao_backend import TorchaoModule

__all__ = ["OrtModule", "TorchaoModule", "ort_float"]
