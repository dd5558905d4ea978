"""``salient demo-inspect``: real textures, planted defects, a small autoencoder and Siamese net.

Data: scikit-image's texture photos ``brick``, ``grass`` and ``gravel`` (512 x 512 grey, as RGB). Patches
of 64 x 64: normal training patches from the top half of each photo, normal references and inspected
items from the bottom half (never the same pixels). Two thirds of the inspected items get a planted
defect with its exact mask: a scratch (a line 2-3 px wide at a random angle), a spot (a disk of
another grey) or a hole (a dark ellipse).

Models (seeded, trained on the CPU in about a minute the first time, then cached as TorchScript in
``OUT/models/``): a convolutional autoencoder (64 -> 8 x 8 x 32 -> 64, MSE) on normal patches, and an
embedding network (32 x 32 crops -> 32-d) trained with a triplet loss: anchor and positive are crops
of two normal patches of one texture at one place, the negative is the anchor with a synthetic
defect of the same three kinds drawn from another random stream than the planted ones (the usual
self-supervised stand-in for defects never seen).

Each texture is inspected on its own (its references, its store in ``OUT/<texture>/``); the demo prints
pixel AUROC, AUPRO and image AUROC of the recon maps and how many false and true candidates the re-check
removed. ``salient inspect OUT/brick/parts/*.png --ae OUT/models/ae.pt --siamese OUT/models/siamese.pt
--normals 'OUT/brick/normals/*.png' --masks 'OUT/brick/masks/*.png' --out elsewhere/`` reruns one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SalientError

TEXTURES = ("brick", "grass", "gravel")
PATCH = 64
CROP = 32
MODEL_VERSION = "1"  # part of the cache's file names: a change of the models retrains them


def texture(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)().astype(np.float32) / 255.0
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3]


def patches(img: np.ndarray, n: int, rows: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """n random PATCH x PATCH patches whose rows lie in [rows[0], rows[1])."""
    ys = rng.integers(rows[0], rows[1] - PATCH, n)
    xs = rng.integers(0, img.shape[1] - PATCH, n)
    return np.stack([img[y: y + PATCH, x: x + PATCH] for y, x in zip(ys, xs, strict=True)])


def plant(patch: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The patch with one defect (scratch, spot or hole; random if ``kind`` is None) and its mask."""
    kind = kind or ("scratch", "spot", "hole")[int(rng.integers(3))]
    h, w = patch.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(16, h - 16), rng.uniform(16, w - 16)
    if kind == "scratch":
        ang = rng.uniform(0, np.pi)
        length, width = rng.uniform(14, 24), rng.uniform(1.0, 1.6)
        along = (yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)
        across = -(yy - cy) * np.cos(ang) + (xx - cx) * np.sin(ang)
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= width)
        value = 1.0 if rng.random() < 0.5 else 0.0
    elif kind == "spot":
        r = rng.uniform(3, 6)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        value = float(np.clip(patch.mean() + rng.choice([-0.45, 0.45]), 0, 1))
    else:
        ry, rx = rng.uniform(3, 6), rng.uniform(4, 8)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        value = 0.02
    out = patch.copy()
    out[mask] = value
    return out, mask


class ConvAE(nn.Module):
    """64 x 64 x 3 -> 8 x 8 x 32 -> 64 x 64 x 3 (sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                     nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


class Embedding(nn.Module):
    """32 x 32 x 3 -> 32-d."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU())
        self.head = nn.Linear(64 * 2, 32)

    def forward(self, x):
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1))


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()


