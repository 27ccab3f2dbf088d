"""Query a built work folder: text → products, image → products, product → similar products.

Loads the stored embeddings and indexes once; the model is loaded only when a text
or image query needs encoding, so `similar` answers without touching a tower. Text
queries run through `shopclip.query.hybrid`: mode vector, lexical or hybrid (the
default when the work folder has a lexical index), filters understood from the query,
and the multilingual query encoder for queries in other languages. Indexes
built from other embeddings than the store holds (``shopclip embed`` ran since) raise
:class:`IndexOutOfDateError` on opening rather than answer from stale vectors.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopclip.index.base import read_manifest
from shopclip.index.store import EmbeddingStore
from shopclip.models import DualEncoder, load_model
from shopclip.pipeline.indexing import LEXICAL, VIEWS, IndexOutOfDateError, check_indexes, load_indexes
from shopclip.pipeline.workdir import WorkDir
from shopclip.query.hybrid import HybridConfig, HybridResult, HybridSearcher, SearchInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Hit:
    id: str
    score: float


@dataclass
class Result:
    id: str
    score: float
    title: str
    category: str
    image: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["IndexOutOfDateError", "Result", "SearchEngine", "SearchInputError", "TextSearch"]


@dataclass
class TextSearch:
    """A text search's results plus how it was run: mode, language, encoder, understood filters."""

    results: list[Result]
    info: HybridResult


