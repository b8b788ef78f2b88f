"""The config's schema: a tree of pydantic models with `extra="forbid"`, every key with its default, its
range and, where the name does not say it, its meaning (`configs/base.yaml` lists them all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from lesionseg.config.evaluation import EvalConfig
from lesionseg.config.section import Section, check_device_name


class DataConfig(Section):
    datalist: Path | None = Field(None, description="Decathlon-style datalist JSON")
    modalities: list[str] = Field(default_factory=lambda: ["flair", "t1", "t2"], min_length=1)
    spacing: list[float] | None = Field(None, description="resample to this spacing (mm); null keeps the input grid")
    clip_percentiles: list[float] | None = Field(None, min_length=2, max_length=2, description="[low, high] %")
    orientation: str = "RAS"
    normalize: Literal["zscore", "median"] = Field("zscore", description="per channel over the brain: z-score, "
                                                   "or x / median - 1")
    patch_size: list[int] = Field(default_factory=lambda: [64, 64, 64], min_length=3, max_length=3)
    pos_fraction: float = Field(0.67, ge=0.0, le=1.0, description="share of patches centred on a lesion voxel")
    samples_per_volume: int = Field(2, ge=1)
    rotate_degrees: float = Field(0.0, ge=0.0, le=180.0, description="spatial augmentation: rotation about each axis")
    scale_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="spatial augmentation: zoom in [1 - s, 1 + s]")
    intensity_scale: float = Field(0.1, ge=0.0, lt=1.0, description="image × (1 + U(-a, a)) in half the patches")
    intensity_shift: float = Field(0.1, ge=0.0, description="image + U(-b, b) in half the patches")
    spatial_prob: float = Field(0.2, ge=0.0, le=1.0, description="share of patches rotated/zoomed (when either is on)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    val_cases: int | None = Field(None, ge=1, description="number of validation cases; overrides val_fraction")
    test_cases: list[str] = Field(default_factory=list, description="training cases held out as test cases")
    folds: int | None = Field(None, ge=2, description="k-fold cross-validation over the training cases (folds.py)")
    fold: int | None = Field(None, ge=0, description="the fold this run is tested on, 0 … folds - 1")
    fold_seed: int = Field(0, ge=0, lt=2**32, description="seeds the fold assignment (not `seed`: repeats keep "
                                                           "the folds)")
    cache: Literal["auto", "memory", "disk", "off"] = Field(
        "auto", description="where the preprocessed training cases are kept: memory, disk (the store), off "
                            "(preprocessed at every draw); auto: memory when they fit, else disk")
    store: Path | None = Field(None, description="the preprocessed store (data/store.py); null: <output_dir>/store")
    cache_device: str = Field("auto", description="auto | cpu | cuda | cuda:N: where cached training volumes live")
    prefetch: bool | Literal["auto"] = Field(
        "auto", description="cut the next batch in a background thread while a step trains (the same batches); "
                            "auto: on when training on a GPU")

    @field_validator("patch_size")
    @classmethod
    def _patch_positive(cls, v: list[int]) -> list[int]:
        if any(p < 8 for p in v):
            raise ValueError(f"{v} has a side below 8 voxels")
        return v

    _cache_device_known = field_validator("cache_device")(check_device_name)

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_was_a_switch(cls, v: Any) -> Any:
        return {True: "memory", False: "off"}.get(v, v) if isinstance(v, bool) else v  # configs before `disk`

    @model_validator(mode="after")
    def _fold_of_folds(self) -> DataConfig:
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise ValueError(f"data.fold = {self.fold} needs data.folds above it (data.folds = {self.folds})")
        return self

    @field_validator("orientation")
    @classmethod
    def _axis_codes(cls, v: str) -> str:
        # What nibabel and MONAI's Orientation accept: one letter of each pair L/R, P/A, I/S, in any order.
        pairs = [{"L", "R"}, {"P", "A"}, {"I", "S"}]
        if len(v) != 3 or sorted(next((i for i, p in enumerate(pairs) if c in p), 9) for c in v) != [0, 1, 2]:
            raise ValueError(f"{v!r} is not three axis codes, one of each of L/R, P/A, I/S (e.g. RAS, LPS)")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing_positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 3 or any(s <= 0 for s in v)):
            raise ValueError(f"{v} must be three positive numbers (mm) or null")
        return v


class ModelConfig(Section):
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2)
    strides: list[int] = Field(default_factory=lambda: [2, 2, 2])
    res_units: int = Field(2, ge=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["instance", "batch"] = "instance"
    prior: float | Literal["auto"] = Field(
        "auto", description="initial lesion probability of the output; auto: the lesion share of the training patches")
    deep_supervision: bool = False

    @field_validator("prior")
    @classmethod
    def _prior_is_a_probability(cls, v: float | str) -> float | str:
        if v != "auto" and not 0.0 < v < 1.0:
            raise ValueError(f"{v} must be a probability strictly between 0 and 1, or auto")
        return v

    @model_validator(mode="after")
    def _strides_match(self) -> ModelConfig:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"model.strides has {len(self.strides)} entries; it needs len(model.channels) - 1 = "
                f"{len(self.channels) - 1}"
            )
        if self.deep_supervision and len(self.channels) < 3:
            raise ValueError(f"model.deep_supervision needs a decoder level below the output to supervise: "
                             f"model.channels has {len(self.channels)} levels, give it 3 or more or set it false")
        return self


CROSS_ENTROPY_LOSSES = ("ce", "wce", "focal", "dice_ce")  # loss.ce_weight: auto adds no cross-entropy to these


def resolve_ce_weight(name: str, weight: float | str) -> float:
    """`loss.ce_weight` as trained: `auto` is 1 for the overlap losses and 0 for `CROSS_ENTROPY_LOSSES`."""
    if weight == "auto":
        return 0.0 if name in CROSS_ENTROPY_LOSSES else 1.0
    return float(weight)


class LossConfig(Section):
    name: Literal["tversky", "dice", "jaccard", "focal_tversky", "ce", "wce", "focal", "dice_ce"] = "tversky"
    beta: float = Field(0.7, gt=0.0, lt=1.0, description="weight of false negatives")
    alpha: float | None = Field(None, gt=0.0, description="weight of false positives; null means 1 - beta")
    gamma: float | None = Field(None, gt=0.0, description="focal_tversky: (1 - T)^(1/gamma), default 4/3; "
                                                          "focal: (1 - p_t)^gamma, default 2")
    pos_weight: float | None = Field(None, gt=0.0, description="wce: weight of the lesion voxels' term")
    batch: bool | Literal["case"] = Field(
        True, description="true: sum TP/FP/FN over the whole batch; case: over each training case's patches "
                          "(data.samples_per_volume), the indices averaged; false: per patch, averaged")
    smooth: float = Field(1e-5, ge=0.0)
    ce_weight: float | Literal["auto"] = Field(
        "auto", description="weight of a binary cross-entropy term added to the loss for the whole run (nnU-Net "
        "pairs Dice with CE at 1); auto: 1 for the overlap losses, 0 for those with cross-entropy in them already "
        "(ce, wce, focal, dice_ce); 0: the loss alone")
    ce_warmup: float = Field(0.0, ge=0.0, le=1.0, description="share of train.iterations over which a "
                             "cross-entropy term, weight 1 fading linearly to ce_weight, is added; 0: off")

    @property
    def resolved_alpha(self) -> float:
        return 1.0 - self.beta if self.alpha is None else self.alpha

    @property
    def resolved_ce_weight(self) -> float:
        return resolve_ce_weight(self.name, self.ce_weight)

    @field_validator("ce_weight")
    @classmethod
    def _ce_weight_not_negative(cls, v: float | str) -> float | str:
        if v != "auto" and v < 0.0:
            raise ValueError(f"{v} must be a weight >= 0 (0: the loss alone), or auto")
        return v

    @model_validator(mode="after")
    def _settings_of_the_loss(self) -> LossConfig:
        if self.name == "wce" and self.pos_weight is None:
            raise ValueError("loss.name wce needs loss.pos_weight, the weight of the lesion voxels' term (e.g. "
                             "the ratio of background to lesion voxels in the training patches)")
        if self.name in CROSS_ENTROPY_LOSSES and self.ce_weight != "auto" and self.ce_weight > 0:
            raise ValueError(f"loss.ce_weight {self.ce_weight:g} would add cross-entropy to loss.name {self.name}, "
                             "which has cross-entropy in it already: set loss.ce_weight to auto (0 for this loss, "
                             "1 for the overlap losses) or 0")
        return self  # gamma and pos_weight are ignored by the other losses: a sweep over loss.name sets them once


class TrainConfig(Section):
    iterations: int = Field(2000, ge=1)
    batch_size: int = Field(2, ge=1, description="volumes per step; each gives data.samples_per_volume patches")
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["constant", "cosine", "poly"] = "constant"
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="auto: bf16 on CUDA where supported, else fp16 with a gradient scaler; CPU fp32"
    )
    channels_last: bool = Field(False, description="channels_last_3d memory format for model and batch")
    compile: bool = Field(False, description="torch.compile the model for training")
    val_every: int = Field(200, ge=1)
    val_images_every: int = Field(1, ge=0, description="TensorBoard overlay panel every N validations; 0: never")
    log_every: int = Field(50, ge=1)

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_on_means_auto(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean; `on` is the earlier name of `auto`.
        return {True: "auto", False: "off", "on": "auto"}.get(v, v) if isinstance(v, (bool, str)) else v

    _device_known = field_validator("device")(check_device_name)


class ReportConfig(Section):
    baseline: dict[str, Any] = Field(
        default_factory=lambda: {"loss.beta": 0.5},
        description="the configuration every other is compared with: dotted key → value (default: the soft "
                    "Dice loss of the β sweep), e.g. {loss.name: dice}")

    planning_difference: float = Field(
        0.01, gt=0.0, description="the difference (in the metrics' units) the report's study planning sizes the "
                                  "study for: the cases needed to detect it with 80 % power")

    @field_validator("baseline")
    @classmethod
    def _not_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("is empty; give at least one dotted key → value, e.g. {loss.beta: 0.5}")
        return v


# How a sweep is executed, written beside the dotted keys of the `sweep:` block. These names are not config
# keys (a dotted key or a top-level key such as `seed` never collides with them), and they are not part of
# a run's identity: the runs of a sweep get the defaults, so changing them never restarts a run.
SWEEP_OPTIONS = ("parallel", "backend", "ray_address", "cpus_per_run")


class SweepOptions(Section):
    parallel: int | Literal["auto"] = Field(
        "auto", description="runs at once: auto = one per visible GPU (1 on CPU), or a whole number >= 1")
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="Ray cluster to join (auto, HOST:6379, ray://…); "
                                                      "null: $RAY_ADDRESS, else a local Ray instance")
    cpus_per_run: int = Field(1, ge=1, description="Ray: CPUs each run reserves (and its torch threads)")

    @field_validator("parallel", mode="before")
    @classmethod
    def _parallel_known(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"{v!r} is not 'auto' or a whole number >= 1")


class Config(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._=+-]+$")
    seed: int = Field(0, ge=0, lt=2**32, description="NumPy, torch and MONAI take seeds in [0, 2**32)")
    deterministic: bool = False
    output_dir: Path = Path("experiments")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key → values; cartesian product")
    # Read from the same `sweep:` mapping (its reserved keys) and written back into it by `_sweep_dump`.
    sweep_options: SweepOptions = Field(default_factory=SweepOptions, validation_alias="sweep", exclude=True)

    @model_validator(mode="after")
    def _patch_fits_model(self) -> Config:
        divisor = 1
        for s in self.model.strides:
            divisor *= s
        if any(p % divisor for p in self.data.patch_size):
            raise ValueError(
                f"data.patch_size {self.data.patch_size} must be divisible by {divisor}, the product of "
                f"model.strides {self.model.strides}"
            )
        return self

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep_without_options(cls, v: Any) -> Any:
        return {k: x for k, x in v.items() if k not in SWEEP_OPTIONS} if isinstance(v, dict) else v

    @field_validator("sweep_options", mode="before")
    @classmethod
    def _sweep_options_only(cls, v: Any) -> Any:
        return {k: x for k, x in v.items() if k in SWEEP_OPTIONS} if isinstance(v, dict) else v

    @field_serializer("sweep")
    def _sweep_dump(self, grid: dict[str, list[Any]]) -> dict[str, Any]:
        # Only options that differ from the defaults: a default sweep dumps exactly as before they existed.
        return {**self.sweep_options.model_dump(exclude_defaults=True), **grid}

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key == "sweep" or key.startswith("sweep."):
                raise ValueError(f"sweep key {key!r} cannot sweep the sweep")
            if not values:
                raise ValueError(f"sweep.{key} is an empty list")
            repeated = [v for i, v in enumerate(values) if v in values[:i]]
            if repeated:
                raise ValueError(f"sweep.{key} lists {repeated[0]!r} more than once; give each value once "
                                 "(repeats of one setting: sweep seed)")
        return v
