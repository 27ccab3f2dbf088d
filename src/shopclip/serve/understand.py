"""`POST /tag` and `POST /dedupe/check`: the understanding jobs on one new listing.

Both take the listing as a seller would upload it (multipart: the photo, its title,
optionally its description; /tag also the seller's category and attributes, so it can
say what it would fill and where it disagrees). They read the task heads from
``WORKDIR/heads`` (``shopclip heads train CATALOG --model MODEL --out WORKDIR/heads``) or
the folder ``create_app(heads_dir=…)`` / ``shopclip serve --heads`` names; without heads,
or with heads fitted for another model, both answer 503 with the command that fixes it.
Heads are re-read when their heads.json changes, so refitting needs no restart.

/dedupe/check compares the listing with the live index: candidates are the nearest
products by photo and by the fused vector, each is rescored by the dedupe job's matcher
(photo cosine from the index, text cosine of the two listings' own texts, the keypoint
check of the two photos, and the margin over the listing's other candidates), and those
at or above the review threshold come back, "duplicate" or "review".

No ``from __future__ import annotations`` here: FastAPI must see the route parameters'
``Annotated[..., File()/Form()]`` aliases, which live in a function scope, as objects.
"""


import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from shopclip.serve.errors import ApiError, responses

# ---------------------------------------------------------------------- response models


class CategoryOut(BaseModel):
    path: str = Field(description="the decoded path, every level (may go deeper than the sure part)")
    levels: list[str]
    confidence: list[float] = Field(description="calibrated probability of each level (non-increasing)")
    decided: str | None = Field(description="the levels whose confidence reaches their threshold; null: unsure")
    unsure: bool = Field(description="true when some level is below its threshold")
    given: str | None = Field(description="the category the request gave, if any")
    agrees: bool | None = Field(default=None, description="does the sure part agree with the given category")


class AttributeOut(BaseModel):
    predicted: str
    confidence: float
    given: str | None
    status: Literal["filled", "unsure", "agrees", "disagrees", "given"] = Field(
        description="filled: missing and sure; unsure: missing, not sure enough to fill; agrees/disagrees: with "
                    "the given value (disagrees only when sure); given: a value was given and the head is not sure")


class LabelOut(BaseModel):
    calibrated: bool = Field(description="false: a zero-shot score without labelled data; no decision is made")
    decision: bool | None
    probability: float | None = None
    threshold: float | None = None
    precision_target: float | None = None
    calibration: str | None = None
    score: float | None = None
    method: str | None = None
    note: str | None = None
    given: int | None = None


class Disagreement(BaseModel):
    field: str
    given: str | None
    predicted: str | None
    confidence: float


class Neighbour(BaseModel):
    id: str
    score: float
    title: str | None = None
    category: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Any] = Field(default_factory=dict)


class TagResponse(BaseModel):
    category: CategoryOut | None = None
    attributes: dict[str, AttributeOut]
    fill: dict[str, str] = Field(description="missing attributes the heads are sure of (never a given one)")
    labels: dict[str, LabelOut]
    disagreements: list[Disagreement]
    unsure: list[str] = Field(description="what the heads would not decide")
    neighbours: list[Neighbour] = Field(description="nearest labelled products: the reason a reviewer can check")
    took_ms: float


class DuplicateHit(BaseModel):
    id: str
    title: str
    category: str
    image_url: str
    probability: float = Field(description="calibrated probability that it is the same product")
    image_similarity: float
    text_similarity: float
    decision: Literal["duplicate", "review"]
    reason: str


class DedupeResponse(BaseModel):
    duplicates: list[DuplicateHit]
    threshold: float = Field(description="probability at which a pair is a duplicate (chosen on validation pairs)")
    review_threshold: float = Field(description="probability from which a pair is worth a look")
    candidates: int = Field(description="products compared")
    took_ms: float


# ---------------------------------------------------------------------- heads


