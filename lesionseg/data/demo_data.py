"""The demo dataset on disk: phantoms (`lesionseg.data.phantom`) written as NIfTI in LAS orientation with
a Decathlon-style datalist, the way `lesionseg demo-data` and `make demo-data` write them."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.data.phantom import LESION_KINDS, MODALITIES, make_phantom, phantom_shape
from lesionseg.errors import LesionsegError
from lesionseg.files import write_atomic, write_json


def las_affine(shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """LAS voxel-to-world affine (like the real data) with the volume's centre at the world origin."""
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine


def check_demo_arguments(cases: int, size: int, seed: int, spacing: float, test_fraction: float = 0.25,
                         lesions: str = "ms") -> None:
    """LesionsegError naming the first argument of `write_demo_dataset` that is out of range."""
    for name, value in (("cases", cases), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise LesionsegError(f"demo data: {name} must be an integer, got {value!r}")
    if cases < 2:
        raise LesionsegError(f"demo data: cases={cases} is too few; need at least 2 (one training, one test)")
    if not 16 <= size <= 512:
        raise LesionsegError(f"demo data: size={size} is not in [16, 512] voxels")
    if seed < 0:
        raise LesionsegError(f"demo data: seed={seed} must be >= 0")
    if not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
        raise LesionsegError(f"demo data: spacing={spacing!r} must be a positive number of millimetres")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise LesionsegError(f"demo data: test_fraction={test_fraction!r} is not in (0, 1)")
    if lesions not in LESION_KINDS:
        raise LesionsegError(f"demo data: lesions={lesions!r} is not one of {', '.join(LESION_KINDS)}")


def write_demo_dataset(
    out_dir: str | Path,
    cases: int = 40,
    size: int = 64,
    seed: int = 0,
    spacing: float = 2.0,
    test_fraction: float = 0.25,
    lesions: str = "ms",
) -> Path:
    """Write phantoms as NIfTI and a Decathlon-style datalist; return the datalist path.

    Layout: images/<case>_<modality>.nii.gz, labels/<case>.nii.gz, masks/<case>.nii.gz, datalist.json.
    The last ceil(cases * test_fraction) cases are the test list. The datalist is written last, so its
    presence means the dataset is complete; re-running with the same arguments rewrites identical content.
    """
    check_demo_arguments(cases, size, seed, spacing, test_fraction, lesions)
    n_test = max(1, math.ceil(cases * test_fraction))
    if cases - n_test < 1:
        raise LesionsegError(
            f"demo data: test_fraction={test_fraction} leaves no training case out of {cases}; lower it"
        )

    out_dir = Path(out_dir)
    shape, affine = phantom_shape(size), las_affine(phantom_shape(size), float(spacing))
    entries = []
    for i in range(cases):
        case = f"case_{i:03d}"
        images, label, mask = make_phantom(shape, np.random.default_rng([seed, i]), lesions)
        files = {f"images/{case}_{m}.nii.gz": images[m] for m in MODALITIES}
        files[f"labels/{case}.nii.gz"] = label
        files[f"masks/{case}.nii.gz"] = mask
        for rel, array in files.items():
            img = nib.Nifti1Image(array, affine)
            img.header.set_xyzt_units("mm")
            write_atomic(out_dir / rel, lambda tmp, img=img: nib.save(img, tmp))
        entries.append({"case": case, "image": [f"images/{case}_{m}.nii.gz" for m in MODALITIES],
                        "label": f"labels/{case}.nii.gz", "mask": f"masks/{case}.nii.gz"})
    datalist = {
        "name": "lesionseg phantoms",
        "description": (
            f"synthetic {'tumour-like' if lesions == 'large' else 'MS-like'} lesion phantoms (lesionseg.data.phantom): "
            f"lesions={lesions}, seed={seed}, size={size}, "
            f"shape={list(shape)}, spacing={float(spacing)} mm, LAS"
        ),
        "modalities": list(MODALITIES),
        "training": entries[: cases - n_test],
        "test": entries[cases - n_test :],
    }
    return write_json(out_dir / "datalist.json", datalist)
