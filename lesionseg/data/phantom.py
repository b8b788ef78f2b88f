"""Synthetic multi-modal brain MRI phantoms with MS-like white-matter lesions (the embedded demo data).

What is modelled, and why it is enough for a β sweep to mean something:
- Anatomy (`anatomy.py`): brain, cortex and sulci, deep grey matter, ventricles, white matter.
- Lesions: only inside white matter, centres drawn with a strong periventricular preference, a heavy-tailed
  (Pareto) size distribution (many small, few large), irregular shapes (a union of overlapping ellipsoids
  deformed by smooth noise), some placed touching a previous one (confluent), and ~25 % of them of low
  contrast (a fraction of the full contrast): those small, faint lesions are what a higher Tversky β finds.
  The lesion load is drawn per case, spread as widely as between real patients (median 0.6 % of brain
  voxels, from 0.05 % to 5 %), and is never zero: with loads of ~1 % everywhere (the earlier phantoms), a
  batch-summed loss that ignores low-load cases looked fine on the demo and failed on real scans.
  `ms-small` draws them at the sizes of real scans: most lesions a voxel or two, and a light load made of
  small discrete lesions (where the old defaults missed a light load's lesions, as on real scans).
- Contrast as in real scans: FLAIR lesions about 1.5 SD of the brain above its mean (open MS patients:
  1.40 and 1.56; the earlier phantoms 1.9), T2 0.7 SD, T1 about the brain mean, so that only a minority of
  lesion voxels stand 2 SD out.
- Mimics: unlabelled, lesion-like patches in and just under the cortex (FLAIR and T2 bright, T1 dark) and
  the odd T1-bright spot at the surface, whatever the lesion load: 0.01-0.1 % of the brain outside the
  lesions is 2 SD bright on FLAIR (open MS patients: 0.05 and 0.18 %). In a low-load real scan there are as
  many such voxels outside the lesions as inside them, so brightness alone does not find the lesions.
- Image formation: tissue fractions with one-voxel soft edges (partial volume), per-tissue FLAIR/T1/T2
  intensities in scanner-like units, mild tissue texture, a Gaussian point-spread blur, a smooth
  multiplicative bias field per modality, Rician noise of a few % of white matter, and zero outside the brain.
  The label is the voxel-grid lesion fraction ≥ 0.5.

Case i depends only on (seed, i): each case has its own `np.random.default_rng([seed, i])`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from lesionseg.data.anatomy import brain_anatomy, ramp, rotation, smooth_field

MODALITIES = ("flair", "t1", "t2")

# Intensity of each tissue relative to white matter, per modality (before per-case jitter and scale).
# FLAIR: CSF suppressed, GM a little brighter than WM, lesions bright. T1: WM > GM > CSF, lesions iso- to
# hypointense (the T1 lesion value is the "black hole" end; each lesion gets a random share of it).
# T2: CSF brightest, GM > WM, lesions bright.
_CONTRAST = {
    "flair": {"csf": 0.15, "gm": 1.25, "wm": 1.0, "lesion": 1.65},
    "t1": {"csf": 0.25, "gm": 0.70, "wm": 1.0, "lesion": 0.40},
    "t2": {"csf": 2.60, "gm": 1.40, "wm": 1.0, "lesion": 2.3},
}
# Lesion-like signal that is not a lesion (not in the label): cortical and juxtacortical patches bright on
# FLAIR and T2 and dark on T1 (the FLAIR-bright clusters outside the consensus masks of the open MS scans are
# mostly 2-5 mm under the brain surface), and the odd T1-bright spot at the surface (vessels, fat). Added to
# the tissue intensities, relative to white matter.
_MIMIC = {"flair": (0.35, 0.75), "t1": (-0.25, 0.0), "t2": (0.2, 0.8)}
_SURFACE_SPOT = {"flair": 0.6, "t1": 0.9, "t2": -0.2}
_WM_LEVEL = {"flair": (400.0, 900.0), "t1": (500.0, 1000.0), "t2": (300.0, 700.0)}  # scanner units


class Phantom(NamedTuple):
    images: dict[str, np.ndarray]  # {modality: float32}, 0 outside the brain
    label: np.ndarray  # uint8 {0, 1}: lesion fraction >= 0.5
    mask: np.ndarray  # uint8 {0, 1}: brain fraction >= 0.5
    tissues: dict[str, np.ndarray]  # float32 fractions: csf, gm, wm, lesion; ventricles (part of csf), mimic (overlay)


class LesionKind(NamedTuple):
    """How the lesions of a phantom are drawn: their load, size and where they may grow."""

    load: tuple[float, float, float, float]  # share of brain voxels: lognormal median, sigma, clipped to [lo, hi]
    radius: tuple[float, float]  # base lesion radius (× brain radius) and its cap; Pareto tail between
    confluent: float  # chance that a lesion touches the previous one
    periventricular: bool  # centres mostly near the ventricles (MS) or anywhere in deep tissue
    grey_matter: bool  # may grow into grey matter (tumours), not only white matter
    low_contrast: float  # share of lesions of faint contrast
    small: float  # share of lesions (by count) drawn at the resolution limit, away from the others
    load_size: float  # base radius × (load / median load) ** load_size: light loads small, heavy ones confluent


LESION_KINDS = {
    # MS: many small white-matter lesions, mostly periventricular; loads spread as between real patients
    # (median 0.6 % of the brain, 0.05 … 5 %: the open MS patients hold 0.12 % and 4.5 %). Median lesion
    # 10-47 voxels at size 64; the demo's phantoms.
    "ms": LesionKind((0.006, 1.1, 0.0005, 0.05), (0.045, 0.15), 0.3, True, False, 0.25, 0.0, 0.0),
    # MS at the lesion sizes of real scans: two in three lesions are a few 2 mm voxels (median 1.5-2.1 in
    # the open MS patients), holding 1-20 % of the load; a light load is a few discrete small lesions, a
    # heavy one confluent (bench/RESULTS.md: where the old defaults miss a light load's lesions).
    "ms-small": LesionKind((0.006, 1.1, 0.0005, 0.05), (0.045, 0.15), 0.3, True, False, 0.25, 0.6, 0.3),
    # Tumour-like: one to a few large lobulated masses of tens of mL (4 … 15 % of the brain).
    "large": LesionKind((0.07, 0.4, 0.04, 0.15), (0.16, 0.3), 0.7, False, True, 0.1, 0.0, 0.0),
}


def _lesion_sites(anat: dict[str, np.ndarray], lesionable: np.ndarray,
                  kind: LesionKind) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices where a lesion may be centred, their nearness to the ventricles, and drawing weights."""
    shape, radius = lesionable.shape, float(anat["radius"])
    # Distance to the ventricles on a coarse grid (EDT is the slow step at size 160; weights need no more).
    step = max(1, round(min(shape) / 48))
    dist = ndimage.distance_transform_edt(anat["ventricles"][::step, ::step, ::step] < 0.5) * step / radius
    dist = np.repeat(np.repeat(np.repeat(dist, step, 0), step, 1), step, 2)
    dist = dist[: shape[0], : shape[1], : shape[2]]
    candidates = np.flatnonzero((lesionable > 0.95) & (anat["deep"] > 0.06))
    if candidates.size == 0:  # only at toy sizes, where the cortex leaves no deep white matter
        candidates = np.flatnonzero(lesionable > 0.5)
    near = np.exp(-dist.ravel()[candidates] / 0.1)
    weight = (near + 0.02) if kind.periventricular else np.ones_like(near)  # MS: mostly periventricular
    return candidates, near, weight / weight.sum()


