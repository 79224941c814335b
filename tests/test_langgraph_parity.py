"""ResumeflowSaver against SqliteSaver, the saver people switch from: the same LangGraph
applications (and direct saver calls) on both, outputs normalized (checkpoint ids replaced by
their order, timestamps and interrupt ids dropped) and compared. One regression test per
difference a differential run found (issue 21), plus interrupts, subgraphs, ``Send``, time
travel and async. Where the savers still differ on purpose, the test says which and why."""

from __future__ import annotations

import asyncio
import datetime
import operator
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt
from resumeflow.langgraph import ResumeflowSaver

Scenario = Callable[[Any], Any]


def _sqlite(path: Path) -> tuple[Any, Callable[[], None]]:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    return saver, conn.close


def _resumeflow(path: Path) -> tuple[Any, Callable[[], None]]:
    saver = ResumeflowSaver(str(path))
    return saver, saver.close


def _normalize(value: Any, ids: dict[str, int]) -> Any:
    """Checkpoint ids → their order of appearance; interrupt ids and timestamps dropped."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("ts", "id") and isinstance(v, str):
                continue
            if k in ("checkpoint_id", "parent_checkpoint_id") and isinstance(v, str) and v:
                out[k] = f"cp{ids.setdefault(v, len(ids))}"
            else:
                out[k] = _normalize(v, ids)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalize(v, ids) for v in value]
    if type(value).__name__ == "Interrupt":
        return {"interrupt": _normalize(value.value, ids)}
    if type(value).__name__ == "StateSnapshot":
        return _normalize({"values": value.values, "next": value.next, "config": value.config,
                           "metadata": value.metadata, "tasks": len(value.tasks)}, ids)
    return value


def _outcome(scenario: Scenario, saver: Any) -> Any:
    try:
        return ("ok", _normalize(scenario(saver), {}))
    except Exception as exc:  # noqa: BLE001 - the kind of failure is part of the outcome
        return ("raises", type(exc).__name__ if not isinstance(exc, ValueError) else "ValueError")


def both(tmp_path: Path, scenario: Scenario) -> tuple[Any, Any]:
    """The scenario's normalized outcome on SqliteSaver and on ResumeflowSaver."""
    results = []
    for name, make in (("sqlite", _sqlite), ("resumeflow", _resumeflow)):
        saver, close = make(tmp_path / f"{name}.db")
        try:
            results.append(_outcome(scenario, saver))
        finally:
            close()
    return results[0], results[1]


def assert_same(tmp_path: Path, scenario: Scenario) -> Any:
    sqlite_result, resumeflow_result = both(tmp_path, scenario)
    assert resumeflow_result == sqlite_result
    return resumeflow_result


# -- graphs -----------------------------------------------------------------------------------


class Log(TypedDict, total=False):
    log: Annotated[list[str], operator.add]


