"""Knowledge distillation: a student learns from a teacher's outputs and features.

>>> import dwindle as dw
>>> from dwindle.distillation import DistillConfig, distill
>>> data = dw.data.load("digits")
>>> teacher = dw.models.create("mlp", hidden=(64,), input_shape=(1, 8, 8))
>>> student = dw.models.create("mlp", hidden=(8,), input_shape=(1, 8, 8))
>>> cfg = DistillConfig(temperature=4, alpha=0.9, train={"epochs": 1, "progress": False})
>>> result = distill(student, teacher.eval(), data, cfg)

Losses (``losses``): KD (Hinton et al. 2015), logit MSE (Ba & Caruana 2014), FitNets hints
(Romero et al. 2015), attention transfer (Zagoruyko & Komodakis 2017). Teachers
(``teachers``): one, several (averaged/weighted soft targets), a teacher-assistant chain
(Mirzadeh et al. 2020), deep mutual learning (Zhang et al. 2018). Transfer sets
(``transfer``), a teacher-output cache (``cache``), students (``students``).
"""

from dwindle.distillation.cache import TeacherCache
from dwindle.distillation.distill import (
    AttentionConfig,
    DistillConfig,
    HintConfig,
    distill,
    distill_chain,
    recover_with_distillation,
)
from dwindle.distillation.losses import (
    IGNORE_LABEL,
    AttentionTransfer,
    DistillBatch,
    DistillLoss,
    FeatureTap,
    HintLoss,
    KDLoss,
    LogitMSELoss,
    attention_map,
    kd_loss,
)
from dwindle.distillation.students import (
    ModelSource,
    build_model_from,
    pruned_copy,
    student_from_zoo,
)
from dwindle.distillation.teachers import Cohort, TeacherSet, mutual_learning
from dwindle.distillation.transfer import TransferConfig, TransferSet, build_transfer_set

__all__ = [
    "IGNORE_LABEL",
    "AttentionConfig",
    "AttentionTransfer",
    "Cohort",
    "DistillBatch",
    "DistillConfig",
    "DistillLoss",
    "FeatureTap",
    "HintConfig",
    "HintLoss",
    "KDLoss",
    "LogitMSELoss",
    "ModelSource",
    "TeacherCache",
    "TeacherSet",
    "TransferConfig",
    "TransferSet",
    "attention_map",
    "build_model_from",
    "build_transfer_set",
    "distill",
    "distill_chain",
    "kd_loss",
    "mutual_learning",
    "pruned_copy",
    "recover_with_distillation",
    "student_from_zoo",
]
