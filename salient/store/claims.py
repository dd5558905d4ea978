"""What a store holds, and the rule that keeps the outputs of different runs from mixing.

A store records who writes it and with what, in its root attrs: ``model`` (the model id; for
``salient explain`` the loader's name with its options), ``spec_hash`` (a job's,
:meth:`~salient.jobs.spec.JobSpec.spec_hash`) and ``methods`` (per method the session declared:
the checked ``parameters``, the ``target`` spec, the ``seed`` and the ``precision`` its maps are made with).
Opening an existing store compares what the caller is about to write with that record
(:func:`check_claims`, called by :class:`~salient.store.Store` before it writes anything):

- a job's store takes that job only: another spec, or a writer that declares a model or methods
  but no spec hash (``salient explain``), is refused; a writer that declares nothing (a maintenance
  open from the Python API, e.g. ``Store(out)``) is the store's own;
- another model id is refused (a store without one, e.g. written by the Python API, takes any);
- a method the store holds with other parameters, target, seed or precision is refused (the record, or for a
  store written before it the ``maps/<method>`` array's attrs, on the keys both have);
- anything else adds to the store: a new method gets its own array, an item already there is
  replaced at its row (the caller passes its position), a new item is appended.

A refusal is one line that says what differs and happens before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import SalientError
from .schema import ZARR_NAME

IDENTITY = ("parameters", "target", "seed", "precision")  # what makes two maps of one method comparable


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _attrs(node: Path) -> dict[str, Any]:
    """The attributes in ``node/zarr.json``; {} when there is none or it cannot be read (a damaged
    file is for the store's checks to report, not for this rule to guess at)."""
    try:
        attrs = json.loads((node / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


def held(out: str | os.PathLike) -> dict[str, Any]:
    """The root attrs of the store in ``out`` ({} for none), read without zarr."""
    return _attrs(Path(out) / ZARR_NAME)


def _differences(old: dict[str, Any], new: dict[str, Any], keys: Iterable[str]) -> list[str]:
    out = []
    for k in keys:
        if k not in old or k not in new or old[k] == new[k]:
            continue
        if isinstance(old[k], dict) and isinstance(new[k], dict):
            out += [f"{k}.{d}" for d in _differences(old[k], new[k], sorted(set(old[k]) | set(new[k])))]
        else:
            out.append(f"{k} {json.dumps(old[k])} there, {json.dumps(new[k])} here")
    return out


def check_claims(out: str | os.PathLike, attrs: dict[str, Any], model_id: str = "", spec_hash: str | None = None,
                 methods: dict[str, dict[str, Any]] | None = None) -> None:
    """Refuse (SalientError, one line) to write into the store of ``out``, whose root attrs are
    ``attrs``, what does not belong with it; see the module docstring. ``attrs`` without
    ``salient_version`` is a new store: anything goes."""
    if "salient_version" not in attrs:
        return
    where = f"{out} holds"
    if attrs.get("spec_hash") != spec_hash and (spec_hash is not None or model_id or methods):
        if spec_hash is None:
            raise SalientError(f"{where} the results of a job (salient run); they are its own: write elsewhere "
                               "(another --out)")
        raise SalientError(f"{where} results not written by this job; rerun with --restart to discard them, "
                           "or choose another out")
    advice = "write to another --out, or add --restart to discard what it holds"
    if model_id and attrs.get("model") and attrs["model"] != model_id:
        raise SalientError(f"{where} maps of model {attrs['model']}, not {model_id}; {advice}")
    record = attrs.get("methods") if isinstance(attrs.get("methods"), dict) else {}
    for name, new in _json_safe(methods or {}).items():
        old = record.get(name)
        if old is None:  # a store from before the record: the array's attrs, where they say the same thing
            old = _attrs(Path(out) / ZARR_NAME / "maps" / name)
            new = {**new, "parameters": {k: v for k, v in new.get("parameters", {}).items() if v is not None}}
            old = {k: old[k] for k in ("parameters", "seed") if k in old}
        diff = _differences(old, new, IDENTITY)
        if diff:
            raise SalientError(f"{where} {name} maps made with other settings ({'; '.join(diff)}); {advice}")


def discard(out: str | os.PathLike, also: Iterable[Path] = ()) -> None:
    """Delete the store in ``out`` (maps and table), and the files ``also``, under the store's lock."""
    from .files import _Lock

    out = Path(out)
    lock = _Lock(out / ".lock")
    try:
        shutil.rmtree(out / ZARR_NAME, ignore_errors=True)
        shutil.rmtree(out / "results", ignore_errors=True)
        for derived in ("context", "audit", "clusters"):  # tables made from the store go with it
            shutil.rmtree(out / derived, ignore_errors=True)
        for p in also:
            p.unlink(missing_ok=True)
    finally:
        lock.release()
