"""What every section of the config shares: unknown keys are errors, assignments are validated, and
device names follow one rule."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_device_name(v: str) -> str:
    """A device setting: auto, cpu, cuda or cuda:N (whether CUDA is there is checked when it is used)."""
    if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
        raise ValueError(f"{v!r} is not one of auto, cpu, cuda, cuda:N")
    return v