def train_ae(normal: np.ndarray, steps: int = 600, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = ConvAE()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x = _tensor(normal)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = x[torch.randint(0, len(x), (32,), generator=g)]
        loss = nn.functional.mse_loss(net(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _crops(batch: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    return np.stack([p[y: y + size, x: x + size] for p, y, x in zip(batch, ys, xs, strict=True)])


def train_embedding(normal: dict[str, np.ndarray], steps: int = 500, seed: int = 0) -> nn.Module:
    """Triplets (see the module docstring); crops of CROP px at random places of PATCH patches."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 99])
    net = Embedding()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = nn.TripletMarginLoss(margin=0.5)
    names = list(normal)
    for _ in range(steps):
        tex = normal[names[int(rng.integers(len(names)))]]
        i, j = rng.integers(0, len(tex), 32), rng.integers(0, len(tex), 32)
        ys, xs = rng.integers(0, PATCH - CROP, 32), rng.integers(0, PATCH - CROP, 32)
        a = _crops(tex[i], ys, xs, CROP)
        p = _crops(tex[j], ys, xs, CROP)
        n = np.stack([plant(np.pad(c, ((16, 16), (16, 16), (0, 0)), mode="reflect"), rng)[0][16:-16, 16:-16]
                      for c in a])
        ea, ep, en = (nn.functional.normalize(net(_tensor(v)), dim=1) for v in (a, p, n))
        loss = loss_fn(ea, ep, en)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def trained_models(folder: Path, seed: int = 0, steps: tuple[int, int] = (600, 500),
                   echo: Callable[[str], None] = print, textures: tuple[str, ...] = TEXTURES) -> tuple[Path, Path]:
    """TorchScript files of the autoencoder and the embedding net, trained once on ``textures`` and cached
    in ``folder``."""
    tag = f"v{MODEL_VERSION}-s{seed}-{'-'.join(textures)}"
    ae_path = folder / f"ae-{tag}-{steps[0]}.pt"
    emb_path = folder / f"siamese-{tag}-{steps[1]}.pt"
    if ae_path.is_file() and emb_path.is_file():
        return ae_path, emb_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    normal = {t: patches(texture(t), 256, (0, 256), rng) for t in textures}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine's core count
    try:
        echo(f"demo-inspect: training the autoencoder and the Siamese net (seeded, cached in {folder})")
        ae = train_ae(np.concatenate(list(normal.values())), steps[0], seed)
        emb = train_embedding(normal, steps[1], seed)
    finally:
        torch.set_num_threads(threads)
    for net, path, shape in ((ae, ae_path, PATCH), (emb, emb_path, CROP)):
        tmp = path.with_name(f".{path.name}.tmp")
        with warnings.catch_warnings():  # torch 2.14 calls TorchScript deprecated; it still traces and saves
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.trace(net, torch.zeros(1, 3, shape, shape)).save(str(tmp))
        tmp.replace(path)
    return ae_path, emb_path


def write_texture_set(folder: Path, name: str, n_items: int = 12, n_refs: int = 8, seed: int = 0) -> dict[str, Any]:
    """Normal references, inspected items (two thirds with a planted defect) and their masks, as PNGs."""
    from PIL import Image as PILImage

    rng = np.random.default_rng([seed, TEXTURES.index(name) if name in TEXTURES else 7, 2])
    img = texture(name)
    refs = patches(img, n_refs, (256, 512), rng)
    items = patches(img, n_items, (256, 512), rng)
    out: dict[str, Any] = {"normals": [], "parts": [], "masks": []}
    for sub in ("normals", "parts", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    save = lambda a, p: PILImage.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).save(p)  # noqa: E731
    for i, r in enumerate(refs):
        save(r, folder / "normals" / f"ref{i:02d}.png")
        out["normals"].append(str(folder / "normals" / f"ref{i:02d}.png"))
    for i, p in enumerate(items):
        defective = i % 3 != 2
        mask = np.zeros(p.shape[:2], bool)
        if defective:
            p, mask = plant(p, rng)
        save(p, folder / "parts" / f"item{i:02d}.png")
        PILImage.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"item{i:02d}.png")
        out["parts"].append(str(folder / "parts" / f"item{i:02d}.png"))
        out["masks"].append(str(folder / "masks" / f"item{i:02d}.png"))
    return out


def run_demo_inspect(out: str | Path = "demo-inspect", textures: tuple[str, ...] = TEXTURES,
                     echo: Callable[[str], None] = print, steps: tuple[int, int] = (600, 500),
                     n_items: int = 12) -> dict[str, dict[str, float]]:
    """The demo (see the module docstring); returns each texture's metrics."""
    from ..models import load_model
    from .pipeline import InspectSettings, inspect_items, write_inspection

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "models").is_dir():
        raise SalientError(f"demo-inspect: --out {out} is not empty and holds no earlier demo-inspect; "
                           "choose a new or empty folder")
    for t in textures:
        if t not in TEXTURES:
            raise SalientError(f"demo-inspect: unknown texture {t!r}; choose from {', '.join(TEXTURES)}")
    ae_path, emb_path = trained_models(out / "models", steps=steps, echo=echo, textures=textures)
    ae = load_model(str(ae_path), output="reconstruction", input_size=PATCH, mean="0,0,0", std="1,1,1")
    emb = load_model(str(emb_path), output="embedding", input_size=CROP, mean="0,0,0", std="1,1,1", score="logit")
    settings = InspectSettings()
    found = {}
    for t in textures:
        files = write_texture_set(out / t, t, n_items=n_items)
        res = inspect_items(ae, files["parts"], files["normals"], emb, settings, masks=files["masks"])
        write_inspection(out / t, res, files["parts"], ae, settings)
        m = res.metrics
        found[t] = m
        echo(f"demo-inspect {t}: pixel AUROC {m['pixel_auroc']:.3f}, AUPRO {m['aupro']:.3f}, image AUROC "
             f"{m['image_auroc']:.3f}; the re-check removed {m['false_removed']} of {m['candidates_false']} false "
             f"candidates and {m['true_removed']} of {m['candidates_true']} true ones -> {out / t}")
    return found