class HeadsSource:
    """The task heads of a work folder, loaded on first use and again whenever heads.json changes."""

    def __init__(self, folder: Path, state: Any) -> None:
        self.folder = Path(folder)
        self.state = state
        self._lock = threading.Lock()
        self._loaded: tuple[float, Any] | None = None
        self._fingerprint: str | None = None
        from shopclip.heads.photomatch import KeypointCache

        self.keypoints = KeypointCache(lambda path: path, size=2048)  # catalog photos' keypoints, by file

    def _fix(self) -> str:
        return (f"fit them with `shopclip heads train CATALOG --model {self.state.workdir.model_ref()} "
                f"--out {self.folder}`")

    def get(self) -> Any:
        from shopclip.heads.bundle import HEADS_FILE, HeadsMismatchError, TaskHeads

        path = self.folder / HEADS_FILE
        try:
            mtime = path.stat().st_mtime
        except OSError:
            raise ApiError(503, "heads_missing", f"no task heads in {self.folder.name}/ on this server; "
                           + self._fix()) from None
        loaded = self._loaded
        if loaded is not None and loaded[0] == mtime:
            return loaded[1]
        with self._lock:
            if self._loaded is None or self._loaded[0] != mtime:
                if self._fingerprint is None:
                    from shopclip.models.features import model_fingerprint

                    self._fingerprint = model_fingerprint(self.state.model)
                try:
                    heads = TaskHeads.load(self.folder, fingerprint=self._fingerprint)
                except HeadsMismatchError:
                    raise ApiError(503, "heads_mismatch", "the task heads were fitted for another model than the "
                                   "one this server uses; refit them: " + self._fix()) from None
                except (OSError, ValueError, KeyError) as e:
                    raise ApiError(503, "heads_unreadable", f"the task heads cannot be read ({e}); " + self._fix()) from None
                self._loaded = (mtime, heads)
            return self._loaded[1]


# ---------------------------------------------------------------------- routes


