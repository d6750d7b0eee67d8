"""Write tests/vectors/golden_vectors.json (encoding v1) and golden_vectors_v2.json (encoding
v2: field groups, salting, per-group hardening) with the reference encoder (never the
production one).

Run from the repository root: python -m tests.reference.make_vectors
The identities are made up; the secret is a fixed test secret, never used for real data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path

from tests.reference import reference_encoder as reference

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "vectors" / "golden_vectors.json"
OUT_V2 = ROOT / "tests" / "vectors" / "golden_vectors_v2.json"
# BLIP's randomness in the v2 vectors: SHA-256(seed || u64be(0)) || SHA-256(seed || u64be(1))
# || ..., restarted for each set and read in order, record by record.
RANDOM_SEED = b"bloomlink golden vectors v2 blip"
NORMALISER = "norm/v1"
SECRET = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
PROJECT = "golden-vectors"

# MoJ layout (forename, surname, date_of_birth DD/MM/YYYY, gender Male/Female, postcode) and the
# normalised values norm/v1 must give, in the default schema's field order.
IDENTITIES: list[tuple[dict[str, str], list[str | None]]] = [
    (
        {
            "forename": "Zoë",
            "surname": "O\u2019Brien",
            "date_of_birth": "03/12/1985",
            "gender": "Female",
            "postcode": "sw1a 1aa",
        },
        ["zoe", "obrien", "1985-12-03", "f", "SW1A 1AA"],
    ),
    (
        {
            "forename": "Zoe\u0308",
            "surname": "O'BRIEN",
            "date_of_birth": "12/03/1985",
            "gender": "Female",
            "postcode": "SW1A1AA",
        },
        ["zoe", "obrien", "1985-03-12", "f", "SW1A 1AA"],
    ),
    (
        {
            "forename": "Mary-Jane",
            "surname": "Smith\u2013Jones",
            "date_of_birth": "29/02/2000",
            "gender": "Female",
            "postcode": "M1 1AE",
        },
        ["mary jane", "smith jones", "2000-02-29", "f", "M1 1AE"],
    ),
    (
        {
            "forename": "Bill",
            "surname": "Nguyễn",
            "date_of_birth": "01/01/1970",
            "gender": "Male",
            "postcode": "",
        },
        ["william", "nguyen", "1970-01-01", "m", None],
    ),
    (
        {
            "forename": "Siobhán",
            "surname": "MacDonald",
            "date_of_birth": "15/07/1992",
            "gender": "Unknown",
            "postcode": "ec1a1bb",
        },
        ["siobhan", "macdonald", "1992-07-15", None, "EC1A 1BB"],
    ),
    (
        {
            "forename": "JOHN",
            "surname": "SMITH",
            "date_of_birth": "NULL",
            "gender": "Male",
            "postcode": "B33 8TH",
        },
        ["john", "smith", None, "m", "B33 8TH"],
    ),
    (
        {
            "forename": "Ólafur",
            "surname": "Þórsson",
            "date_of_birth": "30/06/1961",
            "gender": "Male",
            "postcode": "CR2 6XH",
        },
        ["olafur", "thorsson", "1961-06-30", "m", "CR2 6XH"],
    ),
    (
        {
            "forename": "Muhammad",
            "surname": "Al-Hassan",
            "date_of_birth": "07/11/2004",
            "gender": "Male",
            "postcode": "LS1 4AP",
        },
        ["muhammad", "al hassan", "2004-11-07", "m", "LS1 4AP"],
    ),
    (
        {
            "forename": "Øyvind",
            "surname": "Ærø",
            "date_of_birth": "10/10/1950",
            "gender": "Male",
            "postcode": "N/A",
        },
        ["oyvind", "aero", "1950-10-10", "m", None],
    ),
    (
        {
            "forename": "Дмитрий",
            "surname": "Иванов",
            "date_of_birth": "31/12/1999",
            "gender": "Male",
            "postcode": "E1 6AN",
        },
        ["дмитрий", "иванов", "1999-12-31", "m", "E1 6AN"],
    ),
    (
        {
            "forename": "Ng",
            "surname": "Li",
            "date_of_birth": "05/05/2010",
            "gender": "Female",
            "postcode": "W1A 0AX",
        },
        ["ng", "li", "2010-05-05", "f", "W1A 0AX"],
    ),
    (
        {"forename": "", "surname": "Wright", "date_of_birth": "", "gender": "", "postcode": ""},
        [None, "wright", None, None, None],
    ),
]


# The shipped default (schema v2 since 2026-12-05) and the single-CLK default before it (v1).
SHIPPED_DEFAULT = ROOT / "protocol" / "data" / "default_schema.toml"
V1_DEFAULT = ROOT / "protocol" / "data" / "single_clk_schema.toml"


def schema_documents() -> dict[str, dict]:
    default = tomllib.loads(V1_DEFAULT.read_text("utf-8"))
    blake_fold = copy.deepcopy(default)
    blake_fold.update(name="golden-blake2b-xor-fold", hashing="blake2b", hardening="xor-fold")
    balanced = copy.deepcopy(default)
    balanced.update(name="golden-balance-name-group", hardening="balance", clk_bits=512)
    for field in balanced["fields"]:
        if field["name"] in ("forename", "surname"):
            field["key_group"] = "names"
            field["tokens"][0] = {
                "method": "ngram",
                "size": 2,
                "positional": False,
                "bits_per_token": 3,
            }
    return {"v1-default": default, "blake2b-xor-fold": blake_fold, "balance-name-group": balanced}


def random_stream(seed: bytes):  # type: ignore[no-untyped-def]
    """BLIP's randomness for the vectors: SHA-256 in counter mode, consumed in order."""
    buffer = bytearray()
    counter = [0]

    def random_bytes(count: int) -> bytes:
        while len(buffer) < count:
            buffer.extend(hashlib.sha256(seed + counter[0].to_bytes(8, "big")).digest())
            counter[0] += 1
        out = bytes(buffer[:count])
        del buffer[:count]
        return out

    return random_bytes


