"""Tests for lesionseg.data.phantom: determinism, geometry, anatomy and contrast, and the written dataset."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lesionseg.data.anatomy import brain_anatomy
from lesionseg.data.demo_data import las_affine, write_demo_dataset
from lesionseg.data.phantom import LESION_KINDS, MODALITIES, _lesions, make_phantom, phantom_shape, render_phantom
from lesionseg.errors import LesionsegError

CONNECT_26 = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def phantom64():
    return render_phantom(phantom_shape(64), np.random.default_rng([0, 0]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    return write_demo_dataset(out, cases=3, size=24, seed=7)


def _same(a, b) -> bool:
    images_a, label_a, mask_a = a
    images_b, label_b, mask_b = b
    return (
        all(np.array_equal(images_a[m], images_b[m]) for m in MODALITIES)
        and np.array_equal(label_a, label_b)
        and np.array_equal(mask_a, mask_b)
    )


def test_same_seed_same_phantom_and_other_seed_differs():
    shape = phantom_shape(24)
    first = make_phantom(shape, np.random.default_rng([3, 1]))
    assert _same(first, make_phantom(shape, np.random.default_rng([3, 1])))
    assert not _same(first, make_phantom(shape, np.random.default_rng([4, 1])))
    assert not _same(first, make_phantom(shape, np.random.default_rng([3, 2])))


@pytest.mark.parametrize("lesions", ["ms", "ms-small", "large"])
@pytest.mark.parametrize("size", [16, 24, 33])
def test_shapes_dtypes_and_value_ranges(size, lesions):
    shape = phantom_shape(size)
    assert shape == (size, round(1.2 * size), size)
    images, label, mask = make_phantom(shape, np.random.default_rng([0, size]), lesions)
    assert sorted(images) == sorted(MODALITIES)
    for image in images.values():
        assert image.shape == shape and image.dtype == np.float32
        assert np.all(np.isfinite(image)) and image.min() >= 0
        assert np.all(image[mask == 0] == 0)
    for array in (label, mask):
        assert array.shape == shape and array.dtype == np.uint8
        assert set(np.unique(array)) <= {0, 1}
    assert label.sum() > 0, "every phantom has at least one lesion"
    assert np.all(mask[label > 0] == 1)
    assert 0.12 < mask.mean() < 0.6  # a brain inside the field of view, not filling it


def test_lesions_only_in_white_matter(phantom64):
    tissues, label = phantom64.tissues, phantom64.label > 0
    white_before_lesions = tissues["wm"] + tissues["lesion"]
    assert np.all(white_before_lesions[label] >= 0.5)
    assert np.all(tissues["ventricles"][label] < 0.5)
    fractions = tissues["csf"] + tissues["gm"] + tissues["wm"] + tissues["lesion"]
    assert np.all(fractions <= 1 + 1e-5) and np.all(fractions[phantom64.mask > 0] > 0.4)


def test_lesion_load_counts_and_size_spread(phantom64):
    components, count = ndimage.label(phantom64.label, CONNECT_26)
    sizes = np.bincount(components.ravel())[1:]
    assert count >= 3
    assert sizes.max() >= 5 * sizes.min(), f"lesion sizes {sorted(sizes)} have no spread"
    load = phantom64.label.sum() / phantom64.mask.sum()
    assert 0.001 < load < 0.05


def test_contrast_ordering_per_tissue(phantom64):
    tissues, images, label = phantom64.tissues, phantom64.images, phantom64.label > 0
    inner = ndimage.binary_erosion(phantom64.mask, iterations=2)  # away from the blurred brain edge
    pure = {name: (frac > 0.95) & inner for name, frac in tissues.items()}
    mean = {m: {t: float(images[m][pure[t]].mean()) for t in ("csf", "gm", "wm")} for m in MODALITIES}
    lesion = {m: float(images[m][label].mean()) for m in MODALITIES}
    assert lesion["flair"] > 1.2 * mean["flair"]["wm"]
    assert lesion["t2"] > 1.2 * mean["t2"]["wm"]
    assert lesion["t1"] <= mean["t1"]["wm"]
    assert mean["flair"]["csf"] < 0.5 * mean["flair"]["wm"] < mean["flair"]["gm"]
    assert mean["flair"]["gm"] > mean["flair"]["wm"]
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]


@pytest.fixture(scope="module")
def six_phantoms():
    return [render_phantom(phantom_shape(64), np.random.default_rng([3, i])) for i in range(6)]


def _flair_z(phantom) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR in SDs of the non-lesion brain above its mean: (lesion voxels, non-lesion brain voxels)."""
    lesion = phantom.label > 0
    other = (phantom.mask > 0) & ~lesion
    flair = phantom.images["flair"]
    z = (flair - flair[other].mean()) / flair[other].std()
    return z[lesion], z[other]


