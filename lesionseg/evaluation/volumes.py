"""Reading the NIfTI files of an evaluation: a prediction, its reference and an optional brain mask, each
one 3D volume checked to lie on the reference's grid (`grid.grid_problem`: the tolerance and the words of
`lesionseg check`), with errors that name both files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from lesionseg.errors import LesionsegError
from lesionseg.evaluation import metrics
from lesionseg.files import nifti_stem
from lesionseg.grid import grid_problem, spatial_shape, volume_problem


def _load(path: Path, role: str, other: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except FileNotFoundError as err:
        raise LesionsegError(f"{role} {path} does not exist (paired with {other}).") from err
    except Exception as err:  # nibabel raises many types for a damaged file
        raise LesionsegError(f"cannot read {role} {path} (paired with {other}): {err}") from err
    if problem := volume_problem(f"{role} {path} (paired with {other})", img):
        raise LesionsegError(problem)
    return img


def _array(img: nib.Nifti1Image, path: Path, role: str, other: Path) -> np.ndarray:
    """The voxels as a 3D array (trailing axes of length 1 dropped)."""
    try:
        return np.asanyarray(img.dataobj).reshape(spatial_shape(img))
    except Exception as err:  # truncated gzip, short file, …
        raise LesionsegError(f"cannot read the voxels of {role} {path} (paired with {other}): {err}") from err


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Tensor of a NIfTI array; big-endian files (some tools write them) are swapped to native order."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


def _load_on_reference_grid(
    path: Path, role: str, ref_path: Path, fix: str
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The voxels of `path` (a prediction or mask) after checking it lies on the grid of `ref_path`;
    also the reference image (header read, voxels not yet)."""
    img = _load(path, role, ref_path)
    ref_img = _load(ref_path, "reference", path)
    if problem := grid_problem(f"{role} {path}", img, f"reference {ref_path}", ref_img):
        raise LesionsegError(f"{problem}; {fix}")
    return _array(img, path, role, ref_path), ref_img


def _values_found(array: np.ndarray) -> str:
    found = np.unique(array)
    return ", ".join(f"{v:g}" for v in found[:10]) + (", …" if found.size > 10 else "")


def require_label(pairs: Sequence[tuple[Path, Path]], ref_label: int) -> None:
    """LesionsegError naming the label, the values found and the fix when no reference of `pairs`
    (`(prediction, reference)` paths) holds `ref_label`: every case would be scored against an empty
    reference. Some cases without it are fine (a case may have no lesion); reading stops at the first
    reference that holds it."""
    values: set = set()
    for pred_path, ref_path in pairs:
        ref_path, pred_path = Path(ref_path), Path(pred_path)
        ref_np = _array(_load(ref_path, "reference", pred_path), ref_path, "reference", pred_path)
        if np.any(ref_np == ref_label):
            return
        values.update(np.unique(ref_np).tolist())
    folders = sorted({str(Path(ref).parent) for _, ref in pairs})
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    raise LesionsegError(
        f"no reference holds the lesion label {ref_label} (ref_label, --ref-label): the {len(pairs)} "
        f"reference(s) in {where} hold only the values {_values_found(np.array(sorted(values)))}; "
        "give the value that marks lesion in them, or leave ref_label out if they are binary (0/1)."
    )


def load_case(
    pred_path: Path, ref_path: Path, device: str = "cpu", ref_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
    """Load one prediction/reference pair and check that they can be compared.

    Returns `(prob, ref, spacing_mm)`: probabilities (float32, or float64 if stored so) and a bool
    reference on `device`, and the reference's voxel spacing. `ref_label`: the reference value that is
    lesion when the reference holds several labels; otherwise it must be binary (0/1).
    LesionsegError naming both files for unreadable files, shapes or affines that disagree, probabilities
    outside [0, 1] or NaN, and a non-binary reference.
    """
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    pred_np, ref_img = _load_on_reference_grid(
        pred_path, "prediction", ref_path, "predictions must be in the reference's geometry (resample them first)."
    )
    ref_np = _array(ref_img, ref_path, "reference", pred_path)
    prob = _tensor(pred_np).to(device)
    if prob.dtype != torch.float64:
        prob = prob.to(torch.float32)
    try:
        metrics.check_probabilities(prob)
    except ValueError as err:
        raise LesionsegError(f"prediction {pred_path} (paired with {ref_path}): {err}") from err
    ref_t = _tensor(ref_np).to(device)
    if ref_label is not None:
        ref = ref_t == ref_label
    else:
        if not bool(((ref_t == 0) | (ref_t == 1)).all()):
            raise LesionsegError(
                f"reference {ref_path} (paired with {pred_path}) is not binary: values found "
                f"{_values_found(ref_np)}; "
                "give the lesion label (ref_label) or binarise the reference."
            )
        ref = ref_t != 0
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[: ref.ndim])
    return prob, ref, spacing