def grouped_documents() -> dict[str, dict]:
    """Version 2 schemas: the default's fields in three groups (names; date of birth with sex
    salted by it; postcode), under each hardening, and the shipped default."""
    default = tomllib.loads(V1_DEFAULT.read_text("utf-8"))
    fields = copy.deepcopy(default["fields"])
    groups_of = {
        "forename": "name",
        "surname": "name",
        "date_of_birth": "birth",
        "sex": "birth",
        "postcode": "postcode",
    }
    for field in fields:
        field["group"] = groups_of[field["name"]]
        if field["name"] == "sex":
            field["tokens"][0]["salt"] = "date_of_birth"

    def document(name: str, hashing: str, hardening: dict[str, object]) -> dict:
        return {
            "schema_version": 2,
            "name": name,
            "hashing": hashing,
            "groups": [
                {"name": "name", "clk_bits": 512, "hardening": hardening["name"]},
                {"name": "birth", "clk_bits": 512, "hardening": hardening["birth"]},
                {"name": "postcode", "clk_bits": 256, "hardening": hardening["postcode"]},
            ],
            "fields": copy.deepcopy(fields),
        }

    return {
        "default": tomllib.loads(SHIPPED_DEFAULT.read_text("utf-8")),
        "grouped-salted-diffusion": document(
            "golden-grouped-diffusion",
            "hmac-sha256",
            {
                "name": {"method": "diffusion", "width": 3},
                "birth": {"method": "diffusion", "width": 4, "output_bits": 1024},
                "postcode": "none",
            },
        ),
        "grouped-blip": document(
            "golden-grouped-blip",
            "blake2b",
            {
                "name": {"method": "blip", "flip_probability": 0.05},
                "birth": {"method": "blip", "epsilon": 3.0},
                "postcode": [
                    {"method": "diffusion", "width": 3},
                    {"method": "blip", "flip_probability": 0.02},
                ],
            },
        ),
        "grouped-balance-xor-fold-rule90": document(
            "golden-grouped-keyless",
            "blake2b",
            {"name": "balance", "birth": "xor-fold", "postcode": ["rule90", "balance"]},
        ),
    }


def main() -> None:
    nickname_digest = hashlib.sha256(
        (ROOT / "protocol" / "data" / "nicknames.csv").read_bytes()
    ).hexdigest()
    sets = []
    for label, document in schema_documents().items():
        canonical = reference.canonical_schema(
            document, normaliser=NORMALISER, nickname_table_sha256=nickname_digest
        )
        records = [
            {
                "raw_moj": raw,
                "normalised": normalised,
                "clk_hex": reference.encode(canonical, SECRET, PROJECT, normalised).hex(),
            }
            for raw, normalised in IDENTITIES
        ]
        sets.append(
            {
                "label": label,
                "schema_document": document,
                "canonical_schema": canonical,
                "schema_fingerprint_hex": reference.fingerprint(canonical).hex(),
                "kcv_hex": reference.key_check_value(SECRET, PROJECT).hex(),
                "records": records,
            }
        )
    payload = {
        "provenance": "made by tests/reference/make_vectors.py with tests/reference/reference_encoder.py "
        "(standard-library hmac/hashlib only); see tests/vectors/README.md",
        "secret_hex": SECRET.hex(),
        "project_id": PROJECT,
        "normaliser": NORMALISER,
        "sets": sets,
    }
    OUT.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({sum(len(s['records']) for s in sets)} vectors)")
    grouped_sets = []
    for label, document in grouped_documents().items():
        canonical = reference.canonical_schema_v2(
            document, normaliser=NORMALISER, nickname_table_sha256=nickname_digest
        )
        stream = random_stream(RANDOM_SEED)
        records = [
            {
                "normalised": normalised,
                "encoding_hex": reference.encode_grouped(
                    canonical, SECRET, PROJECT, normalised, stream
                ).hex(),
            }
            for _, normalised in IDENTITIES
        ]
        grouped_sets.append(
            {
                "label": label,
                "schema_document": document,
                "canonical_schema": canonical,
                "schema_fingerprint_hex": reference.fingerprint(canonical).hex(),
                "kcv_hex": reference.key_check_value(SECRET, PROJECT).hex(),
                "records": records,
            }
        )
    payload_v2 = {
        "provenance": "made by tests/reference/make_vectors.py with tests/reference/reference_encoder.py "
        "(standard-library hmac/hashlib only); see tests/vectors/README.md",
        "secret_hex": SECRET.hex(),
        "project_id": PROJECT,
        "normaliser": NORMALISER,
        "blip_random_stream": "SHA-256(seed || u64be(counter)) blocks, counter from 0, restarted "
        "per set, read in record order (each record: groups in order, 2 bytes per bit per BLIP "
        "step)",
        "blip_random_seed_hex": RANDOM_SEED.hex(),
        "sets": grouped_sets,
    }
    OUT_V2.write_text(json.dumps(payload_v2, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT_V2} ({sum(len(s['records']) for s in grouped_sets)} vectors)")


if __name__ == "__main__":
    main()
