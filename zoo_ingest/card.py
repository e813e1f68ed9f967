"""The zoo card's file: `_zoo.json` in the table's folder, written last (no card, no complete table).

The leading underscore is the convention generic Parquet readers (pyarrow.dataset, pandas, polars,
duckdb globs, Spark) use to skip a file, as they skip `_rejects/`, `_manifest/` and `_SUCCESS`. Tables
written before the rename hold `zoo.json`; `read_card` opens both. A folder holding both that
disagree is an error naming both files: which one describes the shards cannot be told.
"""

from __future__ import annotations

import json

from zoo_ingest.storage import Location

CARD = "_zoo.json"
LEGACY_CARD = "zoo.json"  # tables written before the card was renamed
CARD_NAMES = (CARD, LEGACY_CARD)


class CardError(ValueError):
    """The card of a table folder cannot be read or is ambiguous; the message names the file(s)."""


def _load(loc: Location, name: str) -> dict | None:
    try:
        data = loc.read_bytes(name)
    except FileNotFoundError:
        return None
    try:
        card = json.loads(data)
    except ValueError as exc:
        raise CardError(f"{loc.url_of(name)}: not a JSON zoo card ({exc})") from None
    if not isinstance(card, dict):
        raise CardError(f"{loc.url_of(name)}: not a JSON object")
    return card


def read_card(loc: Location) -> tuple[dict, str] | None:
    """(card, file name it came from), or None when the folder holds neither `_zoo.json` nor `zoo.json`."""
    card, legacy = _load(loc, CARD), _load(loc, LEGACY_CARD)
    if card is not None and legacy is not None and card != legacy:
        raise CardError(
            f"{loc.url_of(CARD)} and {loc.url_of(LEGACY_CARD)} disagree (fingerprints "
            f"{card.get('fingerprint')!r} and {legacy.get('fingerprint')!r}): the folder holds two zoo cards; "
            f"delete the one that does not describe the shards, or re-ingest with --overwrite"
        )
    if card is not None:
        return card, CARD
    if legacy is not None:
        return legacy, LEGACY_CARD
    return None


def write_card(loc: Location, card: dict) -> None:
    loc.write_bytes(CARD, json.dumps(card, indent=1).encode())


def delete_cards(loc: Location) -> None:
    """Both names: from here on the folder holds no complete table."""
    loc.delete(list(CARD_NAMES))
