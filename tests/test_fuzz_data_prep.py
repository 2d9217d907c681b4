"""Property-based input fuzzing of `data_prep.prepare`, one property per reader format.

Real MMAR records (../shared/data/mmar/MMAR-meta.jsonl; those tests skip when it is absent) and
records of the other readers' formats are mutated by hypothesis: wrong types, missing and extra
fields, empty and huge strings, unicode (lone surrogates included), NaN and infinities,
duplicated ids, audio paths that escape the audio root, non-object lines and truncated files.

The property, whatever the mutation: `prepare` either
- writes a dataset in which every item read is accounted for (read == samples + skipped, per
  reason too), each skip names its reason (`SomeError: ...`), no id is written twice, and every
  item with an id is either a sample or a skip; or
- stops with a `DataError` that names the file (and line) for a file-level problem (malformed
  JSON or CSV, a duplicate id);
and never raises anything else. Whether a given odd item is kept or skipped is not pinned here
(that is the validation rules' business, tested in test_data_readers.py).

Examples are derandomized (the same in every CI run) and few; `ART_FUZZ_PROFILE=explore` runs
many random ones: `ART_FUZZ_PROFILE=explore pytest tests/test_fuzz_data_prep.py`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SR = 16000
REASON = re.compile(r"^[A-Z][A-Za-z]*Error: \S")

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("ART_FUZZ_PROFILE", "ci"))

# -- values a field can be mutated into ----------------------------------------------------------

ESCAPES = ["../../etc/passwd", "/etc/passwd", "audio/../../outside.wav", "..", "audio/../../../x.wav"]
HUGE = "ä" * 50_000

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "\n\t", HUGE, "\x00", "\ud800", "🎵音 ü", "NaN", "null"]),
    st.text(max_size=30),
)
values = st.one_of(
    scalars,
    st.sampled_from(ESCAPES),
    st.lists(scalars, max_size=12),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)
cells = st.one_of(  # CSV cells are strings
    st.sampled_from(["", " ", HUGE, '"', 'a,"b"\nc', "\x00", "🎵音 ü", "nan", *ESCAPES]),
    st.text(max_size=30),
)


# -- fixtures: an audio root with one good clip per base record -----------------------------------


def _tone() -> np.ndarray:
    t = np.arange(SR // 10) / SR
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-audio")
    (root / "audio").mkdir()
    sf.write(root / "audio" / "good.wav", _tone(), SR, subtype="PCM_16")
    return root


def _link_clip(root: Path, rel: str) -> None:
    """Give a real record's audio_path a (hard-linked) short clip under the root."""
    target = root / rel
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.hardlink_to(root / "audio" / "good.wav")


