"""GDPR deletions under a real `headwater up` while ingestion goes on: 50 people out of 200, spread over many
days and files (imported history, live events, anonymous events later identified, quarantined payloads).

After completion no row, raw quarantine payload, log record, person key or file (searched byte for byte:
Parquet decoded, Avro manifests decoded, everything else raw) holds them; everyone else's rows are intact
against the ground truth; no snapshot left can bring them back; the audit trail holds only hashes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from headwater.lake.importer import Importer
from headwater.lake.tables import open_catalog
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings, serving

DOOMED = [f"zx{i:03d}q" for i in range(50)]  # no id is a substring of another: raw byte search is exact
DOOMED_ANON = [f"an{i:03d}q" for i in range(25)]  # their anonymous ids, found only through identify events
KEEP = [f"keep{i:03d}" for i in range(150)]
EMAIL = {u: f"{u}@mail.example" for u in DOOMED}
DAYS = 40


PIPELINE = """
from headwater.processing import Pipeline


def count(ctx, event):
    n = ctx.state.get("n", 0) + 1
    ctx.state.set("n", n)
    ctx.emit({"user": ctx.key, "n": n})


pipeline = Pipeline("per_user")
counted = pipeline.source("events").process(count)
counted.to_state("per_user_counts", key=lambda v: v["user"])
counted.to_table("per_user_counts")
"""


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("privacy")
    keys = make_keys(data_dir)
    (data_dir / "per_user.py").write_text(PIPELINE)
    env = child_env(
        data_dir,
        # a commit a second while ingestion goes on: with one every 200 ms the deletion's rewrite, committing after
        # seconds of work on a loaded CI machine, lost every race for minutes (its retries keep the work done, the
        # writer's pace is what decides; a commit priority for deletions is the product fix, not built yet)
        flush_interval_ms=1000,
        privacy_expire_after_minutes=0,
        privacy_personal_properties='["email"]',
        processors=json.dumps([f"{data_dir / 'per_user.py'}:pipeline"]),
        # what is deleted is tested here, not priority (bench/isolation.py): niced by default, the deletion gets a
        # tenth of a core while ingestion saturates the 2 cores of CI, and outlasts the test's wait
        background_nice=0,
    )
    with serving(RunningHeadwater(data_dir, env, keys=keys)) as running:
        yield running


def history(data_dir: Path) -> dict[str, int]:
    """Import DAYS days of events in three files (many files per day partition); rows per person."""
    rng = random.Random(7)
    counts: dict[str, int] = {}
    start = time.time() - (DAYS + 2) * 86_400
    for part in range(3):
        lines = []
        for _ in range(6000):
            user = rng.choice(DOOMED + KEEP)
            at = start + rng.random() * DAYS * 86_400
            props = {"plan": rng.choice(["free", "pro"])}
            if user in EMAIL:
                props["email"] = EMAIL[user]
            elif rng.random() < 0.01:  # someone else's event mentioning a deleted person's e-mail
                props["email"] = EMAIL[DOOMED[0]]
            lines.append(json.dumps({"event": rng.choice(["view", "buy"]), "userId": user, "dateTime":
                                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)), **props}))  # fmt: skip
            counts[user] = counts.get(user, 0) + 1
        path = data_dir / f"history-{part}.ndjson"
        path.write_text("\n".join(lines) + "\n")
        importer = Importer(make_settings(data_dir))
        try:
            importer.import_file(path)
        finally:
            importer.close()
        path.unlink()
    return counts


def live_batch(users: list[str], rng: random.Random) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "live", "userId": u, "messageId": uuid.uuid4().hex,
             "properties": {"n": rng.randrange(100)}} for u in users]  # fmt: skip


def post_batch(hw: RunningHeadwater, batch: list[dict[str, Any]]) -> int:
    response = hw.post("/v1/batch", json.dumps({"batch": batch}), hw.keys["write"])
    assert response.status_code == 200, response.text
    return int(response.json()["accepted"])


def strings_holding(values: list[str], ids: list[str]) -> list[str]:
    return [v for v in values if any(i in v for i in ids)]


def leaks(data_dir: Path, ids: list[str]) -> list[str]:
    """Files under data_dir holding one of `ids`: Parquet and Avro decoded, everything else byte for byte."""
    found = []
    needles = [i.encode() for i in ids]
    pattern = "|".join(ids)
    for path in data_dir.rglob("*"):
        if not path.is_file() or path.suffix == ".log":
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column_name, column in zip(table.column_names, table.columns, strict=True):
                if pa.types.is_string(column.type) and pc.any(pc.match_substring_regex(column, pattern)).as_py():
                    found.append(f"{path}: column {column_name} holds an id")
        elif path.suffix == ".avro":
            with path.open("rb") as stream:
                text = "".join(repr(record) for record in fastavro.reader(stream))
            if any(i in text for i in ids):
                found.append(f"{path}: manifest holds an id")
        else:
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(f"{path}: bytes hold an id")
    return found


def test_deleting_50_people_while_ingesting(hw: RunningHeadwater) -> None:
    truth = history(hw.data_dir)
    rng = random.Random(3)
    # live: the deleted people's anonymous events, then identify (anonymous id -> user), then events
    batch: list[dict[str, Any]] = []
    for user, anon in zip(DOOMED, DOOMED_ANON, strict=False):
        batch.append({"type": "page", "name": "home", "anonymousId": anon, "messageId": uuid.uuid4().hex})
        batch.append({"type": "identify", "userId": user, "anonymousId": anon, "traits": {"email": EMAIL[user]},
                      "messageId": uuid.uuid4().hex})  # fmt: skip
    batch += live_batch(DOOMED + KEEP, rng)
    assert post_batch(hw, batch) == len(batch)
    for user in KEEP:
        truth[user] += 1
    # quarantined payloads naming deleted people (no event name)
    bad = hw.post("/track", "\n".join(json.dumps({"userId": u}) for u in DOOMED[:5]), hw.keys["write"])
    assert bad.json()["quarantined"] == 5
    expected = sum(truth.values()) + len(DOOMED) + 2 * len(DOOMED_ANON)
    hw.wait_rows("SELECT count(*) FROM events", [[expected]], timeout=60)
    # the processor saw the live events: state, a served row and output rows per person
    admin = {"Authorization": f"Bearer {hw.keys['admin']}"}
    deadline = time.monotonic() + 60
    while httpx.get(hw.url + f"/api/state/per_user_counts/{DOOMED[1]}", headers=admin, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, hw.log_text()
        time.sleep(0.3)
    while True:  # the output table exists once the processor's first output commit is done
        try:
            if hw.sql(f"SELECT count(*) > 0 FROM per_user_counts WHERE \"user\" = '{DOOMED[1]}'") == [[True]]:
                break
        except AssertionError:
            pass
        assert time.monotonic() < deadline, hw.log_text()
        time.sleep(0.3)
    hw.wait_rows("SELECT count(*) FROM quarantine WHERE raw LIKE '%zx00%'", [[5]], timeout=30)
    assert hw.sql("SELECT count(*) FROM events WHERE anonymous_id = 'an000q' AND user_id IS NULL") == [[1]]

    stop = threading.Event()
    sent: dict[str, int] = {}

    def keep_ingesting() -> None:
        while not stop.is_set():
            users = rng.sample(KEEP, 20)
            post_batch(hw, live_batch(users, rng))
            for u in users:
                sent[u] = sent.get(u, 0) + 1
            time.sleep(0.05)

    ingest = threading.Thread(target=keep_ingesting, daemon=True)
    ingest.start()
    try:
        response = httpx.post(hw.url + "/api/privacy/deletions", json={"user_ids": DOOMED}, headers=admin, timeout=30)
        assert response.status_code == 202, response.text
        request = response.json()
        assert request["state"] == "pending" and request["ids_requested"] == 50
        # a budget, not a speed check: on a loaded machine the rewrite's commits lose races against the writer's
        # (one every 200 ms here) and the worker retries the step
        deadline = time.monotonic() + 360
        while True:
            status = httpx.get(hw.url + request["url"], headers=admin, timeout=30).json()
            if status["state"] in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        ingest.join()
    assert status["state"] == "completed", (status, hw.log_text())
    assert status["rows_removed"]["events"] >= sum(truth[u] for u in DOOMED) + len(DOOMED) + 2 * len(DOOMED_ANON)
    assert status["rows_removed"]["quarantine"] == 5
    assert status["ids_deleted"] == 75  # 50 users and the 25 anonymous ids found through identify
    assert status["completed_at"] and status["duration_s"] < 180
    assert status["processors"]["per_user"]["state"] > 0  # the running processor applied it and acknowledged
    assert status["rows_removed"]["per_user_counts"] > 0
    for user in (DOOMED[1], DOOMED_ANON[1]):
        assert httpx.get(hw.url + f"/api/state/per_user_counts/{user}", headers=admin, timeout=10).status_code == 404
    assert httpx.get(hw.url + f"/api/state/per_user_counts/{KEEP[1]}", headers=admin, timeout=10).status_code == 200

    for user, n in sent.items():
        truth[user] += n
    others = sum(n for u, n in truth.items() if u in KEEP)
    hw.wait_rows("SELECT count(*) FROM events WHERE user_id LIKE 'keep%'", [[others]], timeout=60)
    per_user = dict(hw.sql("SELECT user_id, count(*) FROM events GROUP BY 1"))  # type: ignore[arg-type]
    assert per_user == {u: truth[u] for u in KEEP}  # everyone else's rows intact; nobody deleted is left
    assert hw.sql("SELECT count(*) FROM events WHERE anonymous_id LIKE 'an%q'") == [[0]]
    assert hw.sql("SELECT count(*) FROM events WHERE properties LIKE '%mail.example%'") == [[0]]
    assert hw.sql("SELECT count(*) FROM quarantine WHERE raw LIKE '%zx0%'") == [[0]]
    assert hw.sql("SELECT count(DISTINCT user_id) FROM events") == [[len(KEEP)]]

    ids = DOOMED + DOOMED_ANON + list(EMAIL.values())
    assert leaks(hw.data_dir, ids) == []
    catalog = open_catalog(make_settings(hw.data_dir))
    for name in ("events", "quarantine"):
        table = catalog.load_table(f"headwater.{name}")
        for snapshot in table.metadata.snapshots:  # time travel: no snapshot left brings them back
            rows = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow()
            column = rows.column("user_id" if name == "events" else "raw")
            assert not pc.any(pc.match_substring_regex(column, "zx0")).as_py()

    audit = httpx.get(hw.url + "/api/audit?action=privacy", headers=admin, timeout=30).json()
    actions = {row["action"] for row in audit["rows"]}
    assert {"privacy.deletion_requested", "privacy.deletion_completed"} <= actions
    assert not any(i in json.dumps(audit) for i in DOOMED)  # hashes only


def test_suppressed_ids_are_dropped_at_the_collector(hw: RunningHeadwater) -> None:
    admin = {"Authorization": f"Bearer {hw.keys['admin']}"}
    user = f"sup{os.getpid()}x"
    assert post_batch(hw, live_batch([user], random.Random(1))) == 1
    hw.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{user}'", [[1]])
    body = {"user_ids": [user], "suppress_days": 1}
    request = httpx.post(hw.url + "/api/privacy/deletions", json=body, headers=admin, timeout=30).json()
    deadline = time.monotonic() + 120
    while httpx.get(hw.url + request["url"], headers=admin, timeout=30).json()["state"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    # the deletion waited until every collector had the list: the first event after it is dropped
    other = f"other{os.getpid()}x"
    response = hw.post("/v1/batch", json.dumps({"batch": live_batch([user, other], random.Random(2))}),
                       hw.keys["write"])  # fmt: skip
    assert response.status_code == 200 and response.json()["accepted"] == 2
    assert response.json()["suppressed"] == 1
    hw.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{other}'", [[1]], timeout=30)
    assert hw.sql(f"SELECT count(*) FROM events WHERE user_id = '{user}'") == [[0]]
    metrics = httpx.get(hw.url + "/metrics", timeout=30).text
    assert "headwater_events_suppressed_total" in metrics


def test_deletion_requests_are_checked_and_admin_only(hw: RunningHeadwater) -> None:
    url = hw.url + "/api/privacy/deletions"
    admin = {"Authorization": f"Bearer {hw.keys['admin']}"}
    read = {"Authorization": f"Bearer {hw.keys['read']}"}
    assert httpx.post(url, json={"user_ids": ["x"]}, headers=read, timeout=10).status_code == 403
    assert httpx.post(url, json={"user_ids": ["x"]}, timeout=10).status_code == 401
    for body, field in (
        ({}, "user_ids"), ({"user_ids": "x"}, "user_ids"), ({"user_ids": [""]}, "user_ids[0]"),
        ({"anonymous_ids": [1]}, "anonymous_ids[0]"), ({"user_ids": ["a"], "emails": []}, "emails"),
        ({"user_ids": ["a"], "suppress_days": -1}, "suppress_days"),
        ({"user_ids": [f"u{i}" for i in range(10_001)]}, "at most 10000"),
        ({"user_ids": ["a"], "suppress_days": 1e12}, "suppress_days"),
    ):  # fmt: skip
        response = httpx.post(url, json=body, headers=admin, timeout=10)
        assert response.status_code == 400 and field in response.json()["error"], (body, response.text)
    assert httpx.get(url + "/nope", headers=admin, timeout=10).status_code == 404
    listed = httpx.get(url, headers=admin, timeout=10).json()["deletions"]
    assert listed and "user_ids" not in json.dumps(listed)


def delete(hw: RunningHeadwater, body: dict[str, Any]) -> dict[str, Any]:
    """A deletion through the API, waited for; its final status."""
    admin = {"Authorization": f"Bearer {hw.keys['admin']}"}
    request = httpx.post(hw.url + "/api/privacy/deletions", json=body, headers=admin, timeout=30).json()
    deadline = time.monotonic() + 120
    while (status := httpx.get(hw.url + request["url"], headers=admin, timeout=30).json())["state"] not in (
        "completed", "failed"
    ):  # fmt: skip
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["state"] == "completed", status
    return status


def test_links_repeated_deletions_numbers_and_escaped_ids(hw: RunningHeadwater) -> None:
    """An anonymous visitor who identified as an old id later aliased to a new one is found from the new id; a
    person deleted twice (new events in between, no suppression) loses the new rows too; a numeric user id is
    suppressed; a quarantined payload spelling the id with upper-case escapes goes."""
    tag = f"{os.getpid() % 1000:03d}"
    anon, old, new = f"lnkanon{tag}", f"lnkold{tag}", f"lnknew{tag}"
    batch = [
        {"type": "page", "name": "home", "anonymousId": anon},
        {"type": "identify", "userId": old, "anonymousId": anon},
        {"type": "alias", "previousId": old, "userId": new},
        {"type": "track", "event": "bought", "userId": new},
    ]
    assert post_batch(hw, batch) == 4
    escaped = json.dumps({"userId": "\u00c9" + new}).replace("\\u00c9", "\\u00C9")  # no event name: quarantined
    hw.post("/track", escaped, hw.keys["write"])
    theirs = f"anonymous_id = '{anon}' OR user_id IN ('{old}', '{new}')"
    hw.wait_rows(f"SELECT count(*) FROM events WHERE {theirs}", [[4]])
    status = delete(hw, {"user_ids": [new, "\u00c9" + new]})
    assert status["ids_deleted"] == 4 and status["rows_removed"]["events"] == 4  # new, old (alias), anon, É-id
    assert status["rows_removed"]["quarantine"] == 1
    assert hw.sql(f"SELECT count(*) FROM events WHERE anonymous_id = '{anon}' OR user_id IN ('{old}', '{new}')") == [
        [0]
    ]

    # the same person again: the writer still knows their key; a second deletion finds the new rows by it
    assert post_batch(hw, live_batch([new, new], random.Random(5))) == 2
    hw.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{new}'", [[2]])
    assert delete(hw, {"user_ids": [new]})["rows_removed"]["events"] == 2
    assert hw.sql(f"SELECT count(*) FROM events WHERE user_id = '{new}'") == [[0]]
    assert hw.sql(f"SELECT count(DISTINCT user_id) FROM events WHERE user_id = '{new}'") == [[0]]

    # a numeric user id is suppressed as the event model stores it ("4242...")
    number = 4242000 + os.getpid() % 1000
    assert post_batch(hw, [{"type": "track", "event": "n", "userId": number}]) == 1
    hw.wait_rows(f"SELECT count(*) FROM events WHERE user_id = '{number}'", [[1]])
    delete(hw, {"user_ids": [str(number)], "suppress_days": 1})
    reply = hw.post("/v1/batch", json.dumps({"batch": [{"type": "track", "event": "n", "userId": number}]}),
                    hw.keys["write"])  # fmt: skip
    assert reply.json()["suppressed"] == 1


def test_a_worker_killed_mid_deletion_resumes_and_completes(tmp_path: Path) -> None:
    """kill -9 the privacy worker three times while it rewrites the tables: a new worker takes the request over
    at once (the dead one was on this machine), completes it, and nothing else is lost or duplicated."""
    import signal
    import subprocess
    import sys

    from headwater.core.erasure import open_board
    from headwater.privacy.requests import DeletionStore

    truth = history(tmp_path)
    engine = open_board(make_settings(tmp_path).effective_catalog_uri)
    store = DeletionStore(engine)
    request = store.create(DOOMED, [], "test")
    env = child_env(tmp_path, privacy_expire_after_minutes=0, privacy_personal_properties='["email"]')
    args = [sys.executable, "-m", "headwater.cli.main", "privacy", "worker", "--data-dir", str(tmp_path)]
    kills = 0
    try:
        for delay in (0.0, 0.4, 0.8):
            worker = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while True:
                found = store.get(request.id)
                assert found is not None and time.monotonic() < deadline
                if found.progress.get("step") == "tables" or found.state == "completed":
                    break
                time.sleep(0.02)
            time.sleep(delay)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += found.state != "completed"
        worker = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (found := store.get(request.id)) is not None and found.state != "completed":
            assert found.state != "failed" and time.monotonic() < deadline, found.public()
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    finally:
        engine.dispose()
    assert kills >= 1  # at least one kill landed mid-deletion
    from headwater.query.engine import QueryEngine

    query = QueryEngine(make_settings(tmp_path))
    try:
        per_user = dict(query.execute("SELECT user_id, count(*) FROM events GROUP BY 1").rows)
    finally:
        query.close()
    assert per_user == {u: n for u, n in truth.items() if u in KEEP}
    assert leaks(tmp_path, DOOMED + list(EMAIL.values())) == []
