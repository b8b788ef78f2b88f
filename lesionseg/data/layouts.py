"""Dataset layouts read as they are: a Decathlon datalist, an nnU-Net raw folder, a folder of patient folders.

`data.datalist` names one of:
- a Decathlon-style datalist JSON (`{"modalities": [...], "training": [...], "test": [...]}`), paths
  relative to the JSON;
- an nnU-Net raw dataset: its `dataset.json` (with `channel_names`) or its folder. Cases are read from
  `imagesTr/<case>_0000.nii.gz …` and `labelsTr/<case>.nii.gz` (training) and `imagesTs/` (test, with
  labels from `labelsTs/<case>.nii.gz` where that folder exists); brain masks, where present, from
  `masksTr/` and `masksTs/` (`<case>.nii.gz`; a lesionseg addition, nnU-Net has no such folder);
- a folder of patient folders, `<root>/<case>/<modality>.nii.gz` with `label.nii.gz` and an optional
  `brainmask.nii.gz` in each (file names matched without regard to case); every patient is a training case.

Every layout becomes `{"training": [entry, ...], "test": [...]}` with entries
`{"case": id, "image": [one absolute path per configured modality], "label": path | None, "mask": path | None}`.
Modalities are matched by name without regard to case (`FLAIR` is `flair`). Files are not opened here:
missing ones are listed by `checks.missing_files`, the rest checked by `checks`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lesionseg.errors import LesionsegError
from lesionseg.files import NIFTI_SUFFIXES, nifti_stem

PATIENT_LABEL = "label"
PATIENT_MASK = "brainmask"

Lists = dict[str, list[dict[str, Any]]]
ID_SOURCE = ("a case's id is its 'case' key (Decathlon), its folder (patient folders) or its file names "
             "(nnU-Net); without a 'case' key, the file name of its first image, or its folders where names repeat")


def case_id_from_path(path: str | Path) -> str:
    name = Path(path).name
    stem = nifti_stem(name)
    return Path(name).stem if stem is None else stem


def _channels(available: list[str], wanted: list[str], source: str) -> list[int]:
    """Index of each wanted modality among the available channel names, compared without regard to case."""
    lower = [str(a).lower() for a in available]
    unknown = [m for m in wanted if m.lower() not in lower]
    if unknown:
        raise LesionsegError(f"data.modalities asks for {unknown}, which {source} does not have (it has {available})")
    return [lower.index(m.lower()) for m in wanted]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LesionsegError(f"datalist {path} is not readable JSON: {err}") from None


def read_layout(path: str | Path, modalities: list[str]) -> tuple[Lists, str]:
    """The cases of the dataset at `path` and the name of its layout (decathlon, nnunet, patient folders)."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return read_layout(path / "dataset.json", modalities)
        return read_patient_folders(path, modalities), "patient folders"
    if not path.is_file():
        raise LesionsegError(f"datalist not found: {path} (set data.datalist, or run `make demo-data`)")
    raw = _read_json(path)
    if isinstance(raw, dict) and "channel_names" in raw and "training" not in raw:
        return read_nnunet(path, raw, modalities), "nnunet"
    return read_decathlon(path, raw, modalities), "decathlon"


def read_decathlon(path: Path, raw: Any, modalities: list[str]) -> Lists:
    """Entries of a Decathlon-style datalist; `modalities` in it (optional) names the image channels."""
    if not isinstance(raw, dict) or not isinstance(raw.get("training"), list):
        raise LesionsegError(f"datalist {path} needs a 'training' list of cases (Decathlon format)")
    listed = raw.get("modalities")
    if listed is not None:
        channels = _channels(listed, modalities, f"datalist {path}")
    else:
        channels = list(range(len(modalities)))
    root = path.parent
    out: Lists = {}
    first_images: list[tuple[dict, Path]] = []  # entries without a 'case' key, and their first listed image
    if not isinstance(raw.get("test") or [], list):
        raise LesionsegError(f"datalist {path}: 'test' must be a list of cases, not a {type(raw['test']).__name__}")
    for split in ("training", "test"):
        entries = []
        for i, item in enumerate(raw.get(split) or []):
            where = f"datalist {path}, {split}[{i}]"
            if not isinstance(item, dict) or "image" not in item:
                raise LesionsegError(f"{where}: each case needs an 'image' (a path or a list of paths)")
            _require_paths(item, where)
            images = [item["image"]] if isinstance(item["image"], str) else list(item["image"])
            expected = len(listed) if listed is not None else len(modalities)
            if len(images) != expected:
                raise LesionsegError(
                    f"{where}: {len(images)} image(s) for {expected} modalities ({listed or modalities})"
                )
            if split == "training" and not item.get("label"):
                raise LesionsegError(f"{where}: training cases need a 'label'")
            entries.append(
                {
                    "case": str(item["case"]) if item.get("case") else None,  # None: derived below
                    "image": [str(root / images[c]) for c in channels],
                    "label": str(root / item["label"]) if item.get("label") else None,
                    "mask": str(root / item["mask"]) if item.get("mask") else None,
                }
            )
            if not item.get("case"):
                first_images.append((entries[-1], root / images[0]))
        out[split] = entries
    _default_case_ids(first_images, root)
    return out


