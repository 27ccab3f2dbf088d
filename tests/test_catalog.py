"""Catalog loading and validation on the real sample catalog and small broken copies of it.

Every error test writes a few real products (with their real images) plus one
deliberately broken row, and checks the exact line, field and reason, and that the
good rows still come through.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import SAMPLE_DIR, pick_rows, write_catalog
from shopclip.catalog import (
    Catalog,
    CatalogReadError,
    Product,
    RowError,
    ValidationReport,
    assign_split,
    default_errors_path,
    ensure_splits,
    group_key,
    read_rows,
    validate_catalog,
    write_errors,
)
from shopclip.catalog.splits import split_leaks

# -- helpers ---------------------------------------------------------------------------


def write_lines(folder: Path, items: list[dict | str], name: str = "catalog.jsonl") -> Path:
    """Write a JSONL catalog where dict items are rows (images copied) and str items are raw lines."""
    real = [r for r in items if isinstance(r, dict) and isinstance(r.get("image"), str)]
    path = write_catalog(folder, [r for r in real if (SAMPLE_DIR / r["image"]).is_file()], name=name)
    with open(path, "w", encoding="utf-8") as fp:
        for item in items:
            fp.write((json.dumps(item, ensure_ascii=False) if isinstance(item, dict) else item) + "\n")
    return path


def one_error(report: ValidationReport) -> RowError:
    assert len(report.errors) == 1, [str(e) for e in report.errors]
    return report.errors[0]


def with_image(row: dict, folder: Path, name: str) -> dict:
    """A copy of `row` pointing at images/<name> (which the test writes)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    return {**row, "id": f"{row['id']}-{Path(name).stem}", "image": f"images/{name}"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return pick_rows(4)


@pytest.fixture(scope="module")
def sample_report(sample_catalog: Path) -> tuple[ValidationReport, float]:
    t0 = time.perf_counter()
    report = validate_catalog(sample_catalog, check_images=True)
    return report, time.perf_counter() - t0


# -- the real sample catalog ---------------------------------------------------------


def test_sample_catalog_validates_with_images(sample_report):
    report, seconds = sample_report
    assert report.ok and report.errors == []
    assert report.total_rows == len(report.products) == 8225
    assert report.rejected_rows == 0
    assert seconds < 30, f"validating 8,225 images took {seconds:.1f} s"
    counts = {s: sum(p.split == s for p in report.products) for s in ("train", "val", "test")}
    assert counts == {"train": 6594, "val": 810, "test": 821}
    assert "8225 rows, 8225 valid, 0 rejected" in report.summary()
    # Unknown columns are kept, not rejected.
    assert all(p.extra.get("source") for p in report.products)
    # The thinnest real photo (30x256 USB light) is a product, not a "tiny image".
    assert "flipkart-832a66ce379b4c98" in report.to_catalog()


def test_sample_splits_follow_readme_rule(sample_report):
    catalog = sample_report[0].to_catalog()
    assert all(assign_split(group_key(p)) == p.split for p in catalog)
    assert split_leaks(catalog) == {}
    cleared = Catalog([Product(**{**p.__dict__, "split": None}) for p in catalog], root=catalog.root)
    assert [p.split for p in ensure_splits(cleared, photos=False)] == [p.split for p in catalog]
    # with the photo rule, byte-identical listings land in one split: only those products move
    from shopclip.catalog.photos import photo_groups

    groups = photo_groups(catalog)
    twins = {i for comp in groups.merged for i in comp}
    refilled = ensure_splits(cleared)
    moved = {p.id for p, q in zip(refilled, catalog, strict=True) if p.split != q.split}
    assert moved and moved <= twins
    by_key: dict[str, set[str]] = {}
    for p in refilled:
        by_key.setdefault(groups.key[p.id], set()).add(p.split)
    assert all(len(s) == 1 for s in by_key.values())
    assert all(p.split is None for p in cleared)  # ensure_splits copies, never mutates


def test_ensure_splits_joins_the_groups_existing_split(tmp_path):
    a = Product(id="a", title="A", image="a.jpg", group="g", split="test")
    b = Product(id="b", title="B", image="b.jpg", group="g")
    c = Product(id="c", title="C", image="c.jpg")
    out = ensure_splits(Catalog([a, b, c], root=tmp_path))
    assert [p.split for p in out] == ["test", "test", assign_split("c")]


def test_catalog_api_and_jsonl_round_trip(sample_report, tmp_path):
    catalog = sample_report[0].to_catalog()
    p = catalog["myntra-10200"]
    assert "myntra-10200" in catalog and p in catalog and "nope" not in catalog
    with pytest.raises(KeyError):
        catalog["nope"]
    assert catalog.image_path("myntra-10200") == SAMPLE_DIR / "images" / "myntra-10200.jpg"
    assert p.category_path == "Accessories > Bags > Handbags" and p.leaf == "Handbags"
    assert p.group == "dup-myntra-10200"
    assert (
        p.text()
        == "Murcia Women Emma Beige Handbags. Accessories > Bags > Handbags. color: Beige; usage: Casual."
    )
    assert len(catalog.split("val")) == 810
    sub = catalog.subset(["myntra-10244", "myntra-10200", "myntra-10244"])
    assert sub.ids == ["myntra-10244", "myntra-10200"]
    assert len(catalog.categories(level=1)) == 10
    assert "Apparel > Topwear > Tshirts" in catalog.categories()
    assert all(Product.from_dict(q.to_dict()) == q for q in catalog)

    small = catalog.subset(catalog.ids[:50])
    out = tmp_path / "copy.jsonl"
    small.write_jsonl(out)
    again = Catalog.load(out)  # images are relative to the new folder: not checked here
    assert again.products == small.products
    assert [q.line for q in again] == list(range(1, 51))


# -- one test per kind of broken row -------------------------------------------------


def test_missing_title_is_reported_and_good_rows_kept(tmp_path, rows):
    bad = {k: v for k, v in rows[2].items() if k != "title"}
    path = write_lines(tmp_path, [rows[0], rows[1], bad, rows[3]])
    report = validate_catalog(path)
    err = one_error(report)
    assert (err.line, err.field, err.reason, err.id) == (3, "title", "missing field", rows[2]["id"])
    assert [p.id for p in report.products] == [rows[0]["id"], rows[1]["id"], rows[3]["id"]]
    assert report.total_rows == 4 and report.rejected_rows == 1 and not report.ok


def test_wrong_types(tmp_path, rows):
    int_title = {**rows[0], "title": 42}
    float_id = {**rows[1], "id": 1.5}
    int_id = {**rows[2], "id": 12345}  # ints are accepted as ids
    nested_attr = {**rows[3], "attributes": {"size": {"eu": 42}}}
    path = write_lines(tmp_path, [int_title, float_id, int_id, nested_attr])
    report = validate_catalog(path)
    got = [(e.line, e.field, e.reason) for e in report.errors]
    assert got == [
        (1, "title", "wrong type: expected string, got int"),
        (2, "id", "wrong type: expected string or int, got float"),
        (4, "attributes.size", "wrong type: expected a scalar value, got object"),
    ]
    assert report.errors[0].value == "42"
    assert [p.id for p in report.products] == ["12345"]


def test_duplicate_id_reports_exact_lines(tmp_path, rows):
    dup = {**rows[2], "id": rows[0]["id"]}
    # A blank physical line is skipped but still counted.
    path = write_lines(tmp_path, [rows[0], "", rows[1], dup, rows[3], dup])
    report = validate_catalog(path)
    got = [(e.line, e.field, e.reason, e.id) for e in report.errors]
    first = "duplicate id (first seen on line 1)"
    assert got == [(4, "id", first, rows[0]["id"]), (6, "id", first, rows[0]["id"])]
    assert [(p.id, p.line) for p in report.products] == [
        (rows[0]["id"], 1),
        (rows[1]["id"], 3),
        (rows[3]["id"], 5),
    ]


def test_truncated_jpeg(tmp_path, rows):
    data = (SAMPLE_DIR / rows[0]["image"]).read_bytes()
    bad = with_image(rows[0], tmp_path, "half.jpg")
    (tmp_path / "images" / "half.jpg").write_bytes(data[: len(data) // 2])
    path = write_lines(tmp_path, [rows[1], bad, rows[2]])
    report = validate_catalog(path)
    err = one_error(report)
    assert (err.line, err.field, err.reason, err.value) == (
        2,
        "image",
        "truncated image",
        "'images/half.jpg'",
    )
    assert len(report.products) == 2
    assert validate_catalog(path, check_images=False).ok  # decoding is what catches it


def test_tiny_image(tmp_path, rows):
    bad = with_image(rows[0], tmp_path, "tiny.png")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "images" / "tiny.png")
    sliver = with_image(rows[1], tmp_path, "sliver.png")
    Image.new("RGB", (4, 400), (200, 10, 10)).save(tmp_path / "images" / "sliver.png")
    thin = with_image(rows[2], tmp_path, "thin.png")  # like the sample's 30x256 product: fine
    Image.new("RGB", (30, 256), (200, 10, 10)).save(tmp_path / "images" / "thin.png")
    path = write_lines(tmp_path, [bad, sliver, thin, rows[3]])
    report = validate_catalog(path)
    got = [(e.line, e.field, e.reason) for e in report.errors]
    assert got == [
        (1, "image", "image too small (16x16, fewer pixels than 32x32)"),
        (2, "image", "image too small (4x400, short side under 8px)"),
    ]
    assert [p.id for p in report.products] == [thin["id"], rows[3]["id"]]
    assert validate_catalog(path, min_image_size=8).ok  # the threshold is a parameter


def test_non_rgb_16bit_png(tmp_path, rows):
    bad = with_image(rows[0], tmp_path, "depth.png")
    Image.new("I;16", (64, 64), 30000).save(tmp_path / "images" / "depth.png")
    assert Image.open(tmp_path / "images" / "depth.png").mode == "I;16"
    path = write_lines(tmp_path, [rows[1], rows[2], bad])
    err = one_error(validate_catalog(path))
    assert (err.line, err.field, err.reason) == (3, "image", "non-RGB image (mode I;16)")


def _alpha(img: Image.Image) -> Image.Image:
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return img


# (file name, how to make it from an RGB photo, expected warning); every row is kept
CONVERTED = [
    ("cmyk.jpg", lambda im: im.convert("CMYK"), "CMYK image (converted to RGB)"),
    ("grey.png", lambda im: im.convert("L"), "greyscale image (mode L, converted to RGB)"),
    ("grey-alpha.png", lambda im: _alpha(im.convert("LA")),
     "greyscale image (mode LA, converted to RGB, transparency flattened onto white)"),
    ("palette.png", lambda im: im.convert("P"), "palette image (mode P, converted to RGB)"),
    ("alpha.png", lambda im: _alpha(im.convert("RGBA")), "transparent image (mode RGBA, flattened onto white)"),
]


@pytest.mark.parametrize(("name", "make", "warning"), CONVERTED, ids=[c[0] for c in CONVERTED])
def test_convertible_image_modes_are_warnings_and_the_row_is_kept(tmp_path, rows, name, make, warning):
    row = with_image(rows[0], tmp_path, name)
    make(Image.open(SAMPLE_DIR / rows[0]["image"]).convert("RGB")).save(tmp_path / "images" / name)
    path = write_lines(tmp_path, [rows[1], row])
    report = validate_catalog(path)
    assert report.ok and report.errors == [] and [p.id for p in report.products] == [rows[1]["id"], row["id"]]
    assert [(w.line, w.field, w.reason, w.id, w.severity) for w in report.warnings] == [
        (2, "image", warning, row["id"], "warning")]
    assert "2 rows, 2 valid, 0 rejected (1 warnings, rows kept)" in report.summary()
    assert f"image: {warning.split(' (')[0]} (warning)" in report.summary()
    assert report.findings[0].to_dict()["severity"] == "warning"


def test_palette_with_transparency_and_opaque_rgba(tmp_path, rows):
    clear = with_image(rows[0], tmp_path, "clear.png")
    im = Image.open(SAMPLE_DIR / rows[0]["image"]).convert("P")
    im.info["transparency"] = 0
    im.save(tmp_path / "images" / "clear.png", transparency=0)
    opaque = with_image(rows[1], tmp_path, "opaque.png")  # an alpha channel nobody uses: nothing to say
    Image.open(SAMPLE_DIR / rows[1]["image"]).convert("RGBA").save(tmp_path / "images" / "opaque.png")
    report = validate_catalog(write_lines(tmp_path, [clear, opaque]))
    assert report.ok and len(report.products) == 2
    assert [w.reason for w in report.warnings] == [
        "palette image (mode P, converted to RGB, transparency flattened onto white)"]


def test_unreadable_and_missing_image_files(tmp_path, rows):
    garbage = with_image(rows[0], tmp_path, "garbage.jpg")
    (tmp_path / "images" / "garbage.jpg").write_bytes(b"this is not a picture\n" * 20)
    missing = with_image(rows[1], tmp_path, "gone.jpg")
    path = write_lines(tmp_path, [garbage, rows[2], missing])
    report = validate_catalog(path)
    assert [(e.line, e.field) for e in report.errors] == [(1, "image"), (3, "image")]
    assert report.errors[0].reason == "unreadable image: cannot identify image file"  # no <_io.BufferedReader …>
    assert report.errors[1].reason == "image file not found"
    assert [p.id for p in report.products] == [rows[2]["id"]]


def test_image_paths_escaping_the_catalog_folder(tmp_path, rows):
    folder = tmp_path / "cat"
    shutil.copyfile(SAMPLE_DIR / rows[0]["image"], tmp_path / "x.jpg")  # exists, must not be read
    items = [
        {**rows[0], "image": "../x.jpg"},
        {**rows[1], "image": "/etc/passwd"},
        {**rows[2], "image": "images/../../x.jpg"},
        rows[3],
        {**rows[3], "id": "ok-dots", "image": f"images/./sub/../{Path(rows[3]['image']).name}"},
    ]
    path = write_lines(folder, items)
    report = validate_catalog(path)
    got = [(e.line, e.field, e.reason, e.value) for e in report.errors]
    assert got == [
        (1, "image", "image path escapes the catalog folder (..)", "'../x.jpg'"),
        (2, "image", "image path escapes the catalog folder (absolute path)", "'/etc/passwd'"),
        (3, "image", "image path escapes the catalog folder (..)", "'images/../../x.jpg'"),
    ]
    assert [p.id for p in report.products] == [rows[3]["id"], "ok-dots"]


def test_invalid_json_lines(tmp_path, rows):
    path = write_lines(tmp_path, [rows[0], '{"id": "x", "title": ', rows[1], "[1, 2]", rows[2]])
    report = validate_catalog(path)
    got = [(e.line, e.field, e.reason) for e in report.errors]
    assert got == [
        (2, "<row>", "invalid JSON: Expecting value at column 22"),
        (4, "<row>", "invalid JSON: expected an object, got array"),
    ]
    assert report.total_rows == 5 and [p.line for p in report.products] == [1, 3, 5]


def test_other_field_rules(tmp_path, rows):
    items = [
        {**rows[0], "price": -3},
        {**rows[1], "category": "Apparel > Topwear > Tshirts", "price": "499.5", "group": 7,
         "labels": {"adult": False}, "url": "https://example.com/p/1", "vendor_sku": "A-1"},
        {**rows[2], "split": "holdout", "labels": ["adult"]},
        {**rows[3], "category": ["Apparel", ""], "image": ""},
    ]  # fmt: skip
    path = write_lines(tmp_path, items)
    report = validate_catalog(path)
    got = [(e.line, e.field, e.reason) for e in report.errors]
    assert got == [
        (3, "labels", "wrong type: expected object, got list"),
        (3, "split", "unknown split (expected train, val, test)"),
        (4, "image", "empty string"),
        (4, "category", "empty category level"),
    ]
    # price is optional: an unusable one is dropped with a warning and the product kept
    assert [(e.line, e.field, e.reason) for e in report.warnings] == [
        (1, "price", "negative price")]
    assert report.rejected_rows == 2  # one row, several errors, rejected once
    first, p = report.products
    assert first.id == rows[0]["id"] and first.price is None
    assert p.category == ["Apparel", "Topwear", "Tshirts"] and p.price == 499.5 and p.group == "7"
    assert p.labels == {"adult": False} and p.url == "https://example.com/p/1"
    assert p.extra == {"source": rows[1]["source"], "vendor_sku": "A-1"}
    summary = report.summary()
    assert "4 rows, 2 valid, 2 rejected (4 errors, 1 warnings, rows kept)" in summary
    assert "price: negative price (warning)" in summary


def test_prices_as_shops_write_them(tmp_path, rows):
    """`1,299`, `₹1,299.00`, `Rs. 499` are read; text that is no price keeps the row with a warning."""
    written = ["1,299", "₹1,299.00", "Rs. 499", "12,34,567", "499/-", "call for price", 250]
    items = [{**rows[i % 4], "id": f"p{i}", "price": v} for i, v in enumerate(written)]
    report = validate_catalog(write_lines(tmp_path, items), check_images=False)
    assert report.errors == []
    assert [p.price for p in report.products] == [1299.0, 1299.0, 499.0, 1234567.0, 499.0, None, 250.0]
    (w,) = report.warnings
    assert (w.line, w.field, w.severity, w.id) == (6, "price", "warning", "p5")
    assert w.reason.startswith("not a number")


def test_errors_file(tmp_path, rows):
    path = write_lines(tmp_path, [rows[0], {**rows[1], "title": None}])
    report = validate_catalog(path, check_images=False)
    out = default_errors_path(path)
    assert out == tmp_path / "catalog.jsonl.errors.jsonl"
    write_errors(report.errors, out)
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert lines == [
        {"line": 2, "field": "title", "reason": "missing field", "id": rows[1]["id"], "value": None,
         "severity": "error"}
    ]


def test_exif_rotated_jpeg_and_rgba_png_are_accepted(tmp_path, rows):
    src = Image.open(SAMPLE_DIR / rows[0]["image"])
    exif = src.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = with_image(rows[0], tmp_path, "rotated.jpg")
    src.save(tmp_path / "images" / "rotated.jpg", exif=exif)
    rgba = with_image(rows[1], tmp_path, "alpha.png")
    im = Image.open(SAMPLE_DIR / rows[1]["image"]).convert("RGBA")
    im.putalpha(128)
    im.save(tmp_path / "images" / "alpha.png")
    palette = with_image(rows[2], tmp_path, "palette.png")
    Image.open(SAMPLE_DIR / rows[2]["image"]).convert("P").save(tmp_path / "images" / "palette.png")
    path = write_lines(tmp_path, [rotated, rgba, palette])
    report = validate_catalog(path)
    assert report.ok and len(report.products) == 3


# -- other formats -------------------------------------------------------------------------


def _csv_text(rows: list[dict]) -> str:
    import csv
    import io

    attr_names = sorted({k for r in rows for k in r.get("attributes", {})})
    label_names = sorted({k for r in rows for k in r.get("labels", {})})
    header = ["id", "title", "description", "category", "image", "group", "split", "source"]
    header += [f"attr_{a}" for a in attr_names] + [f"label_{name}" for name in label_names]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        cells = [r["id"], r["title"], r.get("description", ""), " > ".join(r["category"]), r["image"],
                 r.get("group", ""), r["split"], r["source"]]  # fmt: skip
        cells += [r["attributes"].get(a, "") for a in attr_names]
        cells += [json.dumps(r["labels"][n]) if n in r.get("labels", {}) else "" for n in label_names]
        w.writerow(cells)
    return buf.getvalue()


@pytest.fixture(scope="module")
def table_rows() -> list[dict]:
    """Real rows of both sources, one with a multi-line description and one with a label."""
    rows = [dict(r) for r in pick_rows(24)]
    flip = next(r for r in rows if "description" in r)
    flip["description"] = (
        flip["description"][:60] + '\nsecond line, with a "quote"\n' + flip["description"][60:]
    )
    rows[1]["labels"] = {"adult": False}
    return rows


def test_csv_round_trips_to_the_same_products(tmp_path, table_rows):
    jsonl = write_catalog(tmp_path, table_rows)
    csv_path = tmp_path / "catalog.csv"
    csv_path.write_text(_csv_text(table_rows), encoding="utf-8")
    from_jsonl = validate_catalog(jsonl)
    from_csv = validate_catalog(csv_path)
    assert from_jsonl.ok and from_csv.ok, from_csv.summary()
    assert from_csv.products == from_jsonl.products
    assert from_csv.products[1].labels == {"adult": False}
    # Line numbers are physical: the multi-line record pushes later records down by 2.
    multi = next(i for i, r in enumerate(table_rows) if "\n" in r.get("description", ""))
    lines = [p.line for p in from_csv.products]
    assert lines[: multi + 2] == [i + 2 for i in range(multi + 1)] + [multi + 5]


def test_csv_bad_record_line_numbers(tmp_path, table_rows):
    good = table_rows[:3]
    text = _csv_text(good)
    n_header = len(text.splitlines()[0].split(","))
    text += '"x-1","short row"\n'
    text += ",".join(["x-2", "", "", "A > B", "images/nothing.jpg"] + [""] * (n_header - 5)) + "\n"
    path = tmp_path / "catalog.csv"
    path.write_text(text, encoding="utf-8")
    phys = len(text.splitlines())  # last physical line (quoted newlines count)
    report = validate_catalog(path, check_images=False)
    got = [(e.line, e.field, e.reason) for e in report.errors]
    assert got == [
        (phys - 1, "<row>", f"CSV row has 2 fields, header has {n_header}"),
        (phys, "title", "empty string"),
    ]
    assert len(report.products) == 3


def _table(rows: list[dict]):
    """pyarrow takes the columns from the first row only: give every row every key."""
    import pyarrow as pa

    keys = dict.fromkeys(k for r in rows for k in r)
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def test_parquet_round_trips_to_the_same_products(tmp_path, table_rows):
    import pyarrow.parquet as pq

    jsonl = write_catalog(tmp_path, table_rows)
    expected = validate_catalog(jsonl).products

    native = tmp_path / "native.parquet"  # list<string> category, struct attributes
    pq.write_table(_table(table_rows), native)
    as_text = tmp_path / "text.parquet"  # " > " category, JSON-string attributes, attr_* column
    flat = [
        {**r, "category": " > ".join(r["category"]), "attributes": json.dumps(r["attributes"]),
         "attr_extra_note": "x" if i == 0 else None}
        for i, r in enumerate(table_rows)
    ]  # fmt: skip
    pq.write_table(_table(flat), as_text)

    native_report = validate_catalog(native)
    assert native_report.ok, native_report.summary()
    assert native_report.products == expected
    assert [p.line for p in native_report.products] == list(range(1, len(table_rows) + 1))
    text_products = validate_catalog(as_text).products
    assert text_products[0].attributes == {**expected[0].attributes, "extra_note": "x"}
    assert text_products[1:] == expected[1:]


def test_read_rows_yields_line_numbers_and_row_errors(tmp_path, rows):
    path = write_lines(tmp_path, ["", rows[0], "not json"])
    got = list(read_rows(path))
    assert [line for line, _ in got] == [2, 3]
    assert got[0][1]["id"] == rows[0]["id"]
    assert isinstance(got[1][1], RowError) and got[1][1].field == "<row>"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("missing.jsonl", None),
        ("catalog.txt", b'{"id": "a"}\n'),
        ("broken.parquet", b"PAR1 this is not really parquet PAR1"),
        ("binary.jsonl", bytes(range(256)) * 4),
        ("array.jsonl", b"[\n1,\n2\n]\n"),
        ("array.json", b"[1, 2]"),
        ("noheader.csv", b"name,price\nfoo,1\n"),
        ("bad.json", b'[{"id": 1},'),
    ],
)
def test_unreadable_files_raise(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CatalogReadError):
        validate_catalog(path)
    with pytest.raises(CatalogReadError):
        Catalog.load(path)


def test_catalog_load_keeps_errors(tmp_path, rows):
    path = write_lines(tmp_path, [rows[0], {**rows[1], "image": 3}])
    catalog = Catalog.load(path)
    assert len(catalog) == 1 and catalog.source == path and catalog.root == tmp_path
    assert [(e.line, e.field, e.reason) for e in catalog.errors] == [
        (2, "image", "wrong type: expected string, got int")
    ]