def _approval_graph(saver: Any) -> Any:
    def ask(state: Log) -> Log:
        answer = interrupt("approve?")
        return {"log": [f"ans:{answer}"]}

    g = StateGraph(Log)
    g.add_node("turn", lambda s: {"log": [f"turn{len(s.get('log', []))}"]})
    g.add_node("ask", ask)
    g.add_edge(START, "turn")
    g.add_edge("turn", "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver)


class Count(TypedDict, total=False):
    n: int


def _counter(saver: Any) -> Any:
    g = StateGraph(Count)
    g.add_node("inc", lambda s: {"n": s.get("n", 0) + 1})
    g.add_edge(START, "inc")
    g.add_edge("inc", END)
    return g.compile(checkpointer=saver)


def _history(graph: Any, config: dict[str, Any]) -> list[Any]:
    return [(s.values, s.next, s.metadata.get("step")) for s in graph.get_state_history(config)]


# -- item 1: an empty checkpoint id means "the latest" --------------------------------------


def test_an_empty_checkpoint_id_reads_and_continues_the_latest_checkpoint(tmp_path):
    def scenario(saver):
        graph = _approval_graph(saver)
        cfg = {"configurable": {"thread_id": "t", "checkpoint_id": ""}}
        graph.invoke({"log": ["hello"]}, cfg)
        out = [graph.get_state(cfg).next, graph.invoke(Command(resume="yes"), cfg)]
        out.append(graph.invoke({"log": ["again"]}, cfg))
        out.append(len(list(saver.list({"configurable": {"thread_id": "t"}}))))
        out.append(len(list(saver.list({"configurable": {"thread_id": "t", "checkpoint_id": ""}}))))
        return out

    result = assert_same(tmp_path, scenario)
    assert result[1][1] == {"log": ["hello", "turn1", "ans:yes"]}


# -- item 3: ints of 2**64 and more in configurable and metadata ----------------------------


def test_a_big_int_in_configurable_or_metadata_is_stored_losslessly(tmp_path):
    def scenario(saver):
        graph = _counter(saver)
        big = 2**64
        out = [graph.invoke({"n": 1}, {"configurable": {"thread_id": "a", "account_id": big}})]
        out.append(saver.get_tuple({"configurable": {"thread_id": "a"}}).metadata["account_id"])
        out.append(graph.invoke({"n": 1}, {"configurable": {"thread_id": "b"}, "metadata": {"trace_id": big}}))
        out.append(saver.get_tuple({"configurable": {"thread_id": "b"}}).metadata["trace_id"])
        return out

    result = assert_same(tmp_path, scenario)
    assert result[1][1] == 2**64 and result[1][3] == 2**64


# -- item 4: list() edge cases ----------------------------------------------------------------


def _seeded(saver: Any) -> None:
    cfg: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    for step in range(4):
        metadata = {"step": step, "nested": {"k": step % 2}, "flag": step == 2, "tag": f"s{step}", "none": None}
        cfg = saver.put(cfg, empty_checkpoint(), metadata, {})


def _steps(saver: Any, config: Any = None, **kwargs: Any) -> list[int]:
    return [t.metadata["step"] for t in saver.list(config, **kwargs)]


@pytest.mark.parametrize("kwargs", [
    {"filter": {"nested.k": 1}},
    {"filter": {"nested": {"k": 1}}},
    {"filter": {"flag": True}},
    {"filter": {"tag": "s3", "step": 3}},
    {"filter": {"none": None}},
    {"filter": {"missing": None}},
    {"filter": {"step": "1"}},
    {"filter": {"step": 1.0}},
    {"limit": -1},
    {"limit": 0},
    {"limit": 2},
    {"filter": {"x') OR 1=1 --": 1}},
    {"filter": {"a b": 1}},
], ids=repr)
def test_list_filters_and_limits_follow_sqlitesaver(tmp_path, kwargs):
    def scenario(saver):
        _seeded(saver)
        return _steps(saver, None, **kwargs), _steps(saver, {"configurable": {"thread_id": "t"}}, **kwargs)

    assert_same(tmp_path, scenario)


def test_list_before_a_config_without_a_checkpoint_id_is_empty(tmp_path):
    def scenario(saver):
        _seeded(saver)
        newest = next(iter(saver.list({"configurable": {"thread_id": "t"}}))).config
        return (_steps(saver, None, before={"configurable": {"thread_id": "t"}}),
                _steps(saver, None, before=newest))

    assert assert_same(tmp_path, scenario)[1] == [[], [2, 1, 0]]


def test_a_metadata_filter_is_pushed_into_sql_and_still_exact_for_rows_without_its_json(tmp_path):
    """Checkpoints written before the store kept a JSON form of their metadata (schema 5)
    pass the SQL filter unfiltered; the saver still checks each one."""
    path = tmp_path / "old.db"
    with ResumeflowSaver(str(path)) as saver:
        _seeded(saver)
    conn = sqlite3.connect(str(path))
    conn.execute("UPDATE thread_checkpoints SET metadata_json = NULL WHERE checkpoint_id IN "
                 "(SELECT checkpoint_id FROM thread_checkpoints ORDER BY checkpoint_id LIMIT 2)")
    conn.commit()
    conn.close()
    with ResumeflowSaver(str(path)) as saver:
        assert _steps(saver, None, filter={"nested.k": 1}) == [3, 1]
        assert _steps(saver, None, filter={"step": 0}) == [0]


# -- item 5: types and arguments --------------------------------------------------------------


def test_a_bytearray_channel_value_comes_back_as_bytes(tmp_path):
    class Buf(TypedDict, total=False):
        buf: bytes
        nested: dict

    def scenario(saver):
        g = StateGraph(Buf)
        g.add_node("put", lambda s: {"buf": bytearray(b"xyz"), "nested": {"b": bytearray(b"q")}})
        g.add_edge(START, "put")
        g.add_edge("put", END)
        graph = g.compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "b"}}
        graph.invoke({}, cfg)
        values = graph.get_state(cfg).values
        return type(values["buf"]).__name__, values["buf"], type(values["nested"]["b"]).__name__

    assert assert_same(tmp_path, scenario)[1][0] == "bytes"


def test_an_empty_thread_id_is_a_thread_like_any_other(tmp_path):
    def scenario(saver):
        graph = _counter(saver)
        return [graph.invoke({"n": 1}, {"configurable": {"thread_id": tid}}) for tid in ("", 0)] + [
            graph.get_state({"configurable": {"thread_id": ""}}).values]

    assert_same(tmp_path, scenario)


def test_a_null_namespace_finds_nothing(tmp_path):
    def scenario(saver):
        _seeded(saver)
        return saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": None}})

    assert assert_same(tmp_path, scenario) == ("ok", None)


def test_int_metadata_keys_come_back_as_text(tmp_path):
    def scenario(saver):
        cfg = saver.put({"configurable": {"thread_id": "k", "checkpoint_ns": ""}}, empty_checkpoint(),
                        {"x": {1: "a", 2.5: "b", None: "c"}, "y": {False: "d"}}, {})
        metadata = saver.get_tuple(cfg).metadata
        return metadata["x"], metadata["y"]

    assert assert_same(tmp_path, scenario)[1] == [{"1": "a", "2.5": "b", "null": "c"}, {"false": "d"}]


