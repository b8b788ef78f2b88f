"""The anatomy of a synthetic brain phantom: tissue fractions on the voxel grid (`phantom.py` adds lesions,
mimics and image formation).

A skull-stripped, egg-shaped brain (flatter base) with per-case size, shape, rotation and shift; an outer
CSF rim; a cortical grey-matter ribbon folded by sulci (CSF sheets along the zero set of a smooth random
field, lined by GM) and an interhemispheric fissure; deep grey matter (basal ganglia/thalamus); two curved
lateral ventricles of per-case size near the centre; white matter everywhere else. Edges are one voxel soft
(partial volume).
"""

from __future__ import annotations

import numpy as np


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Zero-mean, unit-variance random field that varies over about `cell` voxels (float32).

    Gaussian bumps on a coarse knot lattice, expanded one axis at a time with matrix products: smooth,
    and ~10x faster than `ndimage.zoom` or filtering full-size white noise at size 160.
    """
    width = cell / 2
    mats = []
    for n in shape:
        knots = np.arange(-3 * width, n + 3 * width, width)
        mats.append(np.exp(-0.5 * ((np.arange(n)[:, None] - knots[None]) / width) ** 2).astype(np.float32))
    field = rng.standard_normal([m.shape[1] for m in mats]).astype(np.float32)
    for m in mats:  # contract the leading (coarse) axis; the new fine axis goes last, so order is kept
        field = np.tensordot(field, m, axes=([0], [1]))
    return field / field.std()


def ramp(distance: np.ndarray) -> np.ndarray:
    """Signed distance in voxels (positive inside) → fraction, linear over one voxel (partial volume)."""
    return np.clip(0.5 + distance, 0.0, 1.0).astype(np.float32)


def rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def brain_anatomy(shape: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tissue fractions (float32) and helper maps. Axes are (L-R, P→A, I→S), as in the LAS affine."""
    # Brain semi-axes in voxels: ~80 % of the field of view, varied per case.
    semi = (np.array([0.40, 0.40, 0.37]) * np.array(shape) * rng.uniform(0.9, 1.05, 3)).astype(np.float32)
    radius = float(np.prod(semi, dtype=float) ** (1 / 3))  # voxels per normalised unit (edges, thicknesses)
    centre = (np.array(shape) - 1) / 2 + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    rot = rotation(rng, 5.0)
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    offsets = [(g - c).astype(np.float32) for g, c in zip(grid, centre)]
    rot = rot.astype(np.float32)
    ux, uy, uz = (sum(rot[i, j] * offsets[j] for j in range(3)) / semi[i] for i in range(3))

    # Brain outline: an ellipsoid with a flatter base and a lumpy surface; depth is in normalised units.
    uz_base = np.where(uz < 0, uz * 1.2, uz)
    rho = np.sqrt(ux**2 + uy**2 + uz_base**2) * (1 + 0.03 * smooth_field(rng, shape, 0.5 * radius))
    depth = 1 - rho
    brain = ramp(depth * radius)

    # Cortex: sulci are CSF sheets along the zero set of a smooth field, up to ~0.2 brain radii deep;
    # subtracting that indent from the depth makes CSF and the GM ribbon follow each fold.
    t_csf, t_gm = rng.uniform(0.025, 0.04), rng.uniform(0.09, 0.11)
    folds = smooth_field(rng, shape, 0.22 * radius)
    indent = rng.uniform(0.15, 0.22) * np.exp(-((folds / 0.3) ** 2))
    fissure = 0.5 * np.exp(-((ux * semi[0] / 1.2) ** 2)) * np.clip((uz + 0.4) / 0.5, 0, 1)
    cortical = depth - np.maximum(indent, fissure)
    inner = ramp((cortical - t_csf) * radius)
    wm = ramp((cortical - t_csf - t_gm) * radius)
    csf, gm = brain - inner, inner - wm

    def paint(alpha: np.ndarray, tissue: str) -> None:  # alpha of `tissue` replaces what was there
        for frac in fracs.values():
            frac *= 1 - alpha
        fracs[tissue] += alpha

    fracs = {"csf": csf, "gm": gm, "wm": wm}
    # Deep grey matter (basal ganglia, thalamus): an ellipsoid per hemisphere, below and lateral to the
    # ventricles.
    for side in (-1, 1):
        q = ((ux - side * 0.17) / 0.09) ** 2 + ((uy + 0.02) / 0.22) ** 2 + ((uz + 0.1) / 0.14) ** 2
        paint(ramp((1 - q) * 0.045 * radius) * brain, "gm")
    # Lateral ventricles: curved tubes arching over the centre, horns diverging; width varies per case.
    scale, length = rng.uniform(0.7, 1.6), rng.uniform(0.42, 0.5)
    t = uy / length
    wx, wz = 0.065 * scale, 0.11 * scale * (1 - 0.3 * t**2)
    wobble = 1 + 0.15 * smooth_field(rng, shape, 0.3 * radius)
    ventricles = np.zeros(shape, np.float32)
    for side in (-1, 1):
        xc = side * (wx + 0.025 + 0.08 * t**2)
        q = (((ux - xc) / wx) ** 2 + ((uz - 0.1 + 0.2 * t**2) / wz) ** 2 + t**4) * wobble
        ventricles = np.maximum(ventricles, ramp((1 - q) * 0.5 * wx * radius))
    w3 = max(0.02 * scale, 0.6 / radius)  # third ventricle: a midline slit between the thalami
    q = (ux / w3) ** 2 + (uy / 0.16) ** 2 + ((uz + 0.1) / 0.11) ** 2
    ventricles = np.maximum(ventricles, ramp((1 - q) * 0.5 * w3 * radius)) * brain
    paint(ventricles, "csf")
    # The septum between the ventricles and the midline below them are drawn as WM but are a membrane
    # and the diencephalon: no lesion may grow there (the corpus callosum above them stays lesionable).
    septum = (np.abs(ux) < wx + 0.03) & (np.abs(t) < 1.05) & (uz - 0.1 + 0.2 * t**2 < wz) & (uz > -0.45)
    return {**fracs, "ventricles": ventricles, "brain": brain, "deep": cortical - t_csf - t_gm,
            "lesionable": np.where(septum, 0, fracs["wm"]).astype(np.float32), "radius": np.float32(radius)}