def load_mask(mask_path: Path, ref_path: Path, device: str = "cpu") -> torch.Tensor:
    """Load a brain mask for the case whose reference is `ref_path`: a bool tensor on `device`.

    LesionsegError naming both files for an unreadable mask, a shape or affine that differs from the
    reference's (same tolerance as `load_case`), or values other than 0/1.
    """
    mask_path, ref_path = Path(mask_path), Path(ref_path)
    mask_np, _ = _load_on_reference_grid(
        mask_path, "brain mask", ref_path, "the brain mask must be on the reference's grid (resample it first)."
    )
    mask_t = _tensor(mask_np).to(device)
    if not bool(((mask_t == 0) | (mask_t == 1)).all()):
        raise LesionsegError(
            f"brain mask {mask_path} (paired with {ref_path}) is not binary: values found {_values_found(mask_np)}."
        )
    return mask_t != 0


def nifti_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise LesionsegError(f"{role} folder {folder} does not exist or is not a folder.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case = nifti_stem(path.name)
        if case is None or not path.is_file():
            continue
        if case in found:
            raise LesionsegError(
                f"{role} folder {folder} holds case {case!r} twice: {found[case].name} and {path.name}."
            )
        found[case] = path
    if not found:
        raise LesionsegError(f"{role} folder {folder} holds no NIfTI files (<case>.nii.gz or <case>.nii).")
    return found


def load_region(path: Path, ref_path: Path, device: str = "cpu") -> torch.Tensor:
    """The non-zero voxels of `path` (a brain mask or a skull-stripped image) as a bool tensor on
    `device`, after checking that it lies on the grid of `ref_path`."""
    path, ref_path = Path(path), Path(ref_path)
    array, _ = _load_on_reference_grid(
        path, "brain image", ref_path, "the brain image must be on the reference's grid (resample it first)."
    )
    return _tensor(array).to(device) != 0


def match_folders(pred_dir: Path, ref_dir: Path, mask_dir: Path | None = None,
                  brain_dir: Path | None = None) -> tuple[list[tuple[str, Path, Path]], dict]:
    """Match `<case>.nii.gz` / `<case>.nii` by case name in the folders: `[(case, prediction, reference)]`
    and `{"masks": [...], "brains": [...]}` for the folders given.

    A prediction without a reference, or a reference without a prediction, is a LesionsegError listing
    the unmatched names; so is a case without a mask in `mask_dir` or `brain_dir` (extra ones are ignored).
    """
    preds = nifti_files(Path(pred_dir), "prediction")
    refs = nifti_files(Path(ref_dir), "reference")
    no_ref, no_pred = sorted(preds.keys() - refs.keys()), sorted(refs.keys() - preds.keys())
    if no_ref or no_pred:
        problems = []
        if no_ref:
            problems.append(f"predictions without a reference in {ref_dir}: {', '.join(no_ref)}")
        if no_pred:
            problems.append(f"references without a prediction in {pred_dir}: {', '.join(no_pred)}")
        raise LesionsegError("cases do not match; " + "; ".join(problems) + ".")
    cases = [(case, preds[case], refs[case]) for case in sorted(preds)]
    paths = {}
    for key, folder, role in (("masks", mask_dir, "brain mask"), ("brains", brain_dir, "brain image")):
        if folder is not None:
            found = nifti_files(Path(folder), role)
            lacking = [case for case, _, _ in cases if case not in found]
            if lacking:
                raise LesionsegError(f"cases without a {role} in {folder}: {', '.join(lacking)}.")
            paths[key] = [found[case] for case, _, _ in cases]
    return cases, paths