@pytest.mark.parametrize("value", [b"\x00\xff", {1, 2}, datetime.datetime(2024, 1, 2)], ids=repr)
def test_metadata_json_cannot_hold_is_kept_where_sqlitesaver_refuses_it(tmp_path, value):
    """Kept on purpose: SqliteSaver's ``json.dumps`` raises TypeError for these; the
    serializer stores them losslessly here, and a filter treats them as null."""
    sqlite_result, resumeflow_result = both(tmp_path, lambda saver: saver.get_tuple(
        saver.put({"configurable": {"thread_id": "m", "checkpoint_ns": ""}}, empty_checkpoint(), {"x": value}, {})
    ).metadata["x"])
    assert sqlite_result == ("raises", "TypeError")
    assert resumeflow_result == ("ok", value)


# -- the rest of a differential run: interrupts, subgraphs, Send, time travel, async ----------


def test_interrupts_and_resume_match(tmp_path):
    def scenario(saver):
        graph = _approval_graph(saver)
        cfg = {"configurable": {"thread_id": "i"}}
        first = graph.invoke({"log": ["x"]}, cfg)
        return [first, graph.invoke(Command(resume="no"), cfg), _history(graph, cfg)]

    assert_same(tmp_path, scenario)


def test_subgraphs_match(tmp_path):
    def scenario(saver):
        inner = StateGraph(Log)
        inner.add_node("deep", lambda s: {"log": ["deep"]})
        inner.add_edge(START, "deep")
        inner.add_edge("deep", END)
        outer = StateGraph(Log)
        outer.add_node("sub", inner.compile())
        outer.add_node("after", lambda s: {"log": ["after"]})
        outer.add_edge(START, "sub")
        outer.add_edge("sub", "after")
        outer.add_edge("after", END)
        graph = outer.compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "s"}}
        return [graph.invoke({"log": []}, cfg), _history(graph, cfg)]

    assert_same(tmp_path, scenario)


def test_send_fan_out_matches(tmp_path):
    class Fan(TypedDict, total=False):
        items: list[int]
        out: Annotated[list[int], operator.add]

    def scenario(saver):
        g = StateGraph(Fan)
        g.add_node("square", lambda s: {"out": [s["x"] * s["x"]]})
        g.add_conditional_edges(START, lambda s: [Send("square", {"x": i}) for i in s["items"]])
        g.add_edge("square", END)
        graph = g.compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "f"}}
        out = graph.invoke({"items": [1, 2, 3]}, cfg)
        return [sorted(out["out"]), len(list(saver.list(cfg)))]

    assert_same(tmp_path, scenario)


def test_time_travel_matches(tmp_path):
    def scenario(saver):
        graph = _counter(saver)
        cfg = {"configurable": {"thread_id": "tt"}}
        for _ in range(3):
            graph.invoke({"n": graph.get_state(cfg).values.get("n", 0)}, cfg)
        past = list(graph.get_state_history(cfg))[-2].config
        replay = graph.invoke(None, past)
        forked = graph.update_state(past, {"n": 100})
        return [replay, graph.get_state(forked).values, len(list(graph.get_state_history(cfg)))]

    assert_same(tmp_path, scenario)


def test_async_graphs_match(tmp_path):
    async def run(saver):
        graph = _counter(saver)
        outs = await asyncio.gather(*(graph.ainvoke({"n": i}, {"configurable": {"thread_id": f"a{i}"}})
                                      for i in range(10)))
        states = [(await graph.aget_state({"configurable": {"thread_id": f"a{i}"}})).values for i in range(10)]
        listed = [t.metadata["step"] async for t in saver.alist({"configurable": {"thread_id": "a3"}})]
        return [outs, states, listed]

    async def both_async():
        import aiosqlite

        async with aiosqlite.connect(str(tmp_path / "a.db")) as conn:
            sqlite_saver = AsyncSqliteSaver(conn)
            await sqlite_saver.setup()
            a = _normalize(await run(sqlite_saver), {})
        async with ResumeflowSaver(str(tmp_path / "r.db")) as rf_saver:
            b = _normalize(await run(rf_saver), {})
        return a, b

    a, b = asyncio.run(both_async())
    assert a == b


# -- item 2: large values do not slow other threads down ------------------------------------


def test_thread_values_is_a_rowid_table_and_an_old_store_migrates(tmp_path):
    """In a ``WITHOUT ROWID`` table, megabyte rows live in the key's b-tree: every insert and
    search among them paid for it (small threads slowed 8x next to five 10 MB values). The
    layout is checked here; benches/langgraph_saver_parity.py measures it (workload L)."""
    path = tmp_path / "layout.db"
    with ResumeflowSaver(str(path)) as saver:
        graph = _counter(saver)
        graph.invoke({"n": 1}, {"configurable": {"thread_id": "x"}})
    conn = sqlite3.connect(str(path))
    (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'thread_values'").fetchone()
    assert "WITHOUT ROWID" not in ddl.upper()
    columns = {row[1] for row in conn.execute("PRAGMA table_info(thread_checkpoints)")}
    assert "metadata_json" in columns
    conn.close()
