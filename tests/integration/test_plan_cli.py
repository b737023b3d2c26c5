"""`headwater plan` run as a user (and their CI) runs it: `check` on good and bad plans and samples, with no data
directory at all (exit codes, messages naming file, event, JSON path and rule; `--json`), and push / diff / list
/ show / activate against a data directory, with the version rules and the audit trail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

EXAMPLE = ROOT / "examples" / "plan"


def hw(*args: str, cwd: Path, check: bool | int = True) -> subprocess.CompletedProcess[str]:
    """`headwater ARGS` in `cwd` with no HEADWATER_* variables (as in a user's CI); `check`: the exit code
    expected (True: 0)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["COLUMNS"] = "200"
    result = subprocess.run([sys.executable, "-m", "headwater.cli.main", *args], capture_output=True, text=True,
                            env=env, cwd=cwd, check=False, timeout=300)  # fmt: skip
    expected = 0 if check is True else check
    if check is not False:
        assert result.returncode == expected, result.stdout + result.stderr
    return result


def copy_plan(tmp_path: Path, name: str = "plan") -> Path:
    target = tmp_path / name
    shutil.copytree(EXAMPLE, target)
    return target


def edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def test_check_passes_on_the_example_without_any_data_directory(tmp_path: Path) -> None:
    done = hw("plan", "check", str(EXAMPLE), cwd=tmp_path)
    assert "shop@1-0-0: 4 events" in done.stdout and "ok: 0 error(s), 0 warning(s)" in done.stdout
    assert "not compared with an active version" in done.stdout
    assert not (tmp_path / ".headwater").exists()  # nothing created in the user's checkout
    report = json.loads(hw("plan", "check", str(EXAMPLE), "--json", cwd=tmp_path).stdout)
    assert (report["ok"], report["errors"], report["plan"], report["events"]) == (True, 0, "shop@1-0-0", 4)


def test_check_fails_on_a_bad_plan_naming_file_event_path_and_rule(tmp_path: Path) -> None:
    plan = copy_plan(tmp_path)
    edit(plan / "events" / "order_completed.json", lambda d: d["properties"]["revenue"].update(type="numbr"))
    edit(plan / "events" / "signed_up.json", lambda d: d.update(title="signup"))
    edit(plan / "events" / "product_added.json",
         lambda d: d["properties"].update(price={"$ref": "definitions.json#/$defs/prize"}))  # fmt: skip
    edit(plan / "events" / "product_viewed.json",
         lambda d: d["properties"]["name"].update({"x-personal": "encrypt"}))  # fmt: skip
    done = hw("plan", "check", str(plan), cwd=tmp_path, check=1)
    lines = done.stdout.splitlines()
    expected = [
        'error: events/order_completed.json: event "Order Completed": $.properties.revenue.type: schema: ',
        'error: events/product_added.json: event "Product Added": $.properties.price.$ref: $ref: ',
        'error: events/signed_up.json: event "signup": $.title: event-naming: ',
        'error: events/product_viewed.json: event "Product Viewed": $.properties.name.x-personal: x-personal: ',
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, done.stdout)
    assert "failed: 4 error(s)" in done.stdout
    report = json.loads(hw("plan", "check", str(plan), "--json", cwd=tmp_path, check=1).stdout)
    assert report["ok"] is False and report["errors"] == 4
    found = {(p["file"], p["event"], p["path"], p["rule"]) for p in report["problems"]}
    assert ("events/order_completed.json", "Order Completed", "$.properties.revenue.type", "schema") in found
    not_a_plan = hw("plan", "check", str(tmp_path / "nowhere"), cwd=tmp_path, check=1)
    assert "not a directory" in not_a_plan.stdout


def test_warnings_pass_unless_strict(tmp_path: Path) -> None:
    plan = copy_plan(tmp_path)
    edit(plan / "definitions.json", lambda d: d["$defs"].update(spare={"type": "string"}))
    done = hw("plan", "check", str(plan), cwd=tmp_path)
    assert "warning: definitions.json: $.$defs.spare: unused-definition:" in done.stdout
    assert "ok: 0 error(s), 1 warning(s)" in done.stdout
    hw("plan", "check", str(plan), "--strict", cwd=tmp_path, check=1)


def test_check_validates_sample_files(tmp_path: Path) -> None:
    samples = tmp_path / "samples.ndjson"
    good = [
        {"event": "Order Completed", "userId": "u1", "order_id": "o1", "revenue": 10.5, "currency": "EUR"},
        {"type": "track", "event": "Signed Up", "userId": "u2", "properties": {"method": "google"}},
        {"type": "page", "name": "Home", "anonymousId": "a1", "properties": {"anything": 1}},  # not a plan event
    ]
    samples.write_text("\n".join(json.dumps(e) for e in good) + "\n")
    done = hw("plan", "check", str(EXAMPLE), "--against", str(samples), cwd=tmp_path)
    assert "samples.ndjson: 3 events, 0 violation(s)" in done.stdout
    bad = [
        {"type": "track", "event": "Order Completed", "userId": "u1",
         "properties": {"order_id": "o1", "revenue": -3, "currency": "EUR", "email": "not-an-address"}},
        {"event": "Product Added", "userId": "u1", "product_id": "ABC-123"},
        {"event": "Cart Abandoned", "userId": "u1"},
    ]  # fmt: skip
    samples.write_text("\n".join(json.dumps(e) for e in bad) + "\n{oops\n")
    done = hw("plan", "check", str(EXAMPLE), "--against", str(samples), cwd=tmp_path, check=1)
    name = str(samples)
    for line in [
        f'error: {name}:1: event "Order Completed": $.properties.revenue: minimum: expected',
        f'error: {name}:1: event "Order Completed": $.properties.email: format: expected email',
        f'error: {name}:2: event "Product Added": $.properties.quantity: required:',
        f'error: {name}:3: event "Cart Abandoned": $.event: unplanned:',
        f"error: {name}:4: sample: not valid JSON",
    ]:
        assert line in done.stdout, (line, done.stdout)
    report = json.loads(hw("plan", "check", str(EXAMPLE), "--against", name, "--json", cwd=tmp_path, check=1).stdout)
    assert report["samples"] == [{"file": name, "events": 3, "violations": 4}]


def test_the_examples_samples_pass_and_fail_as_the_readme_says(tmp_path: Path) -> None:
    samples = EXAMPLE / "samples"
    hw("plan", "check", str(EXAMPLE), "--against", str(samples / "valid.ndjson"), cwd=tmp_path)
    done = hw("plan", "check", str(EXAMPLE), "--against", str(samples / "invalid.ndjson"), "--json", cwd=tmp_path,
              check=1)  # fmt: skip
    found = {(p["file"].rsplit("/", 1)[-1], p["path"], p["rule"]) for p in json.loads(done.stdout)["problems"]}
    assert found == {
        ("invalid.ndjson:1", "$.properties.product_id", "pattern"),
        ("invalid.ndjson:1", "$.properties.price", "minimum"),
        ("invalid.ndjson:2", "$.properties.quantity", "type"),
        ("invalid.ndjson:3", "$.properties.currency", "enum"),
        ("invalid.ndjson:3", "$.properties.email", "format"),
        ("invalid.ndjson:4", "$.event", "unplanned"),
    }


def test_check_against_sql_reads_the_lake(tmp_path: Path) -> None:
    data = tmp_path / "data"
    events = tmp_path / "events.ndjson"
    rows = [{"event": "Signed Up", "userId": f"u{i}", "method": "email" if i % 2 else "fax"} for i in range(6)]
    events.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    hw("import", str(events), "--data-dir", str(data), cwd=tmp_path)
    sql = "SELECT event, properties FROM events ORDER BY user_id"
    done = hw("plan", "check", str(EXAMPLE), "--against-sql", sql, "--data-dir", str(data), cwd=tmp_path, check=1)
    assert done.stdout.count('event "Signed Up": $.properties.method: enum: expected one of') == 3
    assert "samples from SQL: 6 events, 3 violation(s)" in done.stdout
    no_lake = hw("plan", "check", str(EXAMPLE), "--against-sql", sql, cwd=tmp_path, check=1)
    assert "--against-sql needs the lake" in no_lake.stdout


def test_push_diff_list_show_activate_against_a_data_directory(tmp_path: Path) -> None:
    d = ["--data-dir", str(tmp_path / "data")]
    pushed = hw("plan", "push", str(EXAMPLE), "--activate", "*", *d, cwd=tmp_path)
    assert "shop@1-0-0: pushed, active for *" in pushed.stdout
    assert "already pushed" in hw("plan", "push", str(EXAMPLE), *d, cwd=tmp_path).stdout

    v2 = copy_plan(tmp_path, "v2")
    edit(v2 / "events" / "order_completed.json", lambda doc: doc["properties"].pop("email"))
    edit(v2 / "events" / "signed_up.json",
         lambda doc: doc["properties"].update(source={"type": "string", "description": "Campaign."}))  # fmt: skip
    same_version = hw("plan", "check", str(v2), *d, cwd=tmp_path, check=1)
    assert "use version 2-0-0 or later" in same_version.stdout
    assert hw("plan", "push", str(v2), *d, cwd=tmp_path, check=1).returncode == 1
    edit(v2 / "plan.json", lambda doc: doc.update(version="1-1-0"))
    minor = hw("plan", "check", str(v2), *d, cwd=tmp_path, check=1)
    assert (
        "error: plan.json: $.version: version: shop 1-1-0 has a breaking (MODEL) change from 1-0-0: "
        'event "Order Completed" $.properties.email: property removed; use version 2-0-0 or later'
    ) in minor.stdout
    assert "compared with shop@1-0-0 (active for *): 2 change(s)" in minor.stdout
    edit(v2 / "plan.json", lambda doc: doc.update(version="2-0-0"))
    hw("plan", "check", str(v2), *d, cwd=tmp_path)
    hw("plan", "push", str(v2), *d, cwd=tmp_path)

    diff = hw("plan", "diff", "1-0-0", "2-0-0", *d, cwd=tmp_path).stdout
    assert 'MODEL    event "Order Completed" $.properties.email: property removed' in diff
    assert 'ADDITION event "Signed Up" $.properties.source: optional property added' in diff
    assert "highest class: MODEL; needs version 2-0-0 or later" in diff
    as_json = json.loads(hw("plan", "diff", "shop@1-0-0", str(v2), "--json", *d, cwd=tmp_path).stdout)
    assert (as_json["level"], as_json["version_ok"], len(as_json["changes"])) == ("MODEL", True, 2)
    dirs = json.loads(hw("plan", "diff", str(EXAMPLE), str(v2), "--json", cwd=tmp_path).stdout)  # no data dir
    assert dirs["changes"] == as_json["changes"]

    hw("plan", "activate", "shop@2-0-0", "--source", "web", *d, cwd=tmp_path)
    listing = json.loads(hw("plan", "list", "--json", *d, cwd=tmp_path).stdout)
    assert [(v["version"], v["active_for"]) for v in listing["versions"]] == [("2-0-0", ["web"]), ("1-0-0", ["*"])]
    assert listing["active"]["web"]["version"] == "2-0-0"
    shown = hw("plan", "show", *d, cwd=tmp_path).stdout
    assert "shop@1-0-0 (active for *)" in shown and "products[].product_id" in shown and "hash" in shown
    shown_v2 = json.loads(hw("plan", "show", "shop@2-0-0", "--json", *d, cwd=tmp_path).stdout)
    order = next(e for e in shown_v2["events"] if e["name"] == "Order Completed")
    assert shown_v2["active_for"] == ["web"] and "email" not in [p["path"] for p in order["properties"]]
    missing = hw("plan", "activate", "shop@7-0-0", *d, cwd=tmp_path, check=1)
    assert "no plan shop@7-0-0" in missing.stderr
    assert "no plan active for web any more" in hw("plan", "deactivate", "--source", "web", *d, cwd=tmp_path).stdout

    audit = hw("audit", "--action", "plan", "--format", "ndjson", *d, cwd=tmp_path).stdout.splitlines()
    changes = [(r["details"]["change"], r["target"], r["actor_kind"]) for r in map(json.loads, reversed(audit))]
    assert changes == [
        ("pushed", "shop@1-0-0", "cli"), ("activated", "shop@1-0-0", "cli"), ("pushed", "shop@2-0-0", "cli"),
        ("activated", "shop@2-0-0", "cli"), ("deactivated", "shop@2-0-0", "cli"),
    ]  # fmt: skip


@pytest.mark.parametrize("command", [["list"], ["show"], ["diff", "1-0-0", "2-0-0"]])
def test_reading_commands_explain_an_empty_store(tmp_path: Path, command: list[str]) -> None:
    done = hw("plan", *command, "--data-dir", str(tmp_path / "data"), cwd=tmp_path, check=False)
    text = done.stdout + done.stderr
    assert "Traceback" not in text
    if command == ["list"]:
        assert done.returncode == 0 and "no plan pushed yet" in text
    else:
        assert done.returncode == 1 and "error:" in text
