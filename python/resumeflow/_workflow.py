"""Workflows: a named DAG of Python callables, wired by parameter names.

>>> wf = Workflow("doc")
>>> @wf.node
... def load(n: int):
...     return list(range(n))
>>> @wf.node
... def total(load):
...     return sum(load)
>>> wf.nodes
['load', 'total']
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._core import CoreGraph, GraphError
from ._failures import RetryPolicy, Shrink

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


@dataclass
class NodeDef:
    """One node: its callable, wiring and policies."""

    id: str
    fn: Callable[..., Any]
    retry: RetryPolicy
    timeout: float | None
    explicit_inputs: dict[str, str]
    resources: dict[str, int]
    on_oom: Shrink | None
    heartbeat_timeout: float | None
    params: list[inspect.Parameter]
    context_params: list[str]
    is_async: bool
    is_generator: bool
    is_async_generator: bool


#: A node's resource demand is a u32 in the core.
_MAX_RESOURCE_UNITS = 2**32 - 1


def _check_node_resources(node_id: str, resources: Any) -> dict[str, int]:
    """``@wf.node(resources=...)`` as ``{name: units}``; a ``GraphError`` naming the node and
    the resource for anything else (a negative count used to be a bare ``OverflowError``)."""
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise GraphError(
            f"node {node_id!r}: resources must be a dict of resource name -> units, "
            f"got {type(resources).__name__}"
        )
    out: dict[str, int] = {}
    for name, units in resources.items():
        if not isinstance(name, str) or not name:
            raise GraphError(f"node {node_id!r}: resource names must be non-empty str, got {name!r}")
        try:
            if isinstance(units, bool):
                raise TypeError
            units = operator.index(units)
        except TypeError:
            raise GraphError(
                f"node {node_id!r}: resources[{name!r}] must be an int number of units, "
                f"got {type(units).__name__}"
            ) from None
        if not 0 <= units <= _MAX_RESOURCE_UNITS:
            raise GraphError(
                f"node {node_id!r}: resources[{name!r}] must be between 0 and {_MAX_RESOURCE_UNITS}, "
                f"got {units}"
            )
        out[name] = units
    return out


def _is_context_param(p: inspect.Parameter) -> bool:
    from ._context import NodeContext

    ann = p.annotation
    if ann is NodeContext:
        return True
    if isinstance(ann, str) and (ann == "NodeContext" or ann.endswith(".NodeContext")):
        return True
    return p.name == "ctx"


class Workflow:
    """A named DAG of nodes. Names use ``[A-Za-z0-9_.-]``."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            shown = repr(name)[:60]
            raise GraphError(f"invalid workflow name {shown}: use 1-200 characters from [A-Za-z0-9_.-]")
        self.name = name
        self._nodes: dict[str, NodeDef] = {}
        self._graph: CoreGraph | None = None
        self._input_names: list[str] | None = None  # cached with the graph

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, nodes={list(self._nodes)})"

    def node(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | bool | None = None,
        timeout: float | None = None,
        inputs: dict[str, str] | None = None,
        resources: dict[str, int] | None = None,
        on_oom: Shrink | None = None,
        heartbeat_timeout: float | None = None,
    ) -> Any:
        """Registers a node; use as ``@wf.node`` or ``@wf.node(retry=..., ...)``.

        ``heartbeat_timeout``: the node promises to call ``ctx.heartbeat()`` at least this
        often (seconds); if it goes quiet longer, this worker stops renewing the run's lease so
        that another worker's ``recover`` can take the run over.
        """

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self._add(f, name, retry, timeout, inputs, resources, on_oom, heartbeat_timeout)
            return f

        if fn is not None:
            return register(fn)
        return register

    def _add(
        self,
        fn: Callable[..., Any],
        name: str | None,
        retry: RetryPolicy | bool | None,
        timeout: float | None,
        inputs: dict[str, str] | None,
        resources: dict[str, int] | None,
        on_oom: Shrink | None,
        heartbeat_timeout: float | None = None,
    ) -> None:
        node_id = name or getattr(fn, "__name__", None)
        if not isinstance(node_id, str) or not _NAME.fullmatch(node_id):
            raise GraphError(
                f"workflow {self.name!r}: invalid node id {node_id!r}: use 1-200 characters from [A-Za-z0-9_.-]"
            )
        if node_id == "ctx":
            # A parameter named ``ctx`` receives the NodeContext (the documented rule), so a
            # node named ``ctx`` could never be consumed by name: refuse the ambiguity.
            raise GraphError(
                f"workflow {self.name!r}: a node cannot be named 'ctx' (a parameter named ctx "
                "receives the NodeContext, not a node's output); rename it, e.g. "
                "@wf.node(name='context_data')"
            )
        if node_id in self._nodes:
            raise GraphError(f"duplicate node id {node_id!r} in workflow {self.name!r}")
        if retry is None or retry is True:
            policy = RetryPolicy()
        elif retry is False:
            policy = RetryPolicy(max_attempts=1)
        elif isinstance(retry, RetryPolicy):
            policy = retry
        else:
            raise GraphError(f"node {node_id!r}: retry must be a RetryPolicy, None or False")
        for label, value in (("timeout", timeout), ("heartbeat_timeout", heartbeat_timeout)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise GraphError(f"node {node_id!r}: {label} must be a positive number of seconds")
        node_resources = _check_node_resources(node_id, resources)
        sig = inspect.signature(fn)
        params = [
            p for p in sig.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        for p in params:
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise GraphError(f"node {node_id!r}: positional-only parameter {p.name!r} cannot be wired")
        names = {p.name for p in params}
        explicit = dict(inputs or {})
        for param in explicit:
            if param not in names:
                raise GraphError(f"node {node_id!r}: inputs names parameter {param!r}, which it does not have")
        if on_oom is not None and on_oom.param not in names:
            raise GraphError(f"node {node_id!r}: on_oom shrinks {on_oom.param!r}, which it does not have")
        self._nodes[node_id] = NodeDef(
            id=node_id,
            fn=fn,
            retry=policy,
            timeout=float(timeout) if timeout is not None else None,
            explicit_inputs=explicit,
            resources=node_resources,
            on_oom=on_oom,
            heartbeat_timeout=float(heartbeat_timeout) if heartbeat_timeout is not None else None,
            params=params,
            context_params=[p.name for p in params if _is_context_param(p) and p.name not in explicit],
            is_async=inspect.iscoroutinefunction(fn),
            is_generator=inspect.isgeneratorfunction(fn),
            is_async_generator=inspect.isasyncgenfunction(fn),
        )
        self._graph = None
        self._input_names = None

    def _bindings(self, node: NodeDef) -> list[tuple[str, str, str, bool]]:
        out = []
        for p in node.params:
            if p.name in node.context_params:
                continue
            if p.name in node.explicit_inputs:
                out.append((p.name, "node", node.explicit_inputs[p.name], True))
            elif p.name in self._nodes and p.name != node.id:
                out.append((p.name, "node", p.name, True))
            else:
                out.append((p.name, "input", p.name, p.default is inspect.Parameter.empty))
        return out

    def validate(self) -> CoreGraph:
        """Checks the graph (cycles, unknown inputs, duplicates) and returns it; cached."""
        if self._graph is None:
            if not self._nodes:
                raise GraphError(f"workflow {self.name!r} has no nodes")
            spec = [
                (n.id, self._bindings(n), n.retry.as_spec(), n.timeout, n.resources, n.heartbeat_timeout)
                for n in self._nodes.values()
            ]
            self._graph = CoreGraph(self.name, spec)
        return self._graph

    @property
    def nodes(self) -> list[str]:
        """Node ids in topological order."""
        return list(self.validate().node_ids())

    @property
    def input_names(self) -> list[str]:
        """The run inputs this workflow reads: parameters with no producer node, sorted.

        >>> wf = Workflow("inputs_doc")
        >>> @wf.node
        ... def load(n: int, seed: int = 0):
        ...     return n + seed
        >>> @wf.node
        ... def total(ctx, load):
        ...     return load
        >>> wf.input_names
        ['n', 'seed']
        """
        if self._input_names is None:  # every run checks its inputs against these
            self._input_names = sorted({
                source
                for node in self._nodes.values()
                for _param, kind, source, _required in self._bindings(node)
                if kind == "input"
            })
        return list(self._input_names)

    def check_inputs(self, names: Iterable[str]) -> None:
        """Raises ``GraphError`` naming any run input that no node parameter reads (a typo
        would otherwise be ignored silently, and the node would run with its default).

        >>> wf = Workflow("check_doc")
        >>> @wf.node
        ... def load(n: int = 1):
        ...     return n
        >>> wf.check_inputs(["n"])
        >>> wf.check_inputs(["m"])
        Traceback (most recent call last):
        ...
        resumeflow.GraphError: workflow 'check_doc': unknown run input 'm' (no node parameter reads it); known inputs: 'n'
        """
        known = self.input_names
        unknown = sorted(set(names) - set(known))
        if not unknown:
            return
        listed = ", ".join(repr(n) for n in unknown)
        plural = "s" if len(unknown) > 1 else ""
        verb = "them" if len(unknown) > 1 else "it"
        known_text = (
            "known inputs: " + ", ".join(repr(n) for n in known)
            if known
            else "this workflow reads no run inputs"
        )
        raise GraphError(
            f"workflow {self.name!r}: unknown run input{plural} {listed} "
            f"(no node parameter reads {verb}); {known_text}"
        )

    def __getitem__(self, node_id: str) -> NodeDef:
        return self._nodes[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes
