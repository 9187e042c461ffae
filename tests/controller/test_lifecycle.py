"""A run from apply to Succeeded through the real operator, with restarts along the way."""

from __future__ import annotations

import json

import pytest
from harness import (
    JOBS,
    Cluster,
    Operator,
    apply,
    drive_to_end,
    events,
    jobs,
    real_stage,
    run_status,
    stage_job_names,
    stand_in_stage,
    tiny_run,
    validate_all,
    wait_for,
)

from selfmoa.run import layout, stage_table
from selfmoa.store import open_store

EXPECTED_JOBS = sorted(
    [f"r-i0-{s}" for s in ("reset", "evaluate")]
    + [f"r-i{k}-{s}" for k in (1, 2) for s in stage_table.LOOP]
)


@pytest.mark.slow
# The session may build the tiny base first (~40 s quiet, minutes on a loaded machine).
@pytest.mark.timeout(600)
async def test_lifecycle_with_real_stages(cluster: Cluster, operator: Operator, tmp_path) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    st = await drive_to_end(cluster, "r", real_stage, timeout=60)
    assert st["phase"] == "Succeeded", st
    assert [it["index"] for it in st["iterations"]] == [0, 1, 2]
    for it in st["iterations"]:
        assert it["safety"] is not None and it["attackSuccessRate"] is not None
    assert stage_job_names(cluster) == EXPECTED_JOBS
    store = open_store(st["artifacts"])
    assert store.exists(layout.RUN_JSON)
    assert validate_all(cluster) == len(EXPECTED_JOBS)
    print("lifecycle status per iteration:", st["iterations"])


async def test_lifecycle_status_and_events(cluster: Cluster, operator: Operator, tmp_path) -> None:
    await apply(cluster, tiny_run("r", tmp_path))
    first = await wait_for(lambda: jobs(cluster))
    assert list(first) == ["r-i0-reset"]
    st = await wait_for(lambda: run_status(cluster, "r").get("stage") and run_status(cluster, "r"))
    assert (st["phase"], st["iteration"], st["stage"]) == ("Running", 0, "reset")
    st = await drive_to_end(cluster, "r", stand_in_stage)
    assert st["phase"] == "Succeeded"
    assert st["observedGeneration"] == 1
    assert st["artifacts"] == f"file://{tmp_path}/ml/r"
    assert [(i["index"], i["attackSuccessRate"], i["accepted"]) for i in st["iterations"]] == [
        (0, 0.5, True),
        (1, 0.4, True),
        (2, 0.3, True),
    ]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Progressing"]["status"] == "False"
    assert stage_job_names(cluster) == EXPECTED_JOBS
    await wait_for(lambda: len(events(cluster, "StageSucceeded")) == len(EXPECTED_JOBS))
    assert len(events(cluster, "StageStarted")) == len(EXPECTED_JOBS)
    assert validate_all(cluster) == len(EXPECTED_JOBS)
    # The run explains itself in its store, as a local run does.
    root = tmp_path / "ml" / "r"
    saved = await wait_for(
        lambda: (
            (root / "status.json").exists()
            and json.loads((root / "status.json").read_text())["phase"] == "Succeeded"
        )
    )
    assert saved
    assert "iteration" in (root / "report.html").read_text()


async def test_restarts_resume_without_duplicate_jobs(cluster: Cluster, tmp_path) -> None:
    op = Operator(cluster)
    await op.start()
    await apply(cluster, tiny_run("r", tmp_path))

    async def restart(i: int) -> None:
        # Every third Job: stop while the next Job is running or about to be created.
        if i % 3 == 0:
            await op.stop()
            await op.start()

    try:
        # Also restart once with a Job in flight (created, not finished).
        await wait_for(lambda: jobs(cluster))
        await op.stop()
        await op.start()
        st = await drive_to_end(cluster, "r", stand_in_stage, between=restart)
    finally:
        await op.stop()
    assert op.starts >= 5
    assert st["phase"] == "Succeeded"
    assert stage_job_names(cluster) == EXPECTED_JOBS
    # No Job was ever deleted and created again: every later attempt found it and adopted it.
    for (res, _, name), obj in list(cluster.objects.items()):
        if res == JOBS:
            assert None not in list(obj.history), name
    # Events queued just before a stop may be lost with the process, never duplicated.
    assert len(events(cluster, "StageStarted")) <= len(EXPECTED_JOBS)
