"""The paper's training schedules (Sec. 4.2): SGD, lr 0.02, batch 16, 12 or 20 epochs.

Epochs are converted to iterations with the size of COCO train2017 after Detectron2 drops the
images without usable annotations (``get_detection_dataset_dicts(filter_empty=True)``):
117266 images, 16 images per iteration, so 1 epoch = 7329.1 iterations.

The paper (trained with mmdetection) does not state a warmup; we keep Detectron2's (linear from
0.001 over the first 1000 iterations).
"""

import copy

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from sa_ejhead.modeling import enriched_fc1_lr_factor

# lr 0.02, momentum 0.9, weight decay 1e-4 (no decay on norm layers), as Detectron2's SGD
optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.02

# For the Enriched Feature (14x14 RoIs flattened into the box head's first fc): fc1 learns at
# (7/14)^2 of the lr, the step that the 7x7 head's fc1 takes (4x the inputs take about 4x the
# step at one lr; docs/design.md, "The Enriched Feature's first fc"). Cascade: each stage's fc1.
optimizer_enriched = copy.deepcopy(optimizer)
optimizer_enriched.params.base_lr = "${..lr}"
optimizer_enriched.params.lr_factor_func = enriched_fc1_lr_factor(14, 7)
optimizer_enriched_cascade = copy.deepcopy(optimizer_enriched)
optimizer_enriched_cascade.params.lr_factor_func = enriched_fc1_lr_factor(14, 7, num_stages=3)


def multistep_schedule(steps, max_iter):
    """The lr x0.1 after each of the two ``steps`` (iterations) until ``max_iter``, after
    Detectron2's warm-up."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=[*steps, max_iter]
        ),
        warmup_length=1000 / max_iter,
        warmup_method="linear",
        warmup_factor=0.001,
    )


# 12 ep = 87950 iters * 16 images / 117266 images; x0.1 after 9 ep (65962 iters) and 11 ep (80620)
lr_multiplier_12ep = multistep_schedule([65962, 80620], max_iter=87950)
# 20 ep = 146583 iters * 16 images / 117266 images; x0.1 after 16 ep (117266) and 19 ep (139253)
lr_multiplier_20ep = multistep_schedule([117266, 139253], max_iter=146583)

# Detectron2's train settings (device "cuda": the CPU tests override it with train.device=cpu);
# checkpoint and evaluate once per epoch (7329 iters), and at the end.
train_12ep = model_zoo.get_config("common/train.py").train
train_12ep.max_iter = 87950
train_12ep.eval_period = 7329
train_12ep.checkpointer.period = 7329

train_20ep = copy.deepcopy(train_12ep)
train_20ep.max_iter = 146583