@pytest.fixture(scope="module")
def real_mmar(mmar_meta, audio_root) -> list[dict]:
    """The first 40 real MMAR records, each with a clip at its own audio_path."""
    records = []
    with open(mmar_meta, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
            if len(records) == 40:
                break
    for rec in records:
        _link_clip(audio_root, rec["audio_path"])
    return records


def _synthetic_mmar(n: int = 12) -> list[dict]:
    """MMAR-schema records for the other formats (and when the real file is absent)."""
    return [
        {
            "id": f"vid{i // 2}_00-00-0{i % 2}_00-00-1{i % 2}",
            "audio_path": "audio/good.wav",
            "question": f"Which of these is heard in clip {i}?",
            "choices": ["a dog", "a cat", f"a bird {i}", "silence"],
            "answer": "a cat",
            "modality": ["sound", "music", "speech"][i % 3],
            "category": ["Signal Layer", "Perception Layer", "Semantic Layer"][i % 3],
            "sub-category": "Counting",
            "thinking": "There is a meow.",
            "language": "en",
        }
        for i in range(n)
    ]


def _as_mmau(rec: dict) -> dict:
    return {
        "id": rec["id"], "audio_id": rec["audio_path"], "question": rec["question"],
        "choices": rec["choices"], "answer": rec["answer"], "task": rec["modality"],
        "category": rec["category"], "sub-category": rec.get("sub-category"), "difficulty": "easy",
    }  # fmt: skip


def _as_canonical(rec: dict) -> dict:
    return {
        "id": rec["id"], "audio_path": rec["audio_path"], "question": rec["question"],
        "choices": rec["choices"], "answer": rec["answer"], "modality": rec["modality"],
        "category": rec["category"], "sub_category": rec.get("sub-category"),
        "thinking": rec.get("thinking"), "tags": ["fuzz"],
    }  # fmt: skip


def _as_muchomusic(rec: dict) -> dict:
    wrong = [c for c in rec["choices"] if c != rec["answer"]] + ["", "", ""]
    return {
        "question_id": rec["id"], "question": rec["question"], "correct_answer": rec["answer"],
        "distractor_1_answer": wrong[0], "distractor_2_answer": wrong[1],
        "distractor_3_answer": wrong[2], "dataset": "fuzzset", "dataset_identifier": rec["id"],
        "audio_path": rec["audio_path"], "genre": "rock",
    }  # fmt: skip


# -- mutations ------------------------------------------------------------------------------------


@st.composite
def mutated_items(draw, base: list[dict], value_strategy) -> list:
    """A few base records, each possibly mutated field by field; ids may be duplicated."""
    picks = draw(st.lists(st.integers(0, len(base) - 1), min_size=1, max_size=6))
    items: list = []
    for i in picks:
        item = dict(base[i])
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from([*item, "extra_field", "🎵"]))
            if draw(st.booleans()) and key in item:
                del item[key]
            else:
                item[key] = draw(value_strategy)
        items.append(item)
    id_key = next((k for k in ("id", "question_id") if k in base[0]), None)
    if len(items) > 1 and draw(st.booleans()):  # two items share an id (a valid one, or an odd one)
        a, b = draw(st.integers(0, len(items) - 1)), draw(st.integers(0, len(items) - 1))
        shared = draw(st.one_of(st.just(items[a].get(id_key)), value_strategy))
        items[a], items[b] = {**items[a], id_key: shared}, {**items[b], id_key: shared}
    if value_strategy is values and draw(st.integers(0, 5)) == 0:  # a stray non-object line
        items.insert(draw(st.integers(0, len(items))), draw(values))
    return items


def _json_text(items: list, as_list: bool, ascii_only: bool) -> str:
    # Python's json (and so a user's exporter) writes NaN/Infinity, which our reader reads back;
    # with ascii_only a lone surrogate becomes a valid "\\ud800" escape instead of invalid UTF-8.
    if as_list:
        return json.dumps(items, ensure_ascii=ascii_only, indent=1)
    return "".join(json.dumps(it, ensure_ascii=ascii_only) + "\n" for it in items)


def _csv_text(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_json(items: list, data, work: Path) -> Path:
    """The items as JSONL or a JSON list, ASCII-escaped or not, possibly truncated."""
    as_list = data.draw(st.booleans(), label="json list")
    text = _json_text(items, as_list, data.draw(st.booleans(), label="ascii only"))
    src = work / ("meta.json" if as_list else "meta.jsonl")
    _write(src, text, data.draw(st.one_of(st.none(), st.integers(0, 10**6)), label="truncate at byte"))
    return src


def _write(path: Path, text: str, cut: int | None) -> None:
    data = text.encode("utf-8", errors="surrogatepass")  # a lone surrogate stays in the file
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path.write_bytes(data)


# -- the property ---------------------------------------------------------------------------------


def _argv(config: str, src: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "data" / config), "--source.path", str(src),
        "--audio_root", str(root), "--out_dir", str(out), *extra,
    ]  # fmt: skip


