"""The lexical view: BM25 over each product's text (title, brand, attributes, description), by tantivy.

Why tantivy and not a hand-written BM25 or bm25s: the server upserts and deletes single
products, and tantivy adds and deletes documents in place (a commit writes one small
segment; segments are merged by its own background threads), so a write costs the same
at 8k products as at 1M. bm25s would need a whole rebuild per write, or a main index plus
a delta merged in the background; tantivy is that design already, on disk, with fields.

Fields searched (boosts in `FIELD_BOOSTS`): `title`, `brand`, `body` (category path,
attribute values, description) with English stemming, and `codes`: model numbers and
other alphanumeric codes with their separators dropped and neighbours joined, so
"PLO 166", "plo166" and "PLO-166" all meet. Filters never score: `cat` holds every
category prefix ("footwear", "footwear > shoes"), `facet` holds "color=red",
"brand=puma", ... (see `shopclip.catalog.facets`), `price` is a fast numeric field.

Layout: `<folder>/manifest.json` names the live `data-<token>/` tantivy folder (a rebuild
writes a new one and switches the manifest: a crash keeps the old one); incremental
writes commit inside the live folder (tantivy's own commit is atomic). The embedding
store stays the durable log: each document stores a hash of what it was built from, and
`sync` repairs whatever a crash left behind, like the vector indexes' reconcile.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopclip.catalog.facets import Filters, facet_key, product_facets
from shopclip.index.base import Hit, category_levels, data_folder, read_manifest, save_folder

__all__ = ["FIELD_BOOSTS", "STOP_WORDS", "LexicalDoc", "LexicalIndex", "code_tokens", "lexical_doc", "query_terms"]

BACKEND = "tantivy"
SCHEMA_VERSION = 1
FIELD_BOOSTS = {"title": 2.0, "brand": 1.5, "codes": 2.0, "body": 1.0}
WRITER_HEAP = 32_000_000
_WORD = re.compile(r"\w+", re.UNICODE)
_HAS_DIGIT = re.compile(r"\d")
# Attributes that repeat the facets or carry no words a shopper types.
_SKIP_ATTRS = frozenset({"year", "season"})
MAX_QUERY_TERMS = 64
# Words a shopper's phrase holds without meaning a product by them ("red kurtas for women"): left
# out of `all_words`, or a kurta whose text lacks "for" would not count as holding the query.
# The English stop set of Lucene (Elasticsearch's `_english_`).
STOP_WORDS = frozenset({"a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into",
                        "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then",
                        "there", "these", "they", "this", "to", "was", "will", "with"})


def _tantivy() -> Any:
    import tantivy  # a declared dependency (Python >= 3.11); imported at module load below

    return tantivy


try:  # fail on import, so callers can fall back to vector-only search where tantivy is missing
    import tantivy as _tantivy_module  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise ImportError("the lexical index needs tantivy (Python >= 3.11): pip install 'tantivy==0.27.0'") from e


def code_tokens(text: str) -> list[str]:
    """Alphanumeric codes in `text`, each also joined with its neighbours ("PLO 166" → plo166).

    A token counts when it holds a digit; its left and right neighbours are joined to it
    (both ways round), so a code typed with or without spaces or dashes meets the title's.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    out: list[str] = []
    for i, w in enumerate(words):
        if not _HAS_DIGIT.search(w):
            continue
        out.append(w)
        if i > 0:
            out.append(words[i - 1] + w)
        if i + 1 < len(words):
            out.append(w + words[i + 1])
            if i + 2 < len(words) and _HAS_DIGIT.search(words[i + 2]):
                out.append(w + words[i + 1] + words[i + 2])
    return list(dict.fromkeys(out))


def query_terms(text: str) -> list[str]:
    """The words of a query (lower case, letters and digits only): nothing tantivy's query
    syntax could read as an operator, a field or a phrase."""
    return [w.lower() for w in _WORD.findall(text)][:MAX_QUERY_TERMS]


