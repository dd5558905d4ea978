"""The output store: ``OUT/saliency.zarr`` (Zarr v3) beside ``OUT/results/`` (Parquet parts).

Contract (DESIGN.md), as written here:
- Root attrs: ``salient_version``, ``model``, ``spec`` (the job spec), ``started``; a job also sets
  ``spec_hash``, ``batch_size`` and ``complete``; ``salient explain`` sets ``methods`` (per method the
  settings its maps are made with). Outputs never mix: opening a store refuses another job's spec,
  another model, or a method it holds with other settings (:mod:`.claims`).
- ``maps/<method>``: float32, one row per item, ``index`` = the item's position in the source.
  Shape (N, H, W) with ``dimension_names`` ("item", "y", "x"), or (N, T, H, W) with
  ("item", "t", "y", "x") for video; when a method explains the top K > 1 classes of every item
  a target axis follows the item axis: (N, K, H, W) with ("item", "topK", "y", "x"), ``rank`` in
  the table being the position on it. One chunk per map (1, [1,] H, W); shards of
  ``shard_items`` items along "item". Rows of items without a map (errors, odd sizes, not done yet)
  are NaN (the fill value). Every method's array has the same N, so ``xr.open_zarr(OUT /
  "saliency.zarr", group="maps")`` opens all of them as one Dataset.
- ``items/<key>/<method>`` (key = :func:`item_key` of the item id): maps whose size or target
  count differs from the stacked array's, shape (K, ...) with dims ("target", ...), chunked
  spatially; their table rows have ``index == -1``.
- Array attrs: method, parameters, target (the target spec), label, seed, signed, diverging (the
  sign means support vs opposition; a store without it: ``signed``).
- ``results/part-*.parquet``: one row per (item, method, target) with the contract columns
  :func:`result_columns` (the item's, one per registered metric, status, error) plus
  :data:`EXTRA_COLUMNS` (position, rank, and the manifest's
  true_label, mask, box). When an item is redone (resume), its newer rows supersede the older:
  :func:`read_results` keeps, for each (position, method), the rows of the latest part, and
  :meth:`Store.close` rewrites parts that hold superseded rows.
- One writer (an exclusive lock on ``OUT/.lock``), whole shards only, every file written to a temp
  name and renamed, and a map's row written only after its shard is on disk: a crash leaves whole
  files, and an ``ok`` row always has its map.

One concept a module, readers below the writer:
- :mod:`.schema`: the table's columns, the group's name, :func:`item_key`, defaults.
- :mod:`.read`: :func:`read_results`, :func:`read_map`, :func:`item_status` (no writer imported).
- :mod:`.files`: atomic file writes and the lock.
- :mod:`.shards`: the compressors and whole-shard encoding.
- :mod:`.mosaic`: OME-Zarr 0.5 multiscale mosaics of huge images (tile mode), written band by band
  (:class:`~salient.store.mosaic.MosaicWriter`), read by level (:func:`~salient.store.mosaic.read_level`).
- :mod:`.pipeline`: the three-stage background writer.
- :mod:`.claims`: what a store holds, and the refusal of what does not belong with it.
- :mod:`.write`: :class:`Store` and :func:`compact_results`.
- :mod:`.check`: is the metadata readable (:func:`check_metadata`), is every ``ok`` row's map there
  and intact (:func:`check_maps`, one read per shard file); :mod:`.repair`: :func:`repair`
  mends damaged metadata from the copy every results part carries, keeping every intact map.

Names load on first use, so ``from salient.store import read_results`` imports the schema and the
readers only, not the writer (its pipeline, shard codec and lock).
"""

from importlib import import_module

_WHERE = {
    "Store": "write", "compact_results": "write",
    "check_maps": "check", "check_metadata": "check", "damaged_metadata": "check", "repair": "repair",
    "read_results": "read", "read_map": "read", "item_status": "read",
    "MosaicWriter": "mosaic", "read_level": "mosaic", "mosaic_levels": "mosaic",
    "item_key": "schema", "result_columns": "schema", "EXTRA_COLUMNS": "schema", "result_schema": "schema",
    "SHARD_ITEMS": "schema", "COMPRESSORS": "schema", "ZARR_NAME": "schema",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