def _lesion_shape(c0: np.ndarray, r: float, big: bool, rng: np.random.Generator, bumps: np.ndarray,
                  lesionable: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """One lesion of radius `r` voxels at `c0`: a union of one to four ellipsoids (more when `big`) deformed
    by `bumps`, as a fraction clipped to `lesionable`, with its bounding box; None if the box is empty."""
    n_lobes = min(1 + rng.poisson(1.0 if big else 0.2), 4)  # large ones are lumpier
    lobes = [(c0 + rng.normal(0, 0.4 * r, 3) * (k > 0), r * rng.uniform(0.6, 1.3, 3), rotation(rng, 90))
             for k in range(n_lobes)]
    ext = 2 * r + 3
    lo = np.maximum(np.floor(c0 - ext), 0).astype(int)
    hi = np.minimum(np.ceil(c0 + ext) + 1, lesionable.shape).astype(int)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1)
    inside = np.full(grid.shape[:3], -np.inf, np.float32)
    for centre, axes, rot in lobes:  # union of ellipsoids: max of their (1 - quadratic form)
        local = (grid - centre) @ rot / axes
        inside = np.maximum(inside, 1 - (local**2).sum(-1))
    return box, np.minimum(ramp((inside + 0.3 * bumps[box]) * 0.5 * r), lesionable[box])