@dataclass(frozen=True)
class LexicalDoc:
    id: str
    title: str
    brand: str
    body: str
    codes: str
    categories: tuple[str, ...]
    facets: tuple[str, ...]
    price: float | None

    @property
    def hash(self) -> str:
        parts = [self.title, self.brand, self.body, self.codes, *self.categories, "\x1e", *self.facets,
                 "" if self.price is None else repr(float(self.price))]
        return hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def lexical_doc(meta: Mapping[str, Any]) -> LexicalDoc:
    """What the lexical view indexes for one product (its store metadata)."""
    attrs = {str(k): str(v) for k, v in (meta.get("attributes") or {}).items() if v is not None}
    facets = product_facets(meta)
    category = meta.get("category") or ""
    levels = category_levels(category)
    cat_text = " ".join(str(category if isinstance(category, str) else " ".join(category)).split(">"))
    body = " ".join([cat_text, *(v for k, v in attrs.items() if k.lower() not in _SKIP_ATTRS),
                     str(meta.get("description") or "")])
    title = str(meta.get("title") or "")
    price = meta.get("price")
    return LexicalDoc(
        id=str(meta["id"]),
        title=title,
        brand=" ".join(facets.get("brand", ())),
        body=" ".join(body.split()),
        codes=" ".join(code_tokens(" ".join([title, *attrs.values()]))),
        categories=tuple(" > ".join(levels[:d]) for d in range(1, len(levels) + 1)),
        facets=tuple(f"{name}={v}" for name, values in sorted(facets.items()) for v in values),
        price=None if price is None else float(price),
    )


