"""Quantization: fake-quant primitives, QAT (Jacob et al. 2018), low-bit and binary weights.

Post-training int8 with real integer kernels lives in ``ptq`` and ``backends``.
"""

from dwindle.quantization.bitwidth import (
    BitChoice,
    MixedBits,
    choose_bit_widths,
    layer_sensitivity,
    quantize_mixed_,
)
from dwindle.quantization.fake_quant import (
    UNIFORM_BITS,
    FakeQuantize,
    QParams,
    check_bits,
    compute_qparams,
    dequantize,
    fake_quant,
    qrange,
    quantize,
)
from dwindle.quantization.lowbit import (
    METHOD_BITS,
    BinaryWeight,
    CodebookWeight,
    LowBit,
    TernaryWeight,
    UniformWeight,
    WeightQuantizer,
    binary_activation,
    make_weight_quantizer,
    pack_layer,
    quantize_weights_,
)
from dwindle.quantization.nonuniform import assign, codebook_quant, kmeans_codebook, log_codebook
from dwindle.quantization.observers import (
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from dwindle.quantization.packing import (
    PACKED_FORMAT,
    PackedConv,
    PackedLinear,
    pack_bits,
    unpack_bits,
)
from dwindle.quantization.ptq import PTQ, Int8Dynamic, Int8Static, float_layers
from dwindle.quantization.ptq import quantize as quantize_int8
from dwindle.quantization.qat import (
    QAT,
    BinaryActivation,
    QATLayer,
    convert_qat,
    fold_bn,
    prepare_qat,
    qat,
)
from dwindle.quantization.rounding import NearestRounding, Rounding, StochasticRounding
from dwindle.quantization.sqnr import layer_sqnr, output_sqnr, sqnr, weight_sqnr

__all__ = [
    "METHOD_BITS",
    "PACKED_FORMAT",
    "PTQ",
    "QAT",
    "UNIFORM_BITS",
    "BinaryActivation",
    "BinaryWeight",
    "BitChoice",
    "CodebookWeight",
    "FakeQuantize",
    "Int8Dynamic",
    "Int8Static",
    "LowBit",
    "MSEObserver",
    "MinMaxObserver",
    "MixedBits",
    "MovingAverageObserver",
    "NearestRounding",
    "Observer",
    "PackedConv",
    "PackedLinear",
    "PercentileObserver",
    "QATLayer",
    "QParams",
    "Rounding",
    "StochasticRounding",
    "TernaryWeight",
    "UniformWeight",
    "WeightQuantizer",
    "assign",
    "binary_activation",
    "check_bits",
    "choose_bit_widths",
    "codebook_quant",
    "compute_qparams",
    "convert_qat",
    "dequantize",
    "fake_quant",
    "float_layers",
    "fold_bn",
    "kmeans_codebook",
    "layer_sensitivity",
    "layer_sqnr",
    "log_codebook",
    "make_observer",
    "make_weight_quantizer",
    "output_sqnr",
    "pack_bits",
    "pack_layer",
    "prepare_qat",
    "qat",
    "qrange",
    "quantize",
    "quantize_int8",
    "quantize_mixed_",
    "quantize_weights_",
    "sqnr",
    "unpack_bits",
    "weight_sqnr",
]