def _count_items(path: Path, reader: str) -> int:
    """How many items the file holds, counted independently of data_prep's readers."""
    text = path.read_bytes().decode("utf-8", errors="surrogatepass")
    if reader == "muchomusic":
        return sum(1 for _ in csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    if text.lstrip().startswith("["):
        return len(json.loads(text))
    return sum(1 for line in text.splitlines() if line.strip())


def _raw_ids(path: Path, reader: str) -> set[str]:
    """The ids the file gives (what the manifest must account for), as data_prep spells them."""
    key = "question_id" if reader == "muchomusic" else "id"
    text = path.read_bytes().decode("utf-8", errors="surrogatepass")
    if reader == "muchomusic":
        items = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    elif text.lstrip().startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    ids = set()
    for it in items:
        value = it.get(key) if isinstance(it, dict) else None
        if isinstance(value, str) and value.strip():
            value = value.strip() if reader == "muchomusic" else value
            ids.add(value.encode("utf-8", "backslashreplace").decode("utf-8"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            ids.add(str(value))
    return ids


def check_prepare(src: Path, reader: str, argv: list[str]) -> None:
    """Run prepare and check the property stated in the module docstring."""
    from common.io import read_jsonl
    from data_prep.prepare import run
    from data_prep.schema import (
        DataError,
        DuplicateIdError,
        MalformedCSVError,
        MalformedJSONError,
        SourceFileError,
    )

    try:
        dataset = run(argv)
    except (MalformedJSONError, MalformedCSVError, DuplicateIdError, SourceFileError) as e:
        event(f"file-level {type(e).__name__}")
        assert e.where and str(src) in e.where, f"file-level error without its location: {e!r}"
        return
    except DataError as e:  # any other DataError must come from a file-level check as well
        pytest.fail(f"item-level problem aborted the run instead of a counted skip: {e!r}")
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    counts, skipped = manifest["counts"], manifest["skipped"]
    event(f"written, {counts['samples']} kept / {counts['skipped']} skipped")
    assert counts["read"] == _count_items(src, reader), counts
    assert counts["samples"] + counts["skipped"] == counts["read"], counts
    assert sum(counts["skipped_by_reason"].values()) == counts["skipped"] == len(skipped)
    for skip in skipped:
        assert REASON.match(skip["reason"]), skip
        assert "Traceback" not in skip["reason"]
    written = [r["id"] for split in manifest["splits"] for r in read_jsonl(dataset / f"{split}.jsonl")]
    assert len(written) == len(set(written)) == counts["samples"], "an id was written twice"
    accounted = set(written) | {s["id"] for s in skipped if s["id"] is not None}
    missing = _raw_ids(src, reader) - accounted
    assert not missing, f"items neither written nor reported: {sorted(missing)[:5]}"


@given(data=st.data())
def test_fuzzed_real_mmar_records(real_mmar, audio_root, tmp_path_factory, data):
    items = data.draw(mutated_items(real_mmar, values), label="items")
    src = _write_json(items, data, tmp_path_factory.mktemp("mmar"))
    extra = ["--missing_thinking", data.draw(st.sampled_from(["skip", "direct"]), label="missing_thinking")]
    check_prepare(src, "mmar", _argv("mmar_cot.yaml", src, audio_root, src.parent / "out", *extra))


@pytest.mark.parametrize("reader", ["mmar", "mmau", "canonical"])
@given(data=st.data())
def test_fuzzed_json_formats(reader, audio_root, tmp_path_factory, data):
    convert = {"mmar": dict, "mmau": _as_mmau, "canonical": _as_canonical}[reader]
    base = [convert(r) for r in _synthetic_mmar()]
    items = data.draw(mutated_items(base, values), label="items")
    src = _write_json(items, data, tmp_path_factory.mktemp(reader))
    config = {"mmar": "mmar_cot.yaml", "mmau": "mmau_cot.yaml", "canonical": "mmar_cot.yaml"}[reader]
    extra = ["--source.reader", reader, "--split.mode", "ratio"]
    extra += ["--missing_thinking", data.draw(st.sampled_from(["skip", "direct"]), label="missing_thinking")]
    check_prepare(src, reader, _argv(config, src, audio_root, src.parent / "out", *extra))


@given(data=st.data())
def test_fuzzed_muchomusic_csv(audio_root, tmp_path_factory, data):
    base = [_as_muchomusic(r) for r in _synthetic_mmar()]
    rows = data.draw(mutated_items(base, cells), label="rows")
    if data.draw(st.booleans(), label="drop a column"):
        column = data.draw(st.sampled_from(sorted(base[0])), label="column")
        rows = [{k: v for k, v in row.items() if k != column} for row in rows]
    cut = data.draw(st.one_of(st.none(), st.integers(0, 10**6)), label="truncate at byte")
    work = tmp_path_factory.mktemp("mucho")
    src = work / "meta.csv"
    _write(src, _csv_text(rows), cut)
    check_prepare(src, "muchomusic", _argv("muchomusic_direct.yaml", src, audio_root, work / "out"))
