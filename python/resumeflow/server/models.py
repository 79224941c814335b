"""Request bodies, declared once: validation errors (422, naming the field) and the OpenAPI
document come from the same models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: As the engine checks run ids: 1-200 characters from [A-Za-z0-9_.:@+-].
RUN_ID_PATTERN = r"^[A-Za-z0-9_.:@+\-]{1,200}$"
#: As the engine checks workflow and node names.
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,200}$"


class StartRun(BaseModel):
    """``POST /api/v1/runs``."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(pattern=NAME_PATTERN, description="a workflow the server serves")
    inputs: dict[str, Any] = Field(default_factory=dict, description="run inputs by name")
    run_id: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    until: str | None = Field(default=None, pattern=NAME_PATTERN, description="stop after this node (paused)")
    labels: dict[str, str] = Field(default_factory=dict)


class ResumeRun(BaseModel):
    """``POST /api/v1/runs/ID/resume``."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_id: int | None = Field(default=None, ge=1)
    updates: dict[str, Any] = Field(default_factory=dict, description="node -> new output")
    rerun: list[str] = Field(default_factory=list, description="nodes to execute again")