class SearchEngine:
    def __init__(self, workdir: str | Path, model: DualEncoder | str | None = None, *,
                 store: str | None = None, uri: str | None = None) -> None:
        """`store`/`uri` say where the vector store is when it is not where the work folder
        recorded (the same pgvector tables seen from another host); a store other than the one
        the indexes were built with is an error naming the command that builds it."""
        self.workdir = WorkDir(Path(workdir))
        if not self.workdir.index.exists():
            raise FileNotFoundError(
                f"{self.workdir.root} has no index; run `shopclip build CATALOG --workdir {self.workdir.root}` "
                "or `shopclip index build` first"
            )
        self.store = EmbeddingStore.open(self.workdir.embeddings)
        if store is not None:
            built = {read_manifest(self.workdir.index / v)["backend"] for v in VIEWS
                     if (self.workdir.index / v / "manifest.json").exists()}
            if built and built != {store}:
                raise FileNotFoundError(
                    f"the indexes in {self.workdir.index} were built with --store {', '.join(sorted(built))}; "
                    f"run `shopclip index build {self.workdir.root} --store {store}"
                    + (f" --uri {uri}`" if uri else "`") + " first")
        self.indexes = load_indexes(self.workdir.index, **({"uri": uri} if uri and store != "faiss" else {}))
        check_indexes(self.store, self.workdir.index, self.indexes, self.workdir.root)
        self._model = model if isinstance(model, DualEncoder) else None
        self._model_ref = model if isinstance(model, str) else self.workdir.model_ref()
        self._meta = {m["id"]: m for m in self.store.meta()}
        self.lexical = self._open_lexical()
        self.hybrid_config = HybridConfig()
        self._searchers: dict[str, HybridSearcher] = {}
        self._vocabulary = None
        self._postings = None
        self._multi: Any = None
        self._multi_problem: str | None = None

    def _open_lexical(self) -> Any:
        """The lexical view, or None for a work folder indexed before it existed (vector search only)."""
        from shopclip.index.lexical import LexicalIndex

        folder = self.workdir.index / LEXICAL
        if not LexicalIndex.exists(folder):
            return None
        index = LexicalIndex.open(folder)
        if len(index) != len(self._meta) or index.hashes().keys() != self._meta.keys():
            # The store changed since (an embed run, or a writer that kept only the vector views
            # in step): bring the view up to date from the store, as the server does at start.
            try:
                index.sync(list(self._meta.values()))
            except Exception as e:  # another process (a server) holds the writer: search vector-only
                log.warning("lexical index of %s is out of date and could not be repaired (%s); "
                            "run `shopclip index build %s`", self.workdir.root, e, self.workdir.root)
                return None
            finally:
                index.close()
        return index

    @property
    def model(self) -> DualEncoder:
        if self._model is None:
            self._model = load_model(self._model_ref)
        return self._model

    @property
    def aligned(self) -> bool:
        """Trained heads put text and images in one space; before that, text matches product text."""
        return bool(self.store.manifest.get("model_info", {}).get("config", {}).get("trained", False))

    def __len__(self) -> int:
        return len(self._meta)

    def product(self, product_id: str) -> dict[str, Any]:
        if product_id not in self._meta:
            raise KeyError(product_id)
        return self._meta[product_id]

    def _results(self, hits: list) -> list[Result]:
        out = []
        for h in hits:
            m = self._meta.get(h.id, {})
            out.append(Result(h.id, float(h.score), m.get("title", ""), m.get("category", ""), m.get("image", "")))
        return out

    def search_vector(self, vec: np.ndarray, view: str, k: int = 10, category: str | None = None,
                      exclude: tuple[str, ...] = ()) -> list[Result]:
        return self._results(self.indexes[view].search(vec.astype(np.float32), k, category=category, exclude=exclude)[0])

    def search_text(self, query: str, k: int = 10, category: str | None = None, view: str | None = None,
                    **options: Any) -> list[Result]:
        """Text → products. `options`: mode ("vector" | "lexical" | "hybrid"), fusion ("rrf" |
        "weighted"), lang ("auto", "en", "hi", ...), understand (filters from the query, default
        on), drop (understood facets to ignore), filters (a catalog.facets.Filters)."""
        return self.search(query, k, category, view, **options).results

    def search(self, query: str, k: int = 10, category: str | None = None, view: str | None = None, *,
               mode: str | None = None, fusion: str | None = None, lang: str | None = None,
               understand: bool = True, drop: tuple[str, ...] = (), filters: Any = None) -> TextSearch:
        """Like `search_text`, plus what was understood and how the query was run (`info`)."""
        out = self.searcher(view).search(query, k, mode=mode, fusion=fusion, category=category, lang=lang,
                                         understand_query=understand, drop=drop, filters=filters)
        return TextSearch(self._results([_Hit(i, s) for i, s in out.hits]), out)

    def searcher(self, view: str | None = None) -> HybridSearcher:
        """The hybrid searcher over one vector view (default: fused once aligned, else text)."""
        view = view or ("fused" if self.aligned else "text")
        if view not in self._searchers:
            from shopclip.catalog.facets import FacetPostings
            from shopclip.query.crosslingual import CrossLingualTerms
            from shopclip.query.hybrid import ValueVectors
            from shopclip.query.understand import Vocabulary

            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self._meta.values())
                self._postings = FacetPostings(self._meta.values())
                self._value_vectors = ValueVectors(self._vocabulary, lambda xs: self.model.encode_text(xs))
                self._word_terms = CrossLingualTerms(self._vocabulary, self._word_embedder)
            encoders: dict[str, Any] = {"en": lambda q: self.model.encode_text([q])[0]}
            multi = self.multilingual()
            if multi is not None:
                encoders["multi"] = lambda q, lang=None: multi.encode([q], lang=lang)[0]
            unavailable = {"multi": self._multi_problem} if self._multi_problem else {}
            self._searchers[view] = HybridSearcher(self.indexes[view], self.lexical, self._meta, encoders,
                                                   self._vocabulary, self.hybrid_config, unavailable=unavailable,
                                                   value_vectors=self._value_vectors, postings=self._postings,
                                                   word_terms=self._word_terms)
        return self._searchers[view]

    def _word_embedder(self) -> Any:
        multi = self.multilingual()
        return None if multi is None else multi.embed_words

    def multilingual(self) -> Any:
        """The shipped multilingual query encoder, if installed and distilled for this folder's model."""
        if self._multi is None and self._multi_problem is None:
            from shopclip.models.multilingual import MultilingualMismatchError, MultilingualQueryEncoder

            try:
                enc = MultilingualQueryEncoder.load()
                enc.check_model(self.model)
                self._multi = enc
            except (FileNotFoundError, ImportError, MultilingualMismatchError) as e:
                self._multi_problem = str(e)
        return self._multi

    def search_image(self, image: Any, k: int = 10, category: str | None = None, view: str = "image") -> list[Result]:
        return self.search_vector(self.model.encode_image([image])[0], view, k, category)

    def similar(self, product_id: str, k: int = 10, category: str | None = None, view: str = "fused") -> list[Result]:
        """Products closest to this one (itself excluded); the fused view matched categories best."""
        self.product(product_id)
        if product_id not in self.indexes[view]:  # only if the folder changed after opening
            raise IndexOutOfDateError(f"product {product_id!r} is not in the {view} index: "
                                      f"run `shopclip index build {self.workdir.root}`")
        vec = self.indexes[view].get_vector(product_id)
        return self.search_vector(vec, view, k, category, exclude=(product_id,))