class LexicalIndex:
    """BM25 over product text with category/facet/price filters; upsert and delete in place."""

    def __init__(self, folder: Path, index: Any, schema: Any) -> None:
        """Use `build` or `open`."""
        self.folder = Path(folder)
        self._index = index
        self._schema = schema
        self._writer: Any = None
        self._lock = threading.Lock()
        self._dirty = False  # writes added to the writer and not yet committed (see `upsert(commit=False)`)

    # ------------------------------------------------------------------ opening

    @staticmethod
    def _schema_builder() -> Any:
        t = _tantivy()
        sb = t.SchemaBuilder()
        sb.add_text_field("id", stored=True, tokenizer_name="raw")
        sb.add_text_field("hash", stored=True, tokenizer_name="raw", index_option="basic")
        for name in ("title", "brand", "body"):
            sb.add_text_field(name, tokenizer_name="en_stem")
        sb.add_text_field("codes", tokenizer_name="default")
        sb.add_text_field("cat", tokenizer_name="raw", index_option="basic")
        sb.add_text_field("facet", tokenizer_name="raw", index_option="basic")
        sb.add_float_field("price", indexed=True, fast=True)
        return sb.build()

    @staticmethod
    def exists(folder: str | Path) -> bool:
        try:
            return read_manifest(folder).get("backend") == BACKEND
        except (FileNotFoundError, ValueError, OSError):
            return False

    @classmethod
    def build(cls, folder: str | Path, metas: Iterable[Mapping[str, Any]]) -> LexicalIndex:
        """A fresh index of these products in a new data folder, then switch to it (atomic)."""
        t = _tantivy()
        schema = cls._schema_builder()
        count = 0

        def write(tmp: Path) -> None:
            nonlocal count
            index = t.Index(schema, path=str(tmp), reuse=False)
            writer = index.writer(WRITER_HEAP, 1)
            for meta in metas:
                writer.add_document(cls._document(lexical_doc(meta)))
                count += 1
            writer.commit()
            writer.wait_merging_threads()

        save_folder(folder, {"backend": BACKEND, "schema": SCHEMA_VERSION}, write)
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | Path) -> LexicalIndex:
        manifest = read_manifest(folder)
        if manifest.get("backend") != BACKEND:
            raise ValueError(f"{folder} holds a {manifest.get('backend')!r} index, not the lexical one")
        if manifest.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{folder}: lexical schema {manifest.get('schema')}, expected {SCHEMA_VERSION}")
        t = _tantivy()
        schema = cls._schema_builder()
        index = t.Index(schema, path=str(data_folder(folder, manifest)), reuse=True)
        index.reload()
        return cls(Path(folder), index, schema)

    @staticmethod
    def _document(doc: LexicalDoc) -> Any:
        d = _tantivy().Document()
        d.add_text("id", doc.id)
        d.add_text("hash", doc.hash)
        d.add_text("title", doc.title)
        d.add_text("brand", doc.brand)
        d.add_text("body", doc.body)
        d.add_text("codes", doc.codes)
        for c in doc.categories:
            d.add_text("cat", c)
        for f in doc.facets:
            d.add_text("facet", f)
        if doc.price is not None:
            d.add_float("price", float(doc.price))
        return d

    # ------------------------------------------------------------------ writes

    def upsert(self, metas: Sequence[Mapping[str, Any]], *, commit: bool = True) -> None:
        """Add or replace products (by id). Searches see them when this returns either way.

        `commit=False` defers tantivy's commit (its fsyncs and segment work were ~75% of a
        server write): the next `search` or `flush` commits everything pending at once, so a
        reader still sees every write acknowledged before it. Durability is the caller's:
        the server's embedding log, from which `sync` rebuilds what a crash left uncommitted.
        """
        if not metas:
            return
        docs = [lexical_doc(m) for m in metas]
        with self._lock:
            w = self._writer_locked()
            for doc in docs:
                w.delete_documents_by_term("id", doc.id)
                w.add_document(self._document(doc))
            self._dirty = True
            if commit:
                self._commit_locked()

    def remove(self, ids: Sequence[str], *, commit: bool = True) -> None:
        ids = [ids] if isinstance(ids, str) else list(ids)
        if not ids:
            return
        with self._lock:
            w = self._writer_locked()
            for i in ids:
                w.delete_documents_by_term("id", str(i))
            self._dirty = True
            if commit:
                self._commit_locked()

    def flush(self) -> bool:
        """Commit deferred writes (one commit for all of them); True when there were any."""
        if not self._dirty:
            return False
        with self._lock:
            if not self._dirty:
                return False
            self._commit_locked()
            return True

    def _writer_locked(self) -> Any:
        if self._writer is None:
            self._writer = self._index.writer(WRITER_HEAP, 1)
        return self._writer

    def _commit_locked(self) -> None:
        self._writer.commit()
        self._index.reload()
        self._dirty = False

    def close(self) -> None:
        """Release the writer (and its lock file) so another process may write."""
        with self._lock:
            if self._writer is not None:
                if self._dirty:
                    self._commit_locked()
                self._writer.wait_merging_threads()
                self._writer = None

    def sync(self, metas: Sequence[Mapping[str, Any]]) -> int:
        """Make the index hold exactly these products (the store's); returns how many docs changed.

        Compares each product's document hash with the stored one, so only what a crash or
        an outside change left behind is rewritten.
        """
        want = {str(m["id"]): m for m in metas}
        have = self.hashes()
        stale = [i for i in have if i not in want]
        fix = [m for i, m in want.items() if have.get(i) != lexical_doc(m).hash]
        if stale:
            self.remove(stale)
        if fix:
            self.upsert(fix)
        return len(stale) + len(fix)

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        self.flush()
        return int(self._index.searcher().num_docs)

    def hashes(self) -> dict[str, str]:
        """id → hash of the document indexed for it."""
        t = _tantivy()
        self.flush()
        searcher = self._index.searcher()
        n = int(searcher.num_docs)
        if not n:
            return {}
        out = {}
        for _, addr in searcher.search(t.Query.all_query(), n).hits:
            d = searcher.doc(addr)
            out[d["id"][0]] = d["hash"][0]
        return out

    def search(self, query: str, k: int = 10, *, category: Any = None, filters: Filters | None = None,
               all_words: bool = False) -> list[Hit]:
        """Top-k products by BM25, best first; filters restrict before ranking and never score.

        `all_words`: only products that hold every word of the query but stop words (each in
        any field, as stemmed), the conjunction a shopper means by "puma sports shoes"; the
        joined code variants are left out, since a title holds one spelling of its code."""
        terms = query_terms(query)
        if all_words:
            terms = [w for w in terms if w not in STOP_WORDS]
        if not terms or k <= 0:
            return []
        t = _tantivy()
        text = " ".join(dict.fromkeys(terms if all_words else [*terms, *code_tokens(" ".join(terms))]))
        q, _errors = self._index.parse_query_lenient(text, list(FIELD_BOOSTS), field_boosts=FIELD_BOOSTS,
                                                     conjunction_by_default=all_words)
        must = [self._filter_query(category, filters)]
        if must[0] is not None:
            q = t.Query.boolean_query([(t.Occur.Must, q), (t.Occur.Must, t.Query.const_score_query(must[0], 0.0))])
        self.flush()  # read your writes: deferred ones are committed before this search
        searcher = self._index.searcher()
        hits = searcher.search(q, int(k)).hits
        return [Hit(searcher.doc(addr)["id"][0], float(score)) for score, addr in hits]

    def _filter_query(self, category: Any, filters: Filters | None) -> Any:
        t = _tantivy()
        parts = []
        levels = category_levels(category)
        if levels:
            parts.append(t.Query.term_query(self._schema, "cat", " > ".join(levels)))
        for name, values in (filters.facets.items() if filters else ()):
            terms = [t.Query.term_query(self._schema, "facet", f"{name}={facet_key(v)}") for v in values]
            parts.append(terms[0] if len(terms) == 1 else
                         t.Query.boolean_query([(t.Occur.Should, x) for x in terms]))
        if filters is not None and (filters.price_min is not None or filters.price_max is not None):
            parts.append(t.Query.range_query(self._schema, "price", t.FieldType.Float, filters.price_min,
                                             filters.price_max))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else t.Query.boolean_query([(t.Occur.Must, p) for p in parts])
