"""The README's configuration reference must name every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from rta_service.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    assert documented == set(Settings.model_fields), (
        f"undocumented: {sorted(set(Settings.model_fields) - documented)}; "
        f"not settings: {sorted(documented - set(Settings.model_fields))}")
