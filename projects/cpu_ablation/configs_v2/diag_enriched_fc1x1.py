# v2 diagnostic (not a row of the paper): ej_enriched with its first fc at the base learning
# rate, i.e. without the (7/14)^2 factor that every v2 row flattening 14x14 RoIs uses; does the
# factor still matter with a pre-trained backbone, SGD and COCO-like RoI geometry?
from .ej_enriched import dataloader, lr_multiplier, model, optimizer, train

optimizer.params.lr_factor_func = None
