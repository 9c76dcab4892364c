"""``lazyre``: patterns compiled on first use, and PyYAML imported without its reader's
import-time regex (checked in a fresh interpreter: this one has imported yaml already)."""

from __future__ import annotations

import json
import subprocess
import sys

from sky_mini import lazyre

PROBE = r"""
import json, re, sys
real = re.compile
from sky_mini.lazyre import import_yaml
yaml = import_yaml()
import yaml.reader
pattern = yaml.reader.Reader.NON_PRINTABLE
lazy_before = type(pattern).__name__
try:
    yaml.load("a: \x01", Loader=yaml.SafeLoader)  # the pure-Python reader: the check runs
    refused = False
except yaml.reader.ReaderError:
    refused = True
print(json.dumps({
    "lazy": lazy_before,
    "restored": re.compile is real,
    "refused": refused,
    "same_source": pattern.pattern == pattern.source,
    "c_loader": yaml.load("a: [1, 2]", Loader=yaml.CSafeLoader),
}))
"""


def test_pyyaml_is_imported_without_compiling_its_reader_pattern_and_still_checks() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out)
    assert seen == {
        "lazy": "LazyPattern",  # not compiled at import
        "restored": True,  # re.compile is the real one again
        "refused": True,  # and the check still refuses a control character
        "same_source": True,
        "c_loader": {"a": [1, 2]},
    }


def test_a_lazy_pattern_compiles_once_on_first_use() -> None:
    pattern = lazyre.lazy(r"a(b+)")
    assert pattern.compiled is None  # type: ignore[attr-defined]
    match = pattern.fullmatch("abb")
    assert match is not None and match.group(1) == "bb"
    assert pattern.compiled is not None  # type: ignore[attr-defined]
