"""The dataset audit: does the model look at the object or at its context?

- :mod:`.variants`: the context variants of an item (ImageNet-9 / ImageNet-CS), pixel math only;
- :mod:`.partners`: which item lends its background to a mixed variant (by seed);
- :mod:`.context`: the context pass of a job (variant items scored by the engine);
- :mod:`.record`: the context table ``OUT/context/part-*.parquet``;
- :mod:`.findings`: ``salient audit OUT``: accuracy per variant and class, BG-gap, score drops under
  context change vs perturbation, flagged items.
The localisation metrics (object share, pointing game, ...) are registered metrics
(:mod:`salient.metrics.localisation`); paired comparisons and clustering are in :mod:`salient.metrics`.
"""
