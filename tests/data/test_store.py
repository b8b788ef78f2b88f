"""The preprocessed store: batches from it equal those from memory bit for bit, its keys, atomic and concurrent
builds, damaged entries and a full disk; and the memory limits that `data.cache: auto` decides by."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import REPO

from lesionseg.data import cache, preprocessing, store
from lesionseg.data.cache import train_batches, volume_dataset
from lesionseg.data.preprocessing import load_datalist, split_train_val
from lesionseg.errors import LesionsegError
from lesionseg.memory import cgroup_room, usable_memory


def training(cfg):
    return split_train_val(load_datalist(cfg)["training"], cfg)[0]


@pytest.mark.parametrize("spatial", [[], ["data.rotate_degrees=20", "data.scale_fraction=0.15", "data.spatial_prob=0.7"]])
def test_batches_from_the_store_equal_batches_from_memory(tiny_config, spatial):
    told = []
    memory = train_batches(training(tiny_config("data.cache=memory", *spatial)), tiny_config(*spatial))
    cfg = tiny_config("data.cache=disk", *spatial)
    disk = train_batches(training(cfg), cfg, say=told.append)
    assert told and "from the preprocessed store" in told[0] and str(store.store_root(cfg)) in told[0]
    with open("/proc/self/maps") as maps:  # memory maps of the entries' files: read as needed, not loaded
        mapped = maps.read()
    assert all(str(store.store_root(cfg) / store.case_key(e, cfg) / "image.npy") in mapped for e in training(cfg))
    for it in (1, 2, 9):
        a, b = memory(it), disk(it)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    entries = [p for p in store.store_root(cfg).iterdir()]
    assert len(entries) == len(training(cfg)) and not [p for p in entries if p.name.startswith(".tmp")]


@pytest.mark.parametrize("setting", [[], ["data.spacing=[1.5,1.5,1.5]"], ["data.patch_size=[32,32,32]"],
                                     ["data.orientation=LPS", "data.normalize=median"]])
@pytest.mark.parametrize("masked", [True, False])
def test_validation_volumes_from_the_store_equal_those_from_the_files(tiny_config, setting, masked):
    """The store keeps volumes padded to the patch size (24³ phantoms, 32³ patches above): validation reads
    them cropped back, and gets what preprocessing the files gives it, bit for bit, affine included."""
    cfg = tiny_config("data.cache=disk", *setting)
    entries = [dict(e, mask=e["mask"] if masked else None) for e in load_datalist(cfg)["training"]]
    stored = volume_dataset(entries, cfg, with_label=True)
    files = volume_dataset(entries, tiny_config("data.cache=off", *setting), with_label=True)
    assert isinstance(stored, store.StoredCases) and len(stored) == len(files) == len(entries)
    for a, b in zip(stored, files):
        assert a["case"] == b["case"]
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())
        assert torch.equal(a["image"].affine, b["image"].affine) and torch.equal(a["image"].pixdim, b["image"].pixdim)
        assert a["label"].dtype == b["label"].dtype and torch.equal(torch.as_tensor(a["label"]), b["label"].as_tensor())
    assert sorted(p.name for p in store.store_root(cfg).iterdir()) == sorted(store.case_key(e, cfg) for e in entries)


def test_a_run_validates_from_the_store_with_its_training_cases(tiny_config, monkeypatch, tmp_path):
    """`auto` decides once for the run's whole cohort, training and validation cases together: when it does not
    fit, both are read from the store (validation no longer preprocesses its volumes at every validation)."""
    from lesionseg.runs import start_run_dir
    from lesionseg.training.loop import train_run

    monkeypatch.setattr(store, "usable_memory", lambda: (1, "a test's limit"))
    decided, read = [], []
    decide, get = store.cache_mode, store.StoredCases.__getitem__
    monkeypatch.setattr(store, "cache_mode", lambda entries, cfg: decided.append(len(entries)) or decide(entries, cfg))
    monkeypatch.setattr(store.StoredCases, "__getitem__", lambda self, i: read.append(self.cases[i]) or get(self, i))
    cfg = tiny_config()
    lists = load_datalist(cfg)
    train, val = split_train_val(lists["training"], cfg)
    assert decide(val, cfg)[0] == "disk"
    train_run(cfg, start_run_dir(tmp_path / "run", cfg), progress=False)
    assert decided == [len(lists["training"])]  # one decision, for the training and validation cases together
    assert read and set(read) == {e["case"] for e in val}
    told = []
    train_batches(train, cfg, say=told.append, cache=decide(lists["training"], cfg))
    assert "from the preprocessed store" in told[0]
    assert isinstance(volume_dataset(val, cfg, with_label=True, cache=decide(lists["training"], cfg)),
                      store.StoredCases)
    monkeypatch.setattr(store, "usable_memory", lambda: (2**40, "plenty"))
    assert not isinstance(volume_dataset(val, cfg, with_label=True, cache=decide(lists["training"], cfg)),
                          store.StoredCases)


def test_keys_follow_what_changes_the_arrays(tiny_config, tmp_path):
    cfg = tiny_config()
    entry = training(cfg)[0]
    key = store.case_key(entry, cfg)
    assert store.case_key(entry, tiny_config()) == key  # the same: reused
    assert store.case_key(entry, tiny_config("data.pos_fraction=0.2", "seed=4", "data.cache=disk")) == key  # not arrays
    for changed in ("data.spacing=[1.5,1.5,1.5]", "data.normalize=median", "data.clip_percentiles=[1,99]",
                    "data.orientation=LPS", "data.patch_size=[24,24,24]"):
        assert store.case_key(entry, tiny_config(changed)) != key, changed
    # the same file elsewhere is another entry; a rewritten file (a new time or size) is a new one again
    copy = dict(entry, label=str(tmp_path / "label.nii.gz"))
    with open(entry["label"], "rb") as src, open(copy["label"], "wb") as dst:
        dst.write(src.read())
    moved = store.case_key(copy, cfg)
    assert moved != key
    os.utime(copy["label"], ns=(1, 1))
    assert store.case_key(copy, cfg) != moved


def test_an_entry_is_built_once_and_reused(tiny_config):
    cfg = tiny_config("data.cache=disk")
    entry = training(cfg)[0]
    built = []

    def preprocess(e):
        built.append(e["case"])
        item = {"image": e["image"], "label": e["label"], "mask": e["mask"]}
        done = preprocessing.preprocessing(cfg, True, True)(item)
        return cache._volume(done), done["grid"]

    root = store.store_root(cfg)
    first = store.build_case(entry, cfg, preprocess, root)
    again = store.build_case(entry, cfg, preprocess, root)
    assert first == again and built == [entry["case"]]
    about = json.loads((first / "case.json").read_text())
    assert about["case"] == entry["case"] and about["settings"]["patch_size"] == [16, 16, 16]


def test_a_failed_or_killed_build_leaves_no_entry(tiny_config, monkeypatch):
    cfg = tiny_config("data.cache=disk")
    entry = training(cfg)[0]
    root = store.store_root(cfg)
    key = store.case_key(entry, cfg)
    # a build killed earlier left its temporary folder: ignored, and the entry built beside it
    (root / f".tmp-{key}-999-dead").mkdir(parents=True)
    (root / f".tmp-{key}-999-dead" / "image.npy").write_bytes(b"half")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.np, "save", no_space)
    with pytest.raises(LesionsegError, match="cannot write the preprocessed store entry .*no space"):
        train_batches([entry], cfg)
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-{key}-999-dead"]  # ours removed, no entry
    monkeypatch.undo()
    (root / f".tmp-{key}-998-older").mkdir()
    os.utime(root / f".tmp-{key}-998-older", (1, 1))  # a day old and more: a killed build's, removed
    sampler = train_batches([entry], cfg)
    assert (root / key / "case.json").is_file() and sampler(1)["image"].shape[0] == 2
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-{key}-999-dead", key]  # the young one is kept


def test_a_damaged_entry_is_named(tiny_config):
    cfg = tiny_config("data.cache=disk")
    entries = training(cfg)
    train_batches(entries, cfg)
    path = store.store_root(cfg) / store.case_key(entries[0], cfg)
    with open(path / "image.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(LesionsegError, match=f"store entry {path} .*delete that folder"):
        train_batches(entries, cfg)


def test_two_processes_build_the_same_store_at_once(tiny_config, tiny_dataset, tmp_path):
    """Both build every entry (no lock: write, then rename); one copy of each survives, whole."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from helpers import REPO, TINY
        from lesionseg.config import load_config
        from lesionseg.data.cache import train_batches, volume_dataset
        from lesionseg.data.preprocessing import load_datalist, split_train_val
        cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.datalist={tiny_dataset}",
                          "output_dir={tmp_path / 'shared'}", *TINY, "data.cache=disk"])
        cases = load_datalist(cfg)["training"]
        print(len(cases), float(train_batches(cases, cfg)(3)["image"].sum()))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    root = tmp_path / "shared" / "store"
    entries = sorted(p.name for p in root.iterdir())
    assert len(entries) == int(outs[0][0].split()[0]) and not [n for n in entries if n.startswith(".tmp")]
    for name in entries:
        volume, _, _ = store.open_case(root / name)
        assert volume.image.ndim == 4


