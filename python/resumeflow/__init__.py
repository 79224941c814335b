"""resumeflow: durable, resumable workflows for Python and PyTorch, with a Rust engine.

>>> import resumeflow as rf
>>> wf = rf.Workflow("hello")
>>> @wf.node
... def greet(name: str):
...     return f"hello {name}"
>>> import tempfile, os
>>> with rf.Engine(os.path.join(tempfile.mkdtemp(), "runs.db")) as engine:
...     engine.run(wf, inputs={"name": "world"}).values["greet"]
'hello world'
"""

from ._codec import enable_pickle, register_codec
from ._context import NodeContext
from ._core import (
    Cancelled,
    CheckpointNotFound,
    GraphError,
    InvalidArgument,
    LeaseLost,
    ResumeflowError,
    RunExists,
    RunFailed,
    RunLocked,
    RunNotFound,
    RunNotResumable,
    SerializationError,
    StoreError,
    WorkflowMismatch,
)
from ._core import __version__ as __version__
from ._engine import Engine, Run
from ._failures import (
    NonRetryable,
    Retryable,
    RetryPolicy,
    Shrink,
    is_oom,
    is_retryable,
    retry_on_status,
    shrink,
)
from ._state import Checkpoint, NodeState, RunState, Undecodable
from ._streaming import Subscription
from ._workflow import Workflow

__all__ = [
    "Cancelled",
    "Checkpoint",
    "CheckpointNotFound",
    "Engine",
    "GraphError",
    "InvalidArgument",
    "LeaseLost",
    "NodeContext",
    "NodeState",
    "NonRetryable",
    "ResumeflowError",
    "RetryPolicy",
    "Retryable",
    "Run",
    "RunExists",
    "RunFailed",
    "RunLocked",
    "RunNotFound",
    "RunNotResumable",
    "RunState",
    "SerializationError",
    "Shrink",
    "StoreError",
    "Subscription",
    "Undecodable",
    "Workflow",
    "WorkflowMismatch",
    "enable_pickle",
    "is_oom",
    "is_retryable",
    "register_codec",
    "retry_on_status",
    "shrink",
]
