"""The dataset audit: context variants (pixels as defined, deterministic), partners, the context
pass of a job (rows, resume, bad input), the findings, and a shortcut model that the audit must flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salient.audit.partners import Partners
from salient.audit.variants import (
    PERTURBATIONS,
    corrupt,
    fill_from_surroundings,
    from_pixels,
    make_variant,
    parse_variant,
    to_pixels,
)
from salient.errors import ItemError, SalientError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _item(seed: int = 0, size: int = 32):
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 1, (size, size, 3)).astype(np.float32)
    mask = np.zeros((size, size), bool)
    mask[10:20, 12:24] = True
    return from_pixels(pixels, MEAN, STD), mask


def _black():
    return from_pixels(np.zeros((1, 1, 3), np.float32), MEAN, STD)


@pytest.mark.parametrize("name", ["only_fg", "no_fg", "mean_bg", "only_bg_t", "perturb:gaussian_noise:3",
                                  "perturb:blur:2", "perturb:brightness:4", "perturb:contrast:1", "perturb:jpeg:5"])
def test_variant_pixels_are_their_definition(name):
    x, mask = _item()
    v = make_variant(parse_variant(name), x, mask, MEAN, STD, seed=5)
    m = torch.from_numpy(mask)
    assert v.shape == x.shape and v.dtype == x.dtype
    keep, change = (~m, m) if name == "no_fg" else (m, ~m)
    if name != "only_bg_t":
        assert torch.equal(v[:, keep], x[:, keep])  # what the variant keeps is the item itself, bit for bit
    if name == "only_fg":
        assert torch.equal(v[:, change], _black().expand_as(x)[:, change])
    elif name == "no_fg":
        assert torch.equal(v[:, change], _black().expand_as(x)[:, change])
    elif name == "mean_bg":  # the model's mean pixel: 0 in normalised space
        assert torch.allclose(v[:, change], torch.zeros_like(v[:, change]), atol=1e-6)
    elif name == "only_bg_t":  # the mask's box refilled, the rest kept
        box = np.zeros_like(mask)
        box[10:20, 12:24] = True
        assert torch.allclose(v[:, ~torch.from_numpy(box)], x[:, ~torch.from_numpy(box)], atol=1e-6)
    else:
        kind, sev = name.split(":")[1], int(name.split(":")[2])
        want = from_pixels(corrupt(to_pixels(x, MEAN, STD), kind, sev, 5), MEAN, STD)
        assert torch.equal(v[:, change], want[:, change])
        assert not torch.allclose(v[:, change], x[:, change], atol=1e-3)  # the background did change


def test_perturbations_are_deterministic_under_the_seed_and_grow_with_severity():
    x, _ = _item()
    p = to_pixels(x, MEAN, STD)
    assert np.array_equal(corrupt(p, "gaussian_noise", 3, 1), corrupt(p, "gaussian_noise", 3, 1))
    assert not np.array_equal(corrupt(p, "gaussian_noise", 3, 1), corrupt(p, "gaussian_noise", 3, 2))
    for kind in PERTURBATIONS:
        d = [np.abs(corrupt(p, kind, s, 1) - p).mean() for s in (1, 5)]
        assert d[1] > d[0], kind


def test_fill_from_surroundings_tiles_the_largest_strip():
    pixels = np.zeros((6, 8, 1), np.float32)
    pixels[:, :, 0] = np.arange(8)[None, :] + 10 * np.arange(6)[:, None]
    mask = np.zeros((6, 8), bool)
    mask[1:3, 5:7] = True  # strips: top 1x8, bottom 3x8 (largest), left 6x5 = 30 (larger still), right 6x1
    out = fill_from_surroundings(pixels, mask)
    # left strip (columns 0..4) tiled: column c takes column c mod 5
    assert np.array_equal(out[1:3, 5:7, 0], pixels[1:3, [0, 1], 0])
    assert np.array_equal(np.delete(out, [5, 6], axis=1)[[1, 2]], np.delete(pixels, [5, 6], axis=1)[[1, 2]])
    full = np.ones((6, 8), bool)
    assert np.allclose(fill_from_surroundings(pixels, full), pixels.mean())


def test_mixed_variant_takes_the_partners_refilled_background():
    x, mask = _item(0)
    px, pmask = _item(1)
    v = make_variant(parse_variant("mixed_rand"), x, mask, MEAN, STD, partner=(px, pmask))
    m = torch.from_numpy(mask)
    bg = from_pixels(fill_from_surroundings(to_pixels(px, MEAN, STD), pmask), MEAN, STD)
    assert torch.equal(v[:, m], x[:, m]) and torch.equal(v[:, ~m], bg[:, ~m])


def test_bad_variants_and_missing_masks():
    for bad, msg in [("only_bgg", "unknown context variant"), ("perturb:fog:3", "unknown context perturbation"),
                     ("perturb:blur:6", "severity must be 1..5"), ("perturb:blur", "perturb:KIND:SEVERITY")]:
        with pytest.raises(SalientError, match=msg):
            parse_variant(bad)
    x, mask = _item()
    with pytest.raises(ItemError, match="needs an object mask"):
        make_variant(parse_variant("only_fg"), x, None, MEAN, STD)
    with pytest.raises(ItemError, match="mask is empty"):
        make_variant(parse_variant("only_fg"), x, np.zeros_like(mask), MEAN, STD)
    with pytest.raises(ItemError, match="differs from the input size"):
        make_variant(parse_variant("only_fg"), x, mask[:-1], MEAN, STD)
    with pytest.raises(ItemError, match="no other item"):
        make_variant(parse_variant("mixed_same"), x, mask, MEAN, STD)


def test_partners_follow_their_rule_and_the_seed():
    labels = ["a", "a", "b", "b", "c", None, "a"]
    masks = [True, True, True, False, True, True, True]
    p = Partners(labels, masks, seed=3)
    for pos in (0, 1, 6):
        same, _ = p.choose("mixed_same", pos)
        assert same in (0, 1, 6) and same != pos
        rand, _ = p.choose("mixed_rand", pos)
        assert labels[rand] in ("b", "c") and masks[rand]
        nxt, _ = p.choose("mixed_next", pos)
        assert nxt == 2  # the next class is b, and only item 2 of b has a mask
    assert p.choose("mixed_next", 4)[0] in (0, 1, 6)  # after c comes a (cyclic)
    assert p.choose("mixed_same", 2) == (None, "mixed_same: no other item labelled 'b' with a mask")
    assert p.choose("mixed_rand", 5)[0] is None  # no label
    again = Partners(labels, masks, seed=3)
    picks = [p.choose("mixed_rand", i)[0] for i in (0, 1, 6)]
    assert picks == [again.choose("mixed_rand", i)[0] for i in (0, 1, 6)]
    assert any(Partners(labels * 20, masks * 20, seed=s).choose("mixed_rand", 0)[0] != picks[0] for s in range(5))


# -- the context pass of a job
@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    import audit_toys

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audit_toys.shortcut(), audit_toys.clean()  # trained once (a few seconds each)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("audit")
    audit_toys.write_dataset(folder / "data", 16)
    return folder, {"shortcut": "shortcut", "clean": "clean"}


def _run(spec_dict, restart=False):
    from salient.jobs.runner import run_job
    from salient.jobs.spec import parse_spec

    return run_job(parse_spec(spec_dict), restart=restart, progress=False, echo=None)


def test_context_rows_follow_the_variants(toy_data):
    import audit_toys

    from salient.audit.record import read_context

    folder, nets = toy_data
    spec = audit_toys.job(folder / "data", nets["shortcut"], out="rows",
                          context=["only_fg", "mixed_same", "mixed_rand", "perturb:blur:2"])
    _run(spec)
    ctx = read_context(folder / "data" / "rows")
    assert len(ctx) == 16 * 5 and (ctx["status"] == "ok").all()
    orig = ctx[ctx["variant"] == "original"]
    assert (orig["kept"]).all() and (orig["pred"] == orig["ref_class"]).all()
    assert (orig["ref_score"] == orig["base_score"]).all()  # the same score of the same forward
    labels = dict(zip(ctx["item_id"], ctx["true_label"], strict=False))
    same = ctx[ctx["variant"] == "mixed_same"]
    rand = ctx[ctx["variant"] == "mixed_rand"]
    assert all(labels[p] == t for p, t in zip(same["partner"], same["true_label"], strict=True))
    assert all(labels[p] != t for p, t in zip(rand["partner"], rand["true_label"], strict=True))
    # the shortcut model follows the background: another class's background flips it, its own does not
    assert rand["kept"].mean() < 0.2 and same["kept"].mean() > 0.8
    assert (ctx["correct"].notna()).all()  # the labels name the model's classes


def test_context_pass_resumes_and_refuses_bad_variants(toy_data):
    import audit_toys

    from salient.audit.record import read_context
    from salient.jobs.spec import parse_spec

    folder, nets = toy_data
    spec = audit_toys.job(folder / "data", nets["clean"], out="resume", context=["only_fg", "mixed_rand"])
    first = _run(spec)
    before = read_context(folder / "data" / "resume")
    again = _run(spec)
    assert again.skipped == 16 and again.n_forward == 0
    after = read_context(folder / "data" / "resume")
    assert after.equals(before)
    # lost context parts: only the variants are redone (the maps are kept), with the same scores
    for part in (folder / "data" / "resume" / "context").glob("part-*.parquet"):
        part.unlink()
    redo = _run(spec)
    assert redo.skipped == 0 and 0 < redo.n_forward < first.n_forward
    assert redo.n_forward == 16 * 3  # original, only_fg, mixed_rand: one forward each, no map redone
    assert read_context(folder / "data" / "resume").equals(before)
    bad = audit_toys.job(folder / "data", nets["clean"], out="bad", context=["only_fg", "perturb:fog:2"])
    with pytest.raises(SalientError, match=r"audit\.context.*context\.1: unknown context perturbation"):
        parse_spec(bad)


def test_items_without_masks_get_error_rows_and_the_job_goes_on(toy_data, tmp_path):
    import audit_toys

    from salient.audit.record import read_context

    folder, nets = toy_data
    audit_toys.write_dataset(tmp_path / "nomask", 4, with_masks=False)
    spec = audit_toys.job(tmp_path / "nomask", nets["clean"], context=["only_fg", "mixed_same"])
    summary = _run(spec)
    assert summary.counts["gradcam"]["ok"] == 4
    ctx = read_context(tmp_path / "nomask" / "out")
    assert (ctx[ctx["variant"] == "original"]["status"] == "ok").all()
    bad = ctx[ctx["variant"] != "original"]
    assert (bad["status"] == "error").all()
    assert bad[bad["variant"] == "only_fg"]["error"].str.contains("needs an object mask").all()
    assert bad[bad["variant"] == "mixed_same"]["error"].str.contains("no other item").all()


def test_the_audit_flags_the_shortcut_model_and_not_the_clean_one(toy_data):
    import audit_toys

    from salient.audit.findings import audit_findings, write_findings
    from salient.store import read_results

    folder, nets = toy_data
    metrics = ["object_share", "context_share"]
    found = {}
    for kind in ("shortcut", "clean"):
        spec = audit_toys.job(folder / "data", nets[kind], out=f"audit-{kind}", metrics=metrics)
        spec["audit"]["flag_context_share"] = 0.9
        _run(spec)
        found[kind] = audit_findings(folder / "data" / f"audit-{kind}")
    short, clean = found["shortcut"], found["clean"]
    gap = {k: f.classes.set_index("class").loc["all", "bg_gap"] for k, f in found.items()}
    assert gap["shortcut"] > 0.8 and abs(gap["clean"]) < 0.2
    assert len(short.flagged) >= 12 and len(clean.flagged) <= 2
    assert short.flagged["reasons"].str.contains("flips under mixed_rand").sum() >= 12
    acc = {k: f.accuracy[(f.accuracy["class"] == "all")].set_index("variant")["accuracy"] for k, f in found.items()}
    assert acc["shortcut"]["original"] == 1.0 and acc["clean"]["original"] == 1.0
    assert acc["shortcut"]["mixed_rand"] < 0.2 and acc["clean"]["mixed_rand"] > 0.8
    assert short.basis == "true label"
    # the background change moves the shortcut model's scores far more than a background perturbation
    c = short.classes.set_index("class").loc["all"]
    assert c["change_drop"] > c["perturbation_drop"]
    share = {k: read_results(folder / "data" / f"audit-{k}")["object_share"].mean() for k in found}
    assert share["clean"] > share["shortcut"] + 0.1
    assert short.flagged["reasons"].str.contains("context share").sum() >= 12  # the maps' context share > 0.9
    where = write_findings(folder / "data" / "audit-shortcut", short, overlays=3)
    assert (where / "flagged.parquet").is_file() and len(list((where / "flagged").glob("*.png"))) == 3
    lines = short.lines()
    assert any("bg_gap" in line for line in lines) and any("flagged items" in line for line in lines)


def test_audit_command_errors(tmp_path, capsys):
    from salient.cli import main

    assert main(["audit", str(tmp_path)]) == 2
    assert "no context table" in capsys.readouterr().err


@pytest.mark.ray
def test_context_variants_are_the_same_under_ray(toy_data, ray_session):
    import audit_toys

    from salient.audit.record import read_context

    folder, nets = toy_data
    tables = []
    for name, executor in (("local", None), ("ray", {"kind": "ray", "workers": 2})):
        spec = audit_toys.job(folder / "data", nets["shortcut"], out=f"exec-{name}", executor=executor,
                              context=["only_fg", "mixed_rand", "perturb:gaussian_noise:2"])
        _run(spec)
        tables.append(read_context(folder / "data" / f"exec-{name}"))
    assert len(tables[0]) == 16 * 4
    assert tables[0].equals(tables[1])  # same variants, same scores, bit for bit


def test_demo_audit_composites_have_exact_masks():
    from salient.jobs.demo_audit import SIDE, composite

    img, mask = composite("cat", "grass")
    again, mask2 = composite("cat", "grass")
    bg, cup_mask = composite("cup", "grass")
    assert img.shape == (SIDE, SIDE, 3) and np.array_equal(img, again) and np.array_equal(mask, mask2)
    assert 0.2 < mask.mean() < 0.5
    # outside the mask both composites are the same background; inside they differ (the objects)
    assert np.array_equal(img[~mask & ~cup_mask], bg[~mask & ~cup_mask])
    assert np.abs(img[mask].astype(int) - bg[mask].astype(int)).mean() > 10


@pytest.mark.slow
def test_demo_audit_finds_the_context_wins_on_the_real_model(tmp_path):
    from salient.jobs.demo_audit import run_demo_audit

    lines = []
    findings = run_demo_audit(tmp_path / "d", progress=False, echo=lines.append, methods=[{"name": "gradcampp"}])
    flagged = set(findings.flagged["item_id"])
    assert {"cup_on_rocket.png", "cat_on_astronaut.png"} <= flagged  # "drilling platform", "punching bag"
    acc = findings.accuracy[findings.accuracy["class"] == "all"].set_index("variant")["accuracy"]
    assert acc["only_fg"] > acc["original"]  # the object alone is named better than in its context
    assert (tmp_path / "d" / "audit" / "flagged.parquet").is_file()
    assert any("flagged items" in line for line in lines)
    with pytest.raises(SalientError, match="holds no earlier demo-audit"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "x.txt").write_text("x")
        run_demo_audit(tmp_path / "other", echo=lines.append)
