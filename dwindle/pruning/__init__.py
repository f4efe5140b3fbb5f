"""Pruning: unstructured masks, criteria and schedules, block / N:M masks, sparse export,
sensitivity scans (unstructured half), and neuron / filter / layer / stage-width removal
(structured half).

Every module below registers its techniques with :func:`dwindle.config.register_technique`
on import; public verbs, configs and primitives are re-exported here.
"""

from dwindle.pruning.blocks import expand_tile_mask, nm_mask, tile_scores
from dwindle.pruning.criteria import Criterion, HanThreshold, Magnitude, ThresholdRule
from dwindle.pruning.depth import (
    LayerPruning,
    block_scores,
    prune_layers_,
    removable_blocks,
    remove_block,
)
from dwindle.pruning.gradual import (
    AGPCallback,
    agp_schedule,
    dropout_rescale,
    rescale_dropouts_,
    retrain_config,
)
from dwindle.pruning.masks import (
    MASK_SUFFIX,
    PRUNABLE_TYPES,
    MaskCallback,
    apply_masks,
    get_mask,
    global_magnitude_masks,
    magnitude_mask,
    masked_parameters,
    prunable_modules,
    remove_masks,
    set_mask,
    threshold_mask,
)
from dwindle.pruning.neurons import NeuronPruning, merge_plan, neuron_activations, prune_neurons_
from dwindle.pruning.schedules import AGP, Iterative, OneShot, Schedule
from dwindle.pruning.semi_structured import is_two_four, to_semi_structured_
from dwindle.pruning.sensitivity import SensitivityResult, sensitivity_scan
from dwindle.pruning.sparse import (
    decode_relative,
    encode_relative,
    encoded_bytes,
    load_sparse,
    save_sparse,
    to_coo,
    to_csr,
)
from dwindle.pruning.stage_width import (
    ChannelGather,
    StageWidthPruning,
    keep_stage_channels_,
    prune_stage_widths_,
)
from dwindle.pruning.structured import (
    FilterPruning,
    TracingError,
    channel_scores,
    group_scores,
    prune_filters_,
    remove_channels,
    trace_channels,
)
from dwindle.pruning.unstructured import Prune, Pruner, prune_

__all__ = [  # noqa: RUF022 - unstructured half first, then the structured half
    "AGP",
    "AGPCallback",
    "Criterion",
    "HanThreshold",
    "Iterative",
    "Magnitude",
    "OneShot",
    "Prune",
    "Pruner",
    "Schedule",
    "SensitivityResult",
    "ThresholdRule",
    "agp_schedule",
    "decode_relative",
    "dropout_rescale",
    "encode_relative",
    "encoded_bytes",
    "expand_tile_mask",
    "load_sparse",
    "nm_mask",
    "prune_",
    "rescale_dropouts_",
    "retrain_config",
    "save_sparse",
    "sensitivity_scan",
    "tile_scores",
    "to_coo",
    "to_csr",
    "MASK_SUFFIX",
    "PRUNABLE_TYPES",
    "FilterPruning",
    "LayerPruning",
    "ChannelGather",
    "MaskCallback",
    "NeuronPruning",
    "StageWidthPruning",
    "TracingError",
    "apply_masks",
    "block_scores",
    "channel_scores",
    "group_scores",
    "get_mask",
    "global_magnitude_masks",
    "keep_stage_channels_",
    "magnitude_mask",
    "masked_parameters",
    "merge_plan",
    "neuron_activations",
    "prunable_modules",
    "prune_filters_",
    "prune_layers_",
    "prune_neurons_",
    "prune_stage_widths_",
    "removable_blocks",
    "is_two_four",
    "to_semi_structured_",
    "remove_block",
    "remove_channels",
    "remove_masks",
    "set_mask",
    "threshold_mask",
    "trace_channels",
]
