"""``salient bench``: benchmark a machine or a Ray cluster on masked inference, with comparable numbers.

The standard suite (:data:`~salient.bench.suite.SUITE_VERSION` "1"; cases and parameters in
:mod:`salient.bench.suite`):

- **raw**: the model's raw forward rate at the batch each worker runs (the ceiling): every worker at once
  running only full forward batches, as the engine runs them (CPU: the fused module, the engine's fixed
  batch 4, one thread per worker; GPU: the autotuned batch, the engine's precision) (:mod:`.raw`);
- **engine**: forward passes/s of RISE (256 masks in 8 queries), DiDA (grids 5, 9, 13), occlusion (window
  32, stride 16), Score-CAM and BOREx (a 100-mask RISE prior, 30 iterations) on the bundled photos
  (scikit-image's, cycled in a fixed order, every round with fresh item ids), each with its ratio to raw,
  total and per-worker rates, the method's own share of the time (BOREx: its GP and search, outside the
  forward passes), the workers' idle share and the scheduler's dispatch rate; ``--size`` adds other sides
  (whole mode), ``--huge`` a 1024 x 1024 synthetic image (whole mode), ``--video`` 4-frame clips of a
  sample video through ``frames:<model>``. On CPU occlusion's and DiDA's ratio can exceed 1: their
  incremental forwards recompute only what a box changes, while raw runs whole forwards;
- **scaling**: the suite at each ``--workers`` count, scaling efficiency rate(n) / (n · rate(1)) and where
  the limit is, by the rule of :mod:`.limits`.

Measuring (:mod:`.protocol`): warm-up excluded and reported; every figure the median of ``rounds`` rounds
with its min-max and interquartile spread; raw and engine rounds alternated in a seeded random order
with equal lengths. Output: a table, ``results.parquet`` + ``results.json`` (:mod:`.schema`, with
``schema_version`` and ``suite_version``), a PNG (:mod:`.plot`), and ``--compare`` of folders (:mod:`.compare`).
The machine (:mod:`.machine`): CPU, cores, memory, devices, driver, torch / CUDA / CuPy / Ray versions,
and the engines' workers, batch, threads, device, kernels and precision.
"""

# only the light modules here: the CLI's parser imports this package; the table, schema, plot and compare
# modules (pandas, pyarrow, matplotlib) load when a bench runs
from .protocol import Sample, alternate, spread
from .suite import SUITE_VERSION

__all__ = ["SUITE_VERSION", "Sample", "alternate", "spread"]