def test_auto_takes_the_store_when_the_cohort_does_not_fit(tiny_config, monkeypatch):
    cfg = tiny_config()
    assert cfg.data.cache == "auto"
    told = []
    train_batches(training(cfg), cfg, say=told.append)
    assert "in memory" in told[0] and "auto:" in told[0]
    monkeypatch.setattr(store, "usable_memory", lambda: (1000, "the cgroup's limit"))
    train_batches(training(cfg), cfg, say=told.append)
    assert "from the preprocessed store" in told[1] and "beyond half of" in told[1] and "cgroup" in told[1]


def test_the_old_switch_still_reads(tiny_config):
    assert tiny_config("data.cache=true").data.cache == "memory"
    assert tiny_config("data.cache=false").data.cache == "off"


def test_a_process_limit_is_seen(tmp_path):
    """RLIMIT_DATA set in a child: what it may use is at most that (less what it has already)."""
    limit = 6 * 2**30
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, ({limit}, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        from lesionseg.memory import usable_memory
        room, name = usable_memory()
        print(room, name, sep="|")
    """)
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("this machine's hard data limit is below the test's")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    room, name = out.split("|")
    if name != "the process's RLIMIT_AS/RLIMIT_DATA":
        assert int(room) < limit  # something tighter still (a small cgroup or host)
    else:
        assert 0 < int(room) < limit


def test_a_cgroup_limit_is_seen(tmp_path):
    """A v2 group of 8 GB with 3 GB used leaves 5 GB; v1 likewise; no limit ('max'): None."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/slurm/job_1\n")
    group = tmp_path / "cg" / "slurm" / "job_1"
    group.mkdir(parents=True)
    (group / "memory.max").write_text(f"{8 * 2**30}\n")
    (group / "memory.current").write_text(f"{3 * 2**30}\n")
    assert cgroup_room(tmp_path / "cg", proc) == 5 * 2**30
    (group / "memory.max").write_text("max\n")
    assert cgroup_room(tmp_path / "cg", proc) is None
    (proc / "cgroup").write_text("4:memory:/job_2\n")
    v1 = tmp_path / "cg" / "memory" / "job_2"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2 * 2**30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    assert cgroup_room(tmp_path / "cg", proc) == 2 * 2**30 - 2**29
    room, _ = usable_memory()
    assert room > 0


