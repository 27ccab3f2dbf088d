"""The `shopclip` command line, run in-process with typer's runner and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import pick_rows, write_catalog
from shopclip.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


COMMANDS = [["validate"], ["embed"], ["index"], ["index", "build"], ["search"], ["similar"], ["build"], ["demo"], ["models"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0
    assert "Example" in res.output


def test_validate_exit_codes_and_errors_file(tmp_path):
    rows = pick_rows(6)
    good = write_catalog(tmp_path / "good", rows)
    res = run("validate", good)
    assert res.exit_code == 0, res.output
    assert not Path(f"{good}.errors.jsonl").exists()

    bad_rows = [dict(r) for r in rows]
    del bad_rows[2]["title"]
    bad_rows[4]["id"] = bad_rows[0]["id"]
    bad = write_catalog(tmp_path / "bad", bad_rows)
    res = run("validate", bad)
    assert res.exit_code == 1
    errors = [json.loads(x) for x in Path(f"{bad}.errors.jsonl").read_text().splitlines()]
    assert {(e["line"], e["field"]) for e in errors} == {(3, "title"), (5, "id")}
    # the summary line counts rows, valid and rejected (rich may wrap it: compare with whitespace collapsed)
    assert "6 rows, 4 valid, 2 rejected (2 errors)" in " ".join(res.output.split()), res.output

    custom = tmp_path / "errs.jsonl"
    assert run("validate", bad, "--errors", custom).exit_code == 1 and custom.exists()

    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert run("validate", tmp_path / "junk.parquet").exit_code == 2
    assert run("validate", tmp_path / "missing.jsonl").exit_code == 2


def test_embed_index_search_similar(tmp_path, mini_catalog):
    wd = tmp_path / "w"
    res = run("embed", mini_catalog, "--out", wd, "--sample", "12")
    assert res.exit_code == 0, res.output
    assert run("search", wd, "shoes").exit_code == 2  # no index yet: a clear error
    res = run("index", "build", wd)
    assert res.exit_code == 0 and "image (12" in res.output
    res = run("search", wd, "black shoes", "-k", "3", "--json")
    assert res.exit_code == 0
    hits = [json.loads(x) for x in res.output.strip().splitlines()]
    assert len(hits) == 3 and {"id", "title", "category", "score", "image"} <= set(hits[0])
    meta = json.loads((wd / "catalog.valid.jsonl").read_text().splitlines()[0])
    img = mini_catalog.parent / meta["image"]
    res = run("search", wd, "--image", img, "-k", "2", "--json")
    assert json.loads(res.output.splitlines()[0])["id"] == meta["id"]
    res = run("similar", wd, meta["id"], "-k", "4")
    assert res.exit_code == 0 and meta["id"] not in res.output.split("similar to", 1)[1].split("\n", 1)[1]
    assert run("similar", wd, "no-such-id").exit_code == 2
    assert run("search", wd).exit_code == 2  # neither text nor image
    assert run("search", wd, "x", "-k", "0").exit_code == 2


def test_console_script_runs_as_a_real_process():
    exe = Path(sys.executable).parent / "shopclip"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "validate" in out.stdout and "search" in out.stdout


def flat(output: str) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_overwritten_image_is_re_embedded_by_embed_and_build(tmp_path):
    import shutil

    from shopclip.index.store import EmbeddingStore

    rows = pick_rows(6)
    cat = write_catalog(tmp_path / "c", rows)
    wd = tmp_path / "w"
    assert run("embed", cat, "--out", wd, "--model", "minilm-efflite0").exit_code == 0
    victim, donor = rows[0], rows[1]
    shutil.copyfile(cat.parent / donor["image"], cat.parent / victim["image"])  # same catalog file, new photo
    out = flat(run("embed", cat, "--out", wd, "--model", "minilm-efflite0").output)
    assert "validate ran" in out and "embed ran" in out and "1 embedded, 5 already up to date" in out
    store = EmbeddingStore.open(wd / "embeddings")
    img = store.vectors("image")
    assert float(img[store.ids.index(victim["id"])] @ img[store.ids.index(donor["id"])]) > 0.99
    # the build path sees the same change: the validate and embed stages re-run, the index follows
    out = flat(run("build", cat, "--workdir", wd, "--model", "minilm-efflite0").output)
    assert "stages: validate → embed → index " in out  # only what runs: no ground/enrich/train unless asked
    assert "validate up to date" in out and "embed up to date" in out and "index ran" in out
    assert "already up to date" not in out  # a skipped stage does not reprint its old summary
    shutil.copyfile(cat.parent / rows[2]["image"], cat.parent / victim["image"])
    out = flat(run("build", cat, "--workdir", wd, "--model", "minilm-efflite0").output)
    assert "validate ran" in out and "1 embedded, 5 already up to date" in out and "index ran" in out


def test_bad_options_fail_in_one_line_before_touching_the_work_folder(tmp_path, mini_catalog):
    rows = pick_rows(4)
    cat = write_catalog(tmp_path / "c", rows)
    wd = tmp_path / "w"
    assert run("embed", cat, "--out", wd).exit_code == 0
    files = sorted(str(p) for p in wd.rglob("*"))
    res = run("embed", cat, "--out", wd, "--dtype", "float64")
    assert res.exit_code == 2 and "--dtype must be one of float16, float32, got 'float64'" in flat(res.output)
    res = run("embed", cat, "--out", wd, "--dtype", "float32")  # same model, other dtype: refused, kept
    assert res.exit_code == 2 and "holds float16 embeddings of this model" in flat(res.output)
    assert sorted(str(p) for p in wd.rglob("*")) == files
    for cmd in (["embed", cat, "--out", wd], ["build", cat, "--workdir", wd], ["eval", "nope", mini_catalog, "--out", tmp_path / "r"]):
        args = [*cmd, "--model", "nope"] if cmd[0] != "eval" else cmd
        res = run(*args)
        out = flat(res.output)
        assert res.exit_code == 2, out
        assert "unknown model 'nope'" in out and "minilm-efflite0" in out and "shopclip models" in out
        assert "Traceback" not in out and "KeyError" not in out
    assert sorted(str(p) for p in wd.rglob("*")) == files


def test_search_and_similar_say_when_the_index_is_out_of_date(tmp_path):
    rows = pick_rows(7)
    wd = tmp_path / "w"
    assert run("build", write_catalog(tmp_path / "c", rows[:6]), "--workdir", wd).exit_code == 0
    assert run("search", wd, "shoes", "-k", "2").exit_code == 0
    # re-embedding with another model leaves the index behind
    assert run("embed", tmp_path / "c" / "catalog.jsonl", "--out", wd, "--model", "minilm-efflite0").exit_code == 0
    for args in (["search", wd, "shoes"], ["similar", wd, rows[0]["id"]], ["search", wd, "--image",
                                                                            tmp_path / "c" / rows[0]["image"]]):
        res = run(*args)
        out = flat(res.output)
        assert res.exit_code == 1, out
        assert f"index is out of date with the embeddings (the embeddings were made by another model " \
               f"since the index was built): run `shopclip index build {wd}`" in out
        assert "Traceback" not in out
    assert run("index", "build", wd).exit_code == 0
    assert run("similar", wd, rows[0]["id"], "-k", "2").exit_code == 0
    # a newly embedded product: `similar` on it says so instead of a KeyError
    cat = write_catalog(tmp_path / "c", rows)
    assert run("embed", cat, "--out", wd, "--model", "minilm-efflite0").exit_code == 0
    res = run("similar", wd, rows[6]["id"])
    assert res.exit_code == 1 and "1 products in the embeddings are not in the image index" in flat(res.output)
    # `build` notices the store changed under its index and rebuilds it
    out = flat(run("build", cat, "--workdir", wd, "--model", "minilm-efflite0").output)
    assert "embed up to date" in out and "index ran" in out
    assert run("similar", wd, rows[6]["id"], "-k", "2").exit_code == 0


def test_a_model_whose_package_is_missing_is_one_line(tmp_path):
    try:
        import open_clip  # noqa: F401
    except Exception:
        cat = write_catalog(tmp_path / "c", pick_rows(2))
        res = run("embed", cat, "--out", tmp_path / "w", "--model", "open_clip:ViT-B-32/laion2b_s34b_b79k")
        out = flat(res.output)
        assert res.exit_code == 2 and "open_clip models need the open_clip_torch package" in out and "Traceback" not in out
        return
    pytest.skip("open_clip imports here")  # pragma: no cover


def test_validate_reports_warnings_and_still_exits_0(tmp_path):
    from PIL import Image

    rows = pick_rows(3)
    cat = write_catalog(tmp_path / "c", rows)
    Image.open(cat.parent / rows[1]["image"]).convert("CMYK").save(cat.parent / rows[1]["image"])
    res = run("validate", cat)
    out = flat(res.output)
    assert res.exit_code == 0, out
    assert "line 2: warning: image: CMYK image (converted to RGB)" in out
    assert "3 rows, 3 valid, 0 rejected (1 warnings, rows kept)" in out
    findings = [json.loads(x) for x in Path(f"{cat}.errors.jsonl").read_text().splitlines()]
    assert findings == [{"line": 2, "field": "image", "reason": "CMYK image (converted to RGB)", "id": rows[1]["id"],
                         "value": repr(rows[1]["image"]), "severity": "warning"}]
    assert "warnings alone still exit 0" in flat(run("validate", "--help").output)
    # the build keeps the row and embeds it converted
    res = run("build", cat, "--workdir", tmp_path / "w")
    assert res.exit_code == 0 and "3 valid" in flat(res.output) and "3 products: 3 embedded" in flat(res.output)


def test_index_build_takes_a_store_an_index_kind_and_refuses_bad_ones_in_one_line(tmp_path, serve_workdir):
    import shutil

    from shopclip.index import load_index

    wd = tmp_path / "w"
    shutil.copytree(serve_workdir, wd)
    res = run("index", "build", wd, "--index", "hnsw")
    assert res.exit_code == 0, res.output
    assert load_index(wd / "index" / "fused").kind == "hnsw"
    assert run("search", wd, "white running shoes", "-k", "3", "--store", "faiss", "--json").exit_code == 0
    for args, needle in [(["--store", "nosuchdb"], "unknown store"), (["--index", "kd-tree"], "unknown --index"),
                         (["--store", "pgvector"], "needs --uri")]:
        res = runner.invoke(app, ["index", "build", str(wd), *args])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(app, ["search", str(wd), "shoes", "--store", "pgvector", "--uri", "embedded"])
    assert res.exit_code == 2 and "built with --store faiss" in res.output, res.output
