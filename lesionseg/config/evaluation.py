"""The evaluation options — the config's `eval:` section, `lesionseg evaluate`'s flags and the evaluator's
keyword arguments — and their one set of rules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from lesionseg.config.section import Section


class EvalConfig(Section):
    """The evaluation options, and the one set of rules for them: the config's `eval:` section, `lesionseg
    evaluate`'s flags and the evaluator's keyword arguments are all checked here (`eval_options`)."""

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="prob >= threshold is lesion (1: a binary mask "
                             "as it is; thresholds tuned on validation can be 1)")
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="sliding-window overlap")
    sw_batch_size: int = Field(4, ge=1)
    tta: bool = Field(False, description="test-time flips: mean probability over the 8 mirrorings (8× the time)")
    lesion_min_voxels: int = Field(1, ge=1, description="components smaller than this are not lesions")
    lesion_min_overlap: float = Field(0.0, ge=0.0, le=1.0, description="share of a lesion overlapped to detect it")
    lesion_matching: Literal["isbi2015", "msseg", "panoptica"] = Field(
        "isbi2015", description="lesion-wise matching: ISBI 2015 (lesion_min_voxels, lesion_min_overlap), MSSEG "
                                "(Anima's rules) or panoptica (one-to-one at IoU >= 0.5); evaluation/matching.py")
    size_bins_ml: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0], description="lesion-size bin edges")
    restrict_to_mask: bool = Field(False, description="score only the voxels inside each test case's brain mask")
    calibration_bins: int = Field(10, ge=2, description="equal-width bins of the reliability diagram and ECE")
    min_component_ml: float | Literal["tune"] = Field(
        0.0, description="remove predicted lesions smaller than this (mL) before scoring; tune: chosen on validation")

    @field_validator("min_component_ml")
    @classmethod
    def _volume_or_tune(cls, v: float | str) -> float | str:
        if v != "tune" and not 0 <= v < float("inf"):
            raise ValueError(f"{v!r} is not a volume >= 0 (mL) or 'tune'")
        return v

    @model_validator(mode="after")
    def _isbi_parameters_with_isbi(self) -> EvalConfig:
        if self.lesion_matching != "isbi2015" and (self.lesion_min_voxels != 1 or self.lesion_min_overlap != 0):
            raise ValueError(f"lesion_min_voxels and lesion_min_overlap are isbi2015 matching's; lesion_matching "
                             f"{self.lesion_matching} has its own minimum size and overlap rule: leave them at "
                             "1 and 0")
        return self

    @field_validator("size_bins_ml")
    @classmethod
    def _edges_increase(cls, v: list[float]) -> list[float]:
        if not all(0 < e < float("inf") for e in v) or v != sorted(set(v)):
            raise ValueError(f"{v!r} are not bin edges: increasing positive numbers")
        return v


def eval_options(**options: Any) -> EvalConfig:
    """Evaluation options given by name (the evaluator's keyword arguments, `lesionseg evaluate`'s flags),
    the others at their defaults, checked by `EvalConfig`; ValueError naming each bad one and its rule."""
    try:
        return EvalConfig.model_validate(options)
    except ValidationError as err:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: "
                                   f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors())) from None


EVAL_DEFAULTS = EvalConfig()  # the evaluation defaults of the evaluator's functions and of `lesionseg evaluate`