def _require_paths(item: dict, where: str) -> None:
    """A case's 'image' is a path or a list of paths, its 'label' and 'mask' (optional) a path each."""
    images = item["image"]
    if not (isinstance(images, str) and images) and not (
            isinstance(images, list) and images and all(isinstance(x, str) and x for x in images)):
        raise LesionsegError(f"{where}: 'image' is {images!r}; give a path or a list of paths (text, relative "
                             "to the datalist)")
    for key in ("label", "mask"):
        if item.get(key) is not None and not (isinstance(item[key], str) and item[key]):
            raise LesionsegError(f"{where}: {key!r} is {item[key]!r}; give a path (text, relative to the datalist)")


def _default_case_ids(first_images: list[tuple[dict, Path]], root: Path) -> None:
    """Case ids for entries without a 'case' key: the first image's file name without its suffix, or, where
    that name repeats among such cases (`p07/flair.nii.gz`, `p19/flair.nii.gz`), as many of its folders as
    make the ids unique (`p07`, `p19`; deeper ones joined by `_`)."""
    unnamed = [entry for entry, _ in first_images]
    paths = [path for _, path in first_images]
    parts = [p.relative_to(root).parts if p.is_relative_to(root) else p.parts for p in paths]
    ids = [case_id_from_path(p) for p in paths]
    for depth in range(1, max((len(x) for x in parts), default=1)):
        if len(set(ids)) == len(ids):
            break
        repeated = {i for i in ids if ids.count(i) > 1}
        ids = ["_".join(x[-1 - depth:-1]) if i in repeated and len(x) > depth else i for i, x in zip(ids, parts)]
    for entry, case in zip(unnamed, ids):
        entry["case"] = case


def read_nnunet(path: Path, raw: dict, modalities: list[str]) -> Lists:
    """Cases of an nnU-Net raw dataset folder, found from its files as nnU-Net finds them."""
    names = raw["channel_names"]
    if not isinstance(names, dict) or not names:
        raise LesionsegError(f"{path}: 'channel_names' must map channel numbers to names, e.g. {{\"0\": \"FLAIR\"}}")
    try:
        numbered = sorted((int(k), str(v)) for k, v in names.items())
    except ValueError:
        raise LesionsegError(f"{path}: 'channel_names' keys must be channel numbers, got {list(names)}") from None
    channels = [numbered[i][0] for i in _channels([v for _, v in numbered], modalities, f"nnU-Net dataset {path}")]
    ending = str(raw.get("file_ending", ".nii.gz"))
    root = path.parent
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")

    def cases_in(images: str, labels: str | None) -> list[str]:
        # Training cases come from both folders, so that a label without images is reported, not skipped.
        found = {m.group(1) for p in (root / images).glob(f"*{ending}") if (m := pattern.match(p.name))}
        if labels is not None:
            found |= {p.name[: -len(ending)] for p in (root / labels).glob(f"*{ending}")}
        return sorted(found)

    def optional(folder: str, case: str) -> str | None:
        file = root / folder / f"{case}{ending}"
        return str(file) if file.is_file() else None

    out: Lists = {}
    for split, suffix in (("training", "Tr"), ("test", "Ts")):
        labels = f"labels{suffix}"
        out[split] = [
            {
                "case": case,
                "image": [str(root / f"images{suffix}" / f"{case}_{c:04d}{ending}") for c in channels],
                "label": str(root / labels / f"{case}{ending}") if split == "training" else optional(labels, case),
                "mask": optional(f"masks{suffix}", case),
            }
            for case in cases_in(f"images{suffix}", labels if split == "training" else None)
        ]
    if not out["training"]:
        raise LesionsegError(f"nnU-Net dataset {root}: no training cases in imagesTr/ or labelsTr/ (*{ending})")
    return out


def _nifti_by_name(folder: Path) -> dict[str, Path]:
    return {case_id_from_path(p).lower(): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)}


def read_patient_folders(root: Path, modalities: list[str]) -> Lists:
    """One training case per sub-folder of `root` that holds NIfTI files, named after the folder."""
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _nifti_by_name(folder)
        if not files:
            continue

        def file(name: str) -> str:
            # A missing file keeps its expected name, so that the check reports where it was looked for.
            return str(files.get(name.lower(), folder / f"{name}.nii.gz"))

        entries.append({"case": folder.name, "image": [file(m) for m in modalities], "label": file(PATIENT_LABEL),
                        "mask": str(files[PATIENT_MASK]) if PATIENT_MASK in files else None})
    if not entries:
        raise LesionsegError(
            f"{root} has no dataset.json and no patient folders holding NIfTI files "
            f"(<case>/{modalities[0]}.nii.gz …, <case>/{PATIENT_LABEL}.nii.gz)"
        )
    return {"training": entries, "test": []}


def duplicate_problems(lists: Lists) -> list[str]:
    """Case ids listed twice, cases in both the training and the test list, image files shared by cases."""
    problems = []
    where: dict[str, list[str]] = {}
    for split, entries in lists.items():
        for i, e in enumerate(entries):
            where.setdefault(e["case"], []).append(f"{split}[{i}]")
    for case, places in where.items():
        splits = {p.split("[")[0] for p in places}
        if len(splits) > 1:
            problems.append(f"{case}: the case is in both the training and the test list ({', '.join(places)}); "
                            f"{ID_SOURCE}: if they are different patients, give each a unique 'case'")
        elif len(places) > 1:
            problems.append(f"{case}: duplicate case ids ({', '.join(places)}); {ID_SOURCE}: give each case a "
                            "unique 'case'")
    owner: dict[str, str] = {}
    for entries in lists.values():
        for e in entries:
            for path in e["image"]:
                other = owner.setdefault(path, e["case"])
                if other != e["case"]:
                    problems.append(f"{e['case']}: image {path} is also an image of case {other}")
    return problems
