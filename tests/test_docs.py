"""What the README and the Makefile say the default base model is, held to the code (as the settings table is)."""

import re

import pytest

from classifier.models import DEFAULT_BASE_MODEL, DISPLAY_NAMES

from .conftest import REPO

STATEMENT = re.compile(r"the default base model \(([^,)]+)")


@pytest.mark.parametrize("document", ["README.md", "Makefile"])
def test_the_documented_default_base_model_is_the_codes(document):
    stated = STATEMENT.findall((REPO / document).read_text(encoding="utf-8").replace("\n# ", " "))
    assert stated, f"{document} no longer says which base model is the default"
    assert set(stated) == {DISPLAY_NAMES[DEFAULT_BASE_MODEL]}


def test_a_wrong_statement_is_caught():
    assert STATEMENT.findall("uses the default base model (Gemma 3 270M, ...)") == ["Gemma 3 270M"]