def test_lesion_contrast_is_that_of_real_scans(six_phantoms):
    # Open MS patients 07 and 19: FLAIR lesions 1.56 and 1.40 SD above the non-lesion brain, 27 % and 6 % of
    # lesion voxels over 2 SD. The earlier phantoms' 1.9 SD (half the voxels over 2 SD) made lesions easy.
    z = [_flair_z(p)[0] for p in six_phantoms]
    assert 1.2 < np.median([v.mean() for v in z]) < 1.7
    assert np.median([(v > 2).mean() for v in z]) < 0.3


def test_mimics_are_bright_unlabelled_and_cortical(six_phantoms):
    for phantom in six_phantoms:
        mimic, label, images = phantom.tissues["mimic"] >= 0.5, phantom.label > 0, phantom.images
        assert mimic.sum() > 0 and not np.any(mimic & label)
        pure_gm = (phantom.tissues["gm"] > 0.95) & ~mimic
        assert images["flair"][mimic].mean() > images["flair"][pure_gm].mean()
        assert images["t2"][mimic].mean() > images["t2"][pure_gm].mean()
        depth = ndimage.distance_transform_edt(phantom.mask)
        assert np.median(depth[mimic]) < np.median(depth[label])  # near the surface; lesions lie deep
    # 2 SD bright FLAIR outside the lesions, as in the real scans (0.05 % and 0.18 % of their brains):
    bright = [100 * (_flair_z(p)[1] > 2).mean() for p in six_phantoms]
    assert 0.01 < np.median(bright) < 0.2, bright


def test_ms_small_lesions_have_the_sizes_of_real_scans():
    # Open MS patients 07 and 19 at 2 mm (26-connected): median lesion 2.1 and 1.5 voxels, 64 % and 74 % of
    # lesions under 4 voxels, holding 20 % and 1 % of the load. The "ms" phantoms: median 10-47 voxels.
    sizes, small_load, z = [], [], []
    for i in range(6):
        phantom = render_phantom(phantom_shape(64), np.random.default_rng([3, i]), "ms-small")
        components, count = ndimage.label(phantom.label, CONNECT_26)
        each = np.bincount(components.ravel())[1:]
        sizes.extend(each)
        small_load.append(each[each < 4].sum() / each.sum())
        z.append(_flair_z(phantom)[0].mean())
    sizes = np.array(sizes)
    assert np.median(sizes) <= 4
    assert 0.45 < (sizes < 4).mean() < 0.85
    assert np.median(small_load) < 0.25 and sizes.max() >= 100  # the load is in the larger, confluent ones
    assert 1.2 < np.median(z) < 1.7  # the contrast of real scans still (partial volume lowers it)


def test_ms_small_light_loads_have_smaller_lesions_than_heavy_ones():
    # Clinically, a low lesion load is a few discrete small lesions and a heavy one is confluent. The same
    # anatomy at 0.1 % and 3 % of the brain, lesions neither confluent nor at the resolution limit.
    anatomy = brain_anatomy(phantom_shape(48), np.random.default_rng(11))
    kind = LESION_KINDS["ms-small"]
    mean_size = {}
    for share in (0.001, 0.03):
        fixed = kind._replace(load=(kind.load[0], 0.0, share, share), confluent=0.0, small=0.0)
        lesion = _lesions(anatomy, np.random.default_rng(12), fixed)[0] >= 0.5
        mean_size[share] = lesion.sum() / ndimage.label(lesion, CONNECT_26)[1]
    assert 3 * mean_size[0.001] < mean_size[0.03], mean_size


@pytest.mark.parametrize("case", [0, 1, 2])
def test_lesions_are_closer_to_the_ventricles_than_white_matter_is(case):
    # Per lesion, not per voxel: one large deep-WM lesion may outweigh many periventricular ones.
    phantom = render_phantom(phantom_shape(48), np.random.default_rng([5, case]))
    distance = ndimage.distance_transform_edt(phantom.tissues["ventricles"] < 0.5)
    components, count = ndimage.label(phantom.label, CONNECT_26)
    per_lesion = ndimage.mean(distance, components, np.arange(1, count + 1))
    assert np.median(per_lesion) < distance[phantom.tissues["wm"] > 0.5].mean()


def test_ventricles_are_deep_inside_the_brain(phantom64):
    depth = ndimage.distance_transform_edt(phantom64.mask)
    ventricles = phantom64.tissues["ventricles"] > 0.5
    assert ventricles.sum() > 0 and depth[ventricles].min() >= 4


