"""User enrichment functions named in the settings, applied to Arrow batches."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from headwater.core.errors import ConfigError
from headwater.core.settings import Settings
from headwater.enrich import EnrichmentError, enrichment_stages
from headwater.enrich.functions import FunctionStage, load_function
from tests.unit.test_enrich_common import events_table, run

MODULE = '''
import pyarrow as pa
import pyarrow.compute as pc


def price_band(events):
    """A column from properties (JSON), vectorised."""
    found = pc.extract_regex(events["properties"], r'"revenue":(?P<v>[0-9.]+)')
    revenue = pc.cast(pc.struct_field(found, "v"), pa.float64())
    band = pc.if_else(pc.greater_equal(revenue, 100), "high", "low")
    return events.append_column("price_band", band)


def is_mobile_chrome(events):
    """Uses a column an earlier stage added."""
    return events.append_column("mobile_chrome", pc.equal(events["browser"], "Chrome Mobile"))


def drops_rows(events):
    return events.slice(1)


def bad_name(events):
    return events.append_column("Price", pa.array([1] * events.num_rows))


def fixed_name(events):
    return events.append_column("country", pa.array(["FR"] * events.num_rows))


def nested(events):
    return events.append_column("tags", pa.array([["a"]] * events.num_rows))


def raises(events):
    raise KeyError("revenue")


def not_a_table(events):
    return {"x": 1}


def changes_existing(events):
    return events.set_column(0, "event_id", pa.array(["x"] * events.num_rows))


def no_values(events):
    return events.append_column("maybe", pa.nulls(events.num_rows))


def integers(events):
    return events.append_column("score", pa.array(range(events.num_rows), pa.int32()))


def floats(events):
    return events.append_column("score", pa.array([0.5] * events.num_rows))

VALUE = 3
'''


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_enrichments.py"
    path.write_text(textwrap.dedent(MODULE))
    return path


def rows() -> pa.Table:
    return events_table(
        [
            {"properties": '{"revenue":150.5}', "_user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) "
             "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36"},
            {"properties": '{"revenue":20}', "_user_agent": "curl/8.5.0"},
            {"properties": None},
        ]
    )  # fmt: skip


def test_functions_from_a_file_after_the_builtin_stages(module_file: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        enrich_sessions=False,
        enrich_functions=[f"{module_file}:price_band", f"{module_file}:is_mobile_chrome"],
    )
    stages = enrichment_stages(settings, None)
    assert stages[-1].name == "enrich_functions"
    out = run(stages, rows())
    assert out.column("price_band").to_pylist() == ["high", "low", None]
    assert out.column("mobile_chrome").to_pylist() == [True, False, None]
    assert out.column_names[-2:] == ["price_band", "mobile_chrome"]


def test_function_from_a_module() -> None:
    stage = FunctionStage(["pyarrow.compute:utf8_length"])  # returns an array, not a table
    with pytest.raises(EnrichmentError, match=r"pyarrow.compute:utf8_length: (raised|returned)"):
        run([stage], rows())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("drops_rows", "returned 2 rows for 3; it must keep every row"),
        ("bad_name", "column 'Price' is not a lower-case identifier"),
        ("fixed_name", "column 'country' is a fixed column"),
        ("nested", "column 'tags' is list<item: string>; use scalar types"),
        ("raises", "raised KeyError: 'revenue'"),
        ("not_a_table", "returned dict, not a pyarrow.Table"),
    ],
)
def test_errors_name_the_function_and_the_problem(module_file: Path, name: str, message: str) -> None:
    stage = FunctionStage([f"{module_file}:{name}"])
    with pytest.raises(EnrichmentError) as caught:
        run([stage], rows())
    assert f"enrichment function {module_file}:{name}: " in str(caught.value)
    assert message in str(caught.value)


def test_existing_columns_are_not_changed(module_file: Path) -> None:
    out = run([FunctionStage([f"{module_file}:changes_existing"])], rows())
    assert out.column("event_id").to_pylist() == ["e0", "e1", "e2"]


def test_column_types_stay_as_in_the_first_batch(module_file: Path) -> None:
    stage = FunctionStage([f"{module_file}:no_values", f"{module_file}:integers"])
    first = run([stage], rows())
    assert first.schema.field("maybe").type == pa.string()
    assert first.schema.field("score").type == pa.int32()
    stage.functions[1] = (f"{module_file}:floats", load_function(f"{module_file}:floats"))
    with pytest.raises(EnrichmentError, match="column 'score' was int32 and is now double"):
        run([stage], rows())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected 'path/to/file.py:name' or 'package.module:name'"),
        ("/nowhere/enrich.py:fn", "/nowhere/enrich.py does not exist"),
        ("headwater_no_such_module:fn", "import failed: ModuleNotFoundError"),
        ("{file}:missing", "has no 'missing'"),
        ("{file}:VALUE", "VALUE is not a function"),
    ],
)
def test_loading_errors_are_config_errors(module_file: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match="enrich_functions") as caught:
        load_function(spec.format(file=module_file))
    assert message in str(caught.value)