def _lesions(
    anat: dict[str, np.ndarray], rng: np.random.Generator, kind: LesionKind = LESION_KINDS["ms"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion fraction (clipped to WM, or WM and GM), and per-voxel FLAIR/T2 and T1 contrast shares, float32."""
    wm, radius = anat["lesionable"], float(anat["radius"])
    if kind.grey_matter:
        wm = np.clip(wm + anat["gm"], 0.0, 1.0)
    shape = wm.shape
    candidates, near, weight = _lesion_sites(anat, wm, kind)
    lesion, contrast, t1_share = (np.zeros(shape, np.float32) for _ in range(3))
    bumps = smooth_field(rng, shape, max(2.0, 0.06 * radius))  # deforms lesion outlines
    median, sigma, lo, hi = kind.load
    load_share = np.clip(np.exp(rng.normal(np.log(median), sigma)), lo, hi)
    target = load_share * float(anat["brain"].sum())
    base = kind.radius[0] * float(np.clip(load_share / median, 0.25, 4.0)) ** kind.load_size
    load, previous = 0, None
    for _ in range(400):
        if load >= max(target, 1):
            break
        small = kind.small > 0 and rng.random() < kind.small  # no draw for kinds without: their phantoms stay
        if small:  # at the resolution limit (1-7 voxels at size 64), anywhere in deep white matter, on a voxel
            r = max(0.7, rng.uniform(0.028, 0.04) * radius)
            c0 = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], shape), float)
        else:
            r = float(min(base * radius * (1 + rng.pareto(1.8)), kind.radius[1] * radius))  # heavy tail
            if previous is not None and rng.random() < kind.confluent:  # confluent: touching the previous one
                direction = rng.normal(size=3)
                c0 = previous[0] + direction / np.linalg.norm(direction) * 0.8 * (previous[1] + r)
            else:
                pick = rng.choice(candidates.size, p=weight)
                c0 = np.array(np.unravel_index(candidates[pick], shape), float)
                r *= 0.7 + 0.5 * near[pick]  # deep WM lesions are small; the large ones cap the ventricles
        drawn = _lesion_shape(c0, r, r > 0.06 * radius, rng, bumps, wm)
        if drawn is None:
            continue
        box, frac = drawn
        before = int((lesion[box] >= 0.5).sum())
        newer = frac > lesion[box]
        lesion[box] = np.maximum(lesion[box], frac)
        share = rng.uniform(0.25, 0.5) if rng.random() < kind.low_contrast else rng.uniform(0.75, 1.0)
        contrast[box] = np.where(newer, share, contrast[box])
        t1_share[box] = np.where(newer, share * rng.uniform(0.2, 1.0), t1_share[box])
        load += int((lesion[box] >= 0.5).sum()) - before
        if not small:
            previous = (c0, r)
    if load == 0:  # a bug, not a user error: every phantom must hold a lesion
        raise RuntimeError(f"phantom {shape}: no lesion could be placed in white matter")
    return lesion, contrast, t1_share


def _mimics(anat: dict[str, np.ndarray], lesion: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The unlabelled lesion-like patches (`_MIMIC`): their fraction, and the intensity (× white matter) each
    modality gains there, float32.

    Patches of 1.5-4.5 % of the brain radius in the cortex and just below it, covering a share of the brain
    drawn per case (median 0.2 %, 0.03 … 0.8 %), of which a sixth or so ends up 2 SD bright on FLAIR; one in
    two cases also gets a T1-bright spot or two at the surface. Never inside a lesion."""
    radius, brain = float(anat["radius"]), anat["brain"]
    tissue = np.clip(anat["gm"] + anat["wm"], 0.0, 1.0) * (1 - lesion)
    cortex = np.flatnonzero((brain > 0.95) & (tissue > 0.5) & (anat["deep"] > -0.08) & (anat["deep"] < 0.03))
    surface = np.flatnonzero((brain > 0.95) & (tissue > 0.5) & (anat["deep"] <= -0.08))
    mimic = np.zeros_like(brain)
    added = {m: np.zeros_like(brain) for m in MODALITIES}
    target = np.clip(np.exp(rng.normal(np.log(0.002), 0.8)), 0.0003, 0.008) * float(brain.sum())
    n_spots = rng.integers(1, 3) if rng.random() < 0.5 else 0
    covered, drawn = 0, 0
    for _ in range(200):
        spot = drawn < n_spots
        sites = surface if spot and surface.size else cortex
        if (covered >= target and not spot) or sites.size == 0:
            break
        c0 = np.array(np.unravel_index(sites[rng.integers(sites.size)], brain.shape), float)
        # The patches drawn so far double as `_lesion_shape`'s outline field, so a patch overlapping an earlier
        # one bulges into it. An accident of the first version, kept so the phantoms stay as measured; a smooth
        # field as for the lesions would be cleaner, with the next change that redraws every phantom anyway.
        shape = _lesion_shape(c0, max(0.8, rng.uniform(0.015, 0.045) * radius), False, rng, mimic, tissue)
        drawn += 1
        if shape is None:
            continue
        box, frac = shape
        newer = frac > mimic[box]
        mimic[box] = np.maximum(mimic[box], frac)
        for m in MODALITIES:
            value = _SURFACE_SPOT[m] if spot else rng.uniform(*_MIMIC[m])
            added[m][box] = np.where(newer, value, added[m][box])
        covered += int(((mimic[box] >= 0.5) & newer).sum())
    return mimic, {m: mimic * added[m] for m in MODALITIES}


def render_phantom(shape: tuple[int, int, int], rng: np.random.Generator, lesions: str = "ms") -> Phantom:
    """One phantom with its tissue fractions (for tests and inspection); `make_phantom` returns part of it.

    `lesions`: a key of `LESION_KINDS` (ms: small MS-like lesions; ms-small: MS lesions at the sizes of real
    scans; large: tumour-like masses)."""
    shape = tuple(int(n) for n in shape)
    anat = brain_anatomy(shape, rng)
    lesion, contrast, t1_share = _lesions(anat, rng, LESION_KINDS[lesions])
    mimic, mimic_signal = _mimics(anat, lesion, rng)
    from_wm = np.minimum(lesion, anat["wm"])  # a lesion replaces white matter, then (tumours) grey matter
    tissues = {"csf": anat["csf"], "gm": anat["gm"] - (lesion - from_wm), "wm": anat["wm"] - from_wm,
               "lesion": lesion, "ventricles": anat["ventricles"], "mimic": mimic}
    mask = (anat["brain"] >= 0.5).astype(np.uint8)
    label = ((lesion >= 0.5) & (mask > 0)).astype(np.uint8)
    texture = 1 + 0.02 * smooth_field(rng, shape, 3.0)  # mild tissue inhomogeneity
    images = {}
    for name in MODALITIES:
        level = {t: v * rng.uniform(0.95, 1.05) for t, v in _CONTRAST[name].items()}
        level["wm"] = 1.0
        lesion_level = 1 + (level["lesion"] - 1) * (t1_share if name == "t1" else contrast)
        image = sum(tissues[t] * level[t] for t in ("csf", "gm", "wm")) * texture + lesion * lesion_level
        image = image + mimic_signal[name]
        image = ndimage.gaussian_filter(image, 0.5)  # scanner point-spread function
        image *= np.exp(0.1 * smooth_field(rng, shape, 0.7 * max(shape)))  # receive-coil bias field
        wm_level = rng.uniform(*_WM_LEVEL[name])
        sigma = rng.uniform(0.02, 0.04)  # noise relative to WM
        noise = rng.standard_normal((2, *shape), dtype=np.float32)
        image = np.hypot(image + sigma * noise[0], sigma * noise[1])  # magnitude of complex noise: Rician
        image *= wm_level
        image[mask == 0] = 0  # skull-stripped
        images[name] = image.astype(np.float32, copy=False)
    return Phantom(images, label, mask, tissues)


def make_phantom(
    shape: tuple[int, int, int], rng: np.random.Generator, lesions: str = "ms"
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Return ({modality: float32 image}, label uint8 {0,1}, brain mask uint8 {0,1}), all of `shape`.

    The label always holds at least one lesion. The same `rng` state gives the same phantom.
    """
    phantom = render_phantom(shape, rng, lesions)
    return phantom.images, phantom.label, phantom.mask


def phantom_shape(size: int) -> tuple[int, int, int]:
    """(L-R, P-A, I-S) voxels for `size`: the brain is longer front to back than it is wide or tall."""
    return (size, round(1.2 * size), size)