def test_check_says_where_training_keeps_the_cases_and_builds_the_store(tiny_dataset, tmp_path):
    from helpers import TINY, lesionseg

    args = ["check", REPO / "configs" / "demo.yaml", f"data.datalist={tiny_dataset}", f"output_dir={tmp_path}", *TINY]
    said = lesionseg(*args, cwd=tmp_path).stdout
    assert "GiB preprocessed" in said and "training keeps them in memory (auto:" in said
    assert not (tmp_path / "store").exists()  # check alone writes nothing
    said = lesionseg(*args, "data.cache=disk", "--store", cwd=tmp_path).stdout
    entries = list((tmp_path / "store").iterdir())
    assert f"the preprocessed store {tmp_path / 'store'}: {len(entries)} entries" in said and len(entries) >= 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_from_the_store_equal_those_from_a_cuda_cache(tiny_config):
    """On a GPU: the store's patches are cut on the CPU and copied through pinned memory; the volumes cached on
    the GPU are cut there. The same batches."""
    cfg = tiny_config("data.cache=disk", "train.device=cuda")
    on_gpu = train_batches(training(cfg), tiny_config("data.cache=memory", "data.cache_device=cuda"), "cuda")
    from_disk = train_batches(training(cfg), cfg, "cuda")
    for it in (1, 5):
        a, b = on_gpu(it), from_disk(it)
        assert a["image"].device.type == b["image"].device.type == "cuda"
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
