"""What "on the same voxel grid" means, defined once: the dataset check (`checks`), prediction (which runs
those checks) and evaluation (`volumes`) all ask `grid_problem`, so a file that passes `lesionseg check`
cannot fail evaluation on its geometry, and the other way round, and both say so in the same words.

Two files are on the same grid when their spatial shapes (first three axes) are equal and every element of
their affines differs by at most `AFFINE_TOLERANCE_MM` (mm for the translation, mm per voxel for the rest).
1 µm is far below any voxel (a shift a viewer could show is ~0.1 mm) yet far above the float32 rounding
of the affines in the NIfTI headers of real scans (~1e-5 mm), which converters round differently.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

AFFINE_TOLERANCE_MM = 1e-3


def volume_problem(path: object, img: nib.Nifti1Image) -> str | None:
    """Why `img` (read from `path`) is not one 3D volume, or None; trailing axes of length 1 are allowed."""
    if len(img.shape) < 3 or any(s != 1 for s in img.shape[3:]):
        return f"{path} has shape {img.shape}; one 3D volume per file is expected"
    return None


def spatial_shape(img: nib.Nifti1Image) -> tuple[int, ...]:
    return tuple(int(s) for s in img.shape[:3])


def grid_problem(what: str, img: nib.Nifti1Image, ref_name: str, ref: nib.Nifti1Image) -> str | None:
    """Why `img` (described as `what`) is not on the grid of `ref` (`ref_name`), or None when it is."""
    shape, ref_shape = spatial_shape(img), spatial_shape(ref)
    if shape != ref_shape:
        return f"{what} has shape {shape} but {ref_name} has {ref_shape}"
    worst = float(np.abs(img.affine - ref.affine).max())
    if not worst <= AFFINE_TOLERANCE_MM:  # NaN in an affine is off the grid too
        return (f"{what} has an affine that differs from {ref_name}'s by up to {worst:.4g} mm "
                f"(tolerance {AFFINE_TOLERANCE_MM:g} mm)")
    return None
