"""The zoo card's name: `_zoo.json`, written last; tables written with `zoo.json` still open."""

from __future__ import annotations

import json

import pytest

from zoo_ingest import TableError, ingest, open_table


@pytest.fixture
def table(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=12)
    ingest(str(tmp_path / "zoo"), str(tmp_path / "table"), "smallcnnzoo", use_ray=False, progress=False)
    return tmp_path / "table"


def test_card_is_underscore_prefixed_and_written_last(table):
    assert (table / "_zoo.json").exists() and not (table / "zoo.json").exists()
    card = json.loads((table / "_zoo.json").read_text())
    newest = max(p.stat().st_mtime_ns for p in table.rglob("*.parquet"))
    assert (table / "_zoo.json").stat().st_mtime_ns >= newest
    assert open_table(str(table)).card == card


def test_table_written_with_the_old_name_still_opens(table, tmp_path):
    (table / "_zoo.json").rename(table / "zoo.json")
    old = open_table(str(table))
    assert old.card["rows"] == 12 and old.num_rows() == 12
    # a rerun of the same ingest sees the old table as complete and leaves it as it is
    again = ingest(str(tmp_path / "zoo"), str(table), "smallcnnzoo", use_ray=False, progress=False)
    assert again.already_complete and (table / "zoo.json").exists()


def test_both_cards_agreeing_open(table):
    (table / "zoo.json").write_bytes((table / "_zoo.json").read_bytes())
    assert open_table(str(table)).card["rows"] == 12


def test_both_cards_disagreeing_name_both_files(table):
    card = json.loads((table / "_zoo.json").read_text())
    card["fingerprint"] = "0" * 32
    (table / "zoo.json").write_text(json.dumps(card))
    with pytest.raises(TableError) as err:
        open_table(str(table))
    assert str(table / "_zoo.json") in str(err.value) and str(table / "zoo.json") in str(err.value)
    assert "disagree" in str(err.value)


def test_overwrite_removes_both_cards_first(table, tmp_path):
    (table / "zoo.json").write_bytes((table / "_zoo.json").read_bytes())
    ingest(
        str(tmp_path / "zoo"),
        str(table),
        "smallcnnzoo",
        split="50/25/25",
        overwrite=True,
        use_ray=False,
        progress=False,
    )
    assert not (table / "zoo.json").exists()
    assert open_table(str(table)).card["settings"]["split"]["fractions"] == [0.5, 0.25, 0.25]
