"""The README's processor example and its test run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_pipeline_and_its_test_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = README.read_text().split("## Real-time processors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the README shows a pipeline and its test"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "__init__.py").write_text("")
    (tmp_path / "rules" / "pages.py").write_text(blocks[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {}
    exec(compile(blocks[1], "README test", "exec"), namespace)
    test = namespace["test_counts_per_minute"]
    assert callable(test)
    test()
    sys.modules.pop("rules.pages", None)
    sys.modules.pop("rules", None)