def test_las_affine_with_spacing_centred():
    affine = las_affine((20, 24, 20), 1.5)
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
    assert np.allclose(nib.affines.voxel_sizes(affine), 1.5)
    assert np.allclose(nib.affines.apply_affine(affine, [9.5, 11.5, 9.5]), 0)


def test_dataset_layout_datalist_and_split(dataset):
    root = dataset.parent
    datalist = json.loads(dataset.read_text())
    assert datalist["modalities"] == list(MODALITIES)
    assert [e["case"] for e in datalist["training"]] == ["case_000", "case_001"]
    assert [e["case"] for e in datalist["test"]] == ["case_002"]
    assert "seed=7" in datalist["description"] and "size=24" in datalist["description"]
    for entry in datalist["training"] + datalist["test"]:
        assert set(entry) == {"case", "image", "label", "mask"}
        assert entry["image"] == [f"images/{entry['case']}_{m}.nii.gz" for m in MODALITIES]
        for rel in [*entry["image"], entry["label"], entry["mask"]]:
            assert not rel.startswith("/") and (root / rel).is_file()
    label = nib.load(root / "labels/case_000.nii.gz")
    assert label.shape == phantom_shape(24) and label.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(label.affine) == ("L", "A", "S")
    assert np.allclose(label.header.get_zooms(), 2.0)
    image = nib.load(root / "images/case_000_flair.nii.gz")
    assert image.get_data_dtype() == np.float32 and np.allclose(image.affine, label.affine)
    assert not list(root.rglob(".*tmp*")), "temporary files left behind"


def test_case_depends_only_on_seed_and_index(dataset, tmp_path):
    more = write_demo_dataset(tmp_path, cases=5, size=24, seed=7, spacing=1.0)
    for rel in ("images/case_001_t2.nii.gz", "labels/case_001.nii.gz", "masks/case_002.nii.gz"):
        a = np.asarray(nib.load(dataset.parent / rel).dataobj)
        b = np.asarray(nib.load(more.parent / rel).dataobj)
        assert np.array_equal(a, b), rel
    assert len(json.loads(more.read_text())["test"]) == 2  # ceil(5 * 0.25)


def test_rerun_overwrites_with_identical_content(tmp_path):
    path = write_demo_dataset(tmp_path, cases=2, size=16, seed=1)
    before = np.asarray(nib.load(tmp_path / "images/case_001_t1.nii.gz").dataobj)
    text = path.read_text()
    assert write_demo_dataset(tmp_path, cases=2, size=16, seed=1) == path
    assert path.read_text() == text
    assert np.array_equal(before, np.asarray(nib.load(tmp_path / "images/case_001_t1.nii.gz").dataobj))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cases": 1}, "cases=1 is too few"),
        ({"cases": 0}, "cases=0 is too few"),
        ({"size": 8}, r"size=8 is not in \[16, 512\]"),
        ({"size": 32.0}, "size must be an integer"),
        ({"spacing": 0}, "spacing=0 must be a positive"),
        ({"test_fraction": 1.0}, r"test_fraction=1.0 is not in \(0, 1\)"),
        ({"cases": 2, "test_fraction": 0.6}, "leaves no training case"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(LesionsegError, match=match):
        write_demo_dataset(tmp_path, **{"cases": 3, "size": 16, **kwargs})
    assert not (tmp_path / "datalist.json").exists()


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_large_lesions_are_tumour_like_masses(case):
    phantom = render_phantom(phantom_shape(64), np.random.default_rng([0, case]), lesions="large")
    label, tissues = phantom.label > 0, phantom.tissues
    volume_ml = label.sum() * 8 / 1000  # the demo's 2 mm voxels
    assert 15 < volume_ml < 90, volume_ml  # tens of mL
    components, count = ndimage.label(label, CONNECT_26)
    sizes = np.bincount(components.ravel())[1:]
    assert sizes.max() * 8 / 1000 > 5, "one mass of several mL at least"
    assert np.all(tissues["ventricles"][label] < 0.5) and np.all(phantom.mask[label] == 1)
    fractions = tissues["csf"] + tissues["gm"] + tissues["wm"] + tissues["lesion"]
    assert np.all(fractions <= 1 + 1e-5) and min(t.min() for t in tissues.values()) >= -1e-6
    flair = phantom.images["flair"]
    assert flair[label].mean() > 1.2 * flair[(tissues["wm"] > 0.95)].mean()
    ms = render_phantom(phantom_shape(64), np.random.default_rng([0, case]))
    assert label.sum() > 3 * ms.label.sum()


def test_unknown_lesion_kind_is_an_error(tmp_path):
    with pytest.raises(LesionsegError, match="lesions='huge' is not one of ms, ms-small, large"):
        write_demo_dataset(tmp_path, cases=2, size=16, lesions="huge")