def register_understanding(app: FastAPI, st: Any, *, heads_dir: Path, dependencies: list[Any],
                           read_errors: tuple[int, ...], read_upload: Callable[[UploadFile], bytes],
                           clean_text: Callable[[str], str]) -> HeadsSource:
    """Add the two routes to ``app`` over the server state ``st`` (its read side only)."""
    from shopclip.heads.features import encode_listing, listing_text
    from shopclip.heads.matching import PHOTO_FEATURES, feature_matrix
    from shopclip.heads.photomatch import compare, describe

    source = HeadsSource(heads_dir, st)
    app.state.heads = source
    errors = {**responses(413, 415, 422, 503), **responses(*read_errors)}

    Photo = Annotated[UploadFile, File(description="the listing's photo: JPEG, PNG, WebP or GIF")]
    Title = Annotated[str, Form(min_length=1, max_length=500, description="the listing's title",
                                examples=["Puma Men White Casual Shoes"])]
    Description = Annotated[str | None, Form(max_length=10_000, description="the listing's description")]

    def listing(image: UploadFile, title: str, description: str | None) -> tuple[Any, str]:
        text = clean_text(title)
        if not text:
            raise ApiError(422, "empty_title", "the title is empty (only whitespace or invisible characters)")
        img, _ = st.read_image(read_upload(image))
        return img, listing_text(text, clean_text(description or ""))

    @app.post("/tag", response_model=TagResponse, tags=["understand"],
              dependencies=dependencies, responses=errors)
    def tag(
        image: Photo,
        title: Title,
        description: Description = None,
        category: Annotated[str | None, Form(max_length=512, description="the seller's category, e.g. "
                                                                          "'Footwear > Shoes', if given")] = None,
        attributes: Annotated[str | None, Form(max_length=20_000, description='the seller\'s attributes as a JSON '
                                                                              'object, e.g. {"color": "White"}')] = None,
    ) -> dict[str, Any]:
        """Category path, missing attributes and labels of a new listing, with calibrated confidences.

        Nothing the seller gave is replaced: a missing attribute appears in `fill` only when
        the head is sure, and a sure prediction that contradicts a given value is listed in
        `disagreements`. Labels without labelled training data are zero-shot scores marked
        `calibrated: false`, with no decision.
        """
        t0 = time.perf_counter()
        heads = source.get()
        img, text = listing(image, title, description)
        given = {"category": clean_text(category or "") or None, "attributes": _attributes(attributes, clean_text)}
        views = encode_listing(st.model, img, text)
        row = heads.tag(views, [given], neighbours=3)[0]
        row["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return row

    @app.post("/dedupe/check", response_model=DedupeResponse, tags=["understand"], dependencies=dependencies,
              responses=errors)
    def dedupe_check(
        image: Photo,
        title: Title,
        description: Description = None,
        k: Annotated[int, Query(ge=1, le=50, description="neighbours compared, by photo and by photo + text")] = 10,
    ) -> dict[str, Any]:
        """Is this new listing already in the catalog? Likely duplicates with their probabilities."""
        t0 = time.perf_counter()
        heads = source.get()
        if heads.matcher is None:
            raise ApiError(503, "heads_missing", "the task heads have no duplicate matcher; " + source._fix())
        img, text = listing(image, title, description)
        views = encode_listing(st.model, img, text)
        snap = st.snapshot
        query_image = views["image"][0]
        fused = views["image"][0] + views["text"][0]
        fused = fused / max(float(np.linalg.norm(fused)), 1e-12)
        found: dict[str, dict[str, Any]] = {}
        for view, vec in (("image", query_image), ("fused", fused)):
            if view in snap.indexes:
                for hit in st.search_vector(vec, view, k, snap=snap):
                    found.setdefault(hit["id"], hit)
        # the snapshot reads live tables: a product deleted since its hit was found is dropped, not a 500
        vecs: dict[str, np.ndarray] = {}
        for i in found:
            with contextlib.suppress(KeyError):
                if i in snap.products:
                    vecs[i] = snap.indexes["image"].get_vector(i)
        ids = [i for i in found if i in vecs and i in snap.products]
        out: list[dict[str, Any]] = []
        if ids:
            metas = [snap.products[i] for i in ids]
            img_sim = np.asarray([float(vecs[i] @ query_image) for i in ids])
            other = st.model.encode_text([listing_text(m.get("title", ""), m.get("description", "")) for m in metas])
            txt_sim = other @ views["text"][0]
            checks = None
            if any(f in PHOTO_FEATURES for f in heads.matcher.features):
                mine = describe(img)
                checks = np.asarray([compare(mine, source.keypoints.get(str(m.get("image", "")))) for m in metas],
                                    dtype=np.float32).reshape(-1, 3)
            x = feature_matrix(heads.matcher.features, {"image": img_sim, "text": txt_sim}, checks, len(ids))
            p = heads.matcher.score_query(x)
            same_photo = heads.matcher.identical(x)
            for j in np.argsort(-p, kind="stable"):
                if p[j] < heads.matcher.query.review:
                    break
                out.append({**found[ids[j]], "probability": round(float(p[j]), 4),
                            "image_similarity": round(float(img_sim[j]), 4),
                            "text_similarity": round(float(txt_sim[j]), 4),
                            "decision": "duplicate" if p[j] >= heads.matcher.query.threshold else "review",
                            "reason": "identical photo" if same_photo[j] else "similar photo and text"})
        return {"duplicates": out, "threshold": round(heads.matcher.query.threshold, 4),
                "review_threshold": round(heads.matcher.query.review, 4), "candidates": len(ids),
                "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    return source


def _attributes(text: str | None, clean_text: Callable[[str], str]) -> dict[str, str]:
    """The seller's attributes: a JSON object of names to scalar values, or a 422 saying why not."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(422, "invalid_attributes", "field 'attributes' must be a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_attributes", "field 'attributes' must be a JSON object")
    out: dict[str, str] = {}
    for name, v in value.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool) or (isinstance(v, float) and v != v):
            raise ApiError(422, "invalid_attributes", f"attribute {str(name)[:40]!r} must be a string or a number")
        name_c, v_c = clean_text(str(name)), clean_text(str(v))
        if name_c and v_c:
            out[name_c] = v_c
    return out


__all__ = ["DedupeResponse", "HeadsSource", "TagResponse", "register_understanding"]
