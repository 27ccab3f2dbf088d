"""Constrained answers: what a model may write is built from the listing, so it cannot invent.

The checker (:mod:`.checks`) finds invented content after the fact; this module makes it impossible
in the first place. For each product a :class:`Constraint` lists what the answer may contain:

* ``product_type`` — the listing's category leaf or its ``type`` attribute;
* ``attributes`` — for each listing attribute, exactly the listing's (cleaned) value; the extra keys
  the model may add (brand, color, gender, pattern) only with values read off the title by rule
  (a run of colour words, a gender word, a pattern word, and for a brand the words before the title's
  gender word, "Puma" in "Puma Men White Casual Shoes"), and only when the listing has no such key;
* ``description`` — a sequence of 5-16 units, each a word of the listing the model was shown (title,
  category, attribute names and values, details; as written, lower-cased or capitalised, a possessive
  also without its "'s") or one of :data:`CONNECTORS` ("a", "an", "the", "and"), separated by spaces,
  commas or full stops. Four kinds of words come only in phrases, because SmolLM2 recombined them into
  false statements: an attribute's name and (unless the attribute is the whole product's,
  :data:`PRODUCT_KEYS`) its value only together ("height 36.83 cm", "pink strap color"; it wrote
  "height 29.21 cm" for the width and "black lid" for a steel lid); a number only with a neighbour it has
  in the listing ("size 10", "20 cm"; a lone model id "3" and a count "1" became "3 in 1"); a brand of
  several words only whole ("United Colors of Benetton"; it wrote "United of Benetton"); and the words
  that bind or deny (:data:`BINDING`: "for", "in", "of", "with", "without", "no" …) only as the listing
  uses them, between the same two words ("Set of 3", "Cream With Vitamin-E"), or as "for" + who or what
  the listing says the product is for ("for women", "for casual") and "in" + one of the whole product's
  colour or material words ("in black"): it wrote "shoes … with a redtape" for a Redtape shoe, "t-shirt
  for chhota Bheem" for a cartoon print and "router without wireless" for a wireless router.

:meth:`Constraint.schema` writes this as a JSON schema (``enum`` values and a ``pattern`` over the
vocabulary): llama.cpp compiles it to a grammar (``LlamaGrammar.from_json_schema``; llama-cpp-python's
server with ``--json-mode object-schema`` does the same), so the sampler never even proposes a word
outside it, and OpenAI-style servers with strict structured outputs enforce it too. For a backend that
ignores schemas, :meth:`Constraint.violations` is the same rule as a check and :meth:`Constraint.enforce`
removes what breaks it (sentences with an outside word, values not on the list), so what ships obeys it
whatever the backend did. The deterministic checker still runs after it, as a second line: source words
can be combined into a false statement ("for men" on a listing that names men only as "not for men").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shopclip.enrich.checks import COLOURS, GENDER_AGE, MATERIALS, PATTERNS, Issue, canon_tokens
from shopclip.enrich.normalize import NormalizedProduct

#: Joining words a description may use freely besides the listing's own: they bind nothing to anything.
CONNECTORS = ("a", "an", "the", "and")
#: Words that bind a listing word to the product ("for men", "in black", "pack of 3", "with a lid") or deny
#: it ("without", "no"): never free, even where the listing has them, only in the phrases
#: :meth:`Constraint.build` allows. SmolLM2, free to use them, wrote "shoes … with a redtape" for a Redtape
#: shoe, "t-shirt for chhota Bheem" for a cartoon print and "router without wireless" for a wireless router;
#: sentence builders ("is", "has", "featuring") are left out for the same reason.
BINDING = ("for", "in", "of", "with", "by", "from", "at", "on", "to", "made", "is", "has", "without", "not", "no",
           "non", "except")
#: Who a product is for and what it is for: attribute keys whose values may follow "for".
_FOR_KEYS = ("gender", "ideal_for", "usage", "occasion", "suitable_for")
#: Attributes of the whole product: their values are free words of the description. Every other attribute
#: (a part's colour or material, a size, a count, a measure, a model code …) is said only with its own name,
#: "height 36.83 cm" or "36.83 cm height": the blind hand check of the first constrained agent found SmolLM2
#: pairing names and values wrongly ("height 29.21 cm" for the width, "black lid" for a steel lid, "size of
#: 1" for a pack of 1, "black metal dial" for a black metal strap) in 12 of 30 Flipkart rows.
PRODUCT_KEYS = frozenset({"color", "colour", "gender", "ideal_for", "usage", "occasion", "type", "material",
                          "pattern", "brand", "fabric", "design", "shade"})

#: A word: letters and digits, joined inside by - ' . & / ("T-shirt", "men's", "13.97", "white/black").
_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:[-'.&/][A-Za-z0-9]+)*")
MIN_WORDS, MAX_WORDS = 5, 16  # units (phrases count once); the checker's minimum is 5 words
#: Between words: a space, a comma or a full stop (then a space); the description ends with a full stop.
_SEPARATOR = "( |, |[.] )"  # plain groups: llama.cpp's pattern converter has no "(?:"

#: Attribute keys the model may add beyond the listing's own, with values read off the title.
TITLE_KEYS = ("brand", "color", "gender", "pattern")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text or "")


def _variants(word: str) -> set[str]:
    """The spellings a description may use for one listing word: as written; a lower-case or capitalised
    plain word also in the other case ("Grey"/"grey"); a possessive also without "'s" ("men's" → "men")."""
    out = {word}
    base = word[:-2] if word.lower().endswith("'s") and len(word) > 2 else None
    for w in (word, base) if base else (word,):
        out.add(w)
        if w.islower() or (w[:1].isupper() and w[1:].islower()):  # plain words only: "eCraftIndia" stays
            out.update({w.lower(), w[:1].upper() + w[1:].lower()})
    return out


def _runs(title_words: list[str], keep: Any) -> list[str]:
    """Maximal runs of consecutive title words that `keep` accepts, joined by spaces."""
    out: list[str] = []
    run: list[str] = []
    for w in [*title_words, ""]:
        if w and keep(w):
            run.append(w)
        elif run:
            out.append(" ".join(run))
            run = []
    return out


def _all_of(kind: frozenset[str]) -> Any:
    def ok(word: str) -> bool:
        toks = canon_tokens(word)
        return bool(toks) and all(t in kind for t in toks)
    return ok


def title_values(title: str) -> dict[str, list[str]]:
    """Values for :data:`TITLE_KEYS` read off a title by rule (see the module docstring)."""
    tw = words(title)
    out: dict[str, list[str]] = {
        "color": _runs(tw, _all_of(COLOURS)),
        "gender": [w for w in tw if _all_of(GENDER_AGE)(w)],
        "pattern": [w for w in tw if _all_of(PATTERNS)(w)],
    }
    # Myntra titles read "<Brand> <Gender> <colour> <type>": the words before the first gender word
    first = next((i for i, w in enumerate(tw) if _all_of(GENDER_AGE)(w)), None)
    if first is not None and 1 <= first <= 4:
        brand = tw[:first]
        if not any(_all_of(COLOURS)(w) or _all_of(PATTERNS)(w) or w[:1].isdigit() for w in brand):
            out["brand"] = [" ".join(brand)]
    return {k: list(dict.fromkeys(v)) for k, v in out.items() if v}


def _is_number(word: str) -> bool:
    return any(c.isdigit() for c in word) and not any(c.isalpha() for c in word)


def _number_units(ws: list[str]) -> set[str]:
    """A number only with a neighbour it has in the listing ("size 10", "20 cm", "7 Hole", "size 10 in"):
    SmolLM2 joined a lone "3" (a model id) and "1" (a count) into "3 in 1"."""
    out: set[str] = set()
    for i, w in enumerate(ws):
        if _is_number(w):
            if i > 0:
                out.add(f"{ws[i - 1]} {w}")
            if i + 1 < len(ws):
                out.add(f"{w} {ws[i + 1]}")
            if 0 < i < len(ws) - 1:
                out.add(f"{ws[i - 1]} {w} {ws[i + 1]}")
    return out


def _phrase_variants(phrase: str) -> set[str]:
    first, _, rest = phrase.partition(" ")
    return {f"{v} {rest}".strip() for v in _variants(first)}


@dataclass(frozen=True)
class Constraint:
    """What one product's answer may contain (see the module docstring)."""

    units: frozenset[str]  # what the description is made of: words, and a few phrases (brands, numbers)
    product_types: tuple[str, ...]
    attribute_values: dict[str, tuple[str, ...]]  # key → allowed values, in the order the answer lists them

    @classmethod
    def build(cls, norm: NormalizedProduct, listing_attributes: Sequence[tuple[str, str]], details: str
              ) -> Constraint:
        """From the product as the model is shown it: clean title, category, listed attributes, details."""
        # free text: the title, the category, the details and the whole product's attribute values
        free: list[str] = [norm.title, *norm.category, "" if details == "none" else details]
        attrs: dict[str, tuple[str, ...]] = {}
        named: list[tuple[str, str]] = []  # (name, value) said only together
        for k, v in listing_attributes:
            attrs[k] = (v,)
            if k in PRODUCT_KEYS:
                free.append(v)
            named.append((k, v))
        from_title = title_values(norm.title)
        for k, vals in from_title.items():
            if k not in attrs:
                attrs[k] = tuple(vals)
        # a brand of several words is one unit: SmolLM2 wrote "United of Benetton" for United Colors of Benetton
        brands = {b for b in (*attrs.get("brand", ()), *from_title.get("brand", ())) if len(words(b)) > 1}
        units: set[str] = {v for c in CONNECTORS for v in _variants(c)}  # "A" opens a sentence
        for brand in brands:
            units |= _phrase_variants(" ".join(words(brand)))
        bound: set[str] = set()  # "for X", "in X" allowed by what X is
        for text in free:
            for brand in sorted(brands, key=len, reverse=True):
                text = re.sub(rf"(?<![\w]){re.escape(brand)}(?![\w])", " , ", text)
            for part in re.split(r"[,;:()]", text):  # a phrase never spans a comma (the check splits there)
                ws = words(part)
                units |= {v for w in ws if not _is_number(w) and w.lower() not in BINDING for v in _variants(w)}
                units |= {v for ph in _number_units(ws) for v in _phrase_variants(ph)}
                # the listing's own binding phrases, with both neighbours ("Set of 3", "Cream With Vitamin-E")
                units |= {v for i in range(1, len(ws) - 1) if ws[i].lower() in BINDING
                          for v in _phrase_variants(f"{ws[i - 1]} {ws[i]} {ws[i + 1]}")}
                for w in ws:
                    toks = canon_tokens(w)
                    if toks and all(t in GENDER_AGE for t in toks):
                        bound.add(f"for {w}")
                    if toks and all(t in COLOURS or t in MATERIALS for t in toks):
                        bound.add(f"in {w}")
        for k, v in named:
            name = " ".join(words(k.replace("_", " ")))
            if v.lower() == "yes":  # "water resistant" says it all
                units |= _phrase_variants(name)
                continue
            for part in re.split(r"[,;:()]", v):
                val = " ".join(words(part))
                if val:
                    units |= _phrase_variants(f"{name} {val}") | _phrase_variants(f"{val} {name}")
        for k, v in listing_attributes:
            if k in _FOR_KEYS:
                bound |= {f"for {w}" for w in words(v) if not _is_number(w) and w.lower() not in BINDING}
        units |= {v for ph in bound for v in _phrase_variants(ph) | {ph.split(" ", 1)[0] + " " + x
                                                                    for x in _variants(ph.split(" ", 1)[1])}}
        # the leaf, not the upper levels: SmolLM2 picked "Footwear" for sports shoes when it could
        types = [norm.category[-1]] if norm.category else []
        types += [v for k, v in listing_attributes if k in ("type", "product_type", "article_type")]
        types = [t for t in dict.fromkeys(types) if t.strip()] or [norm.title]
        return cls(units=frozenset(units), product_types=tuple(types), attribute_values=attrs)

    @property
    def vocabulary(self) -> frozenset[str]:
        """The single words a description may use anywhere (phrases aside)."""
        return frozenset(u for u in self.units if " " not in u)

    # -------------------------------------------------------------------- as a schema
    def description_pattern(self) -> str:
        # a unit holds only letters, digits, spaces and - ' & / . (see _WORD_RE); "." is the one regex
        # metacharacter and is written "[.]": llama.cpp's converter turns "\\." into a GBNF escape its parser
        # rejects (and llama.cpp then crashes), and its patterns know no "(?:", so the groups are plain
        alts = "|".join(sorted((u.replace(".", "[.]") for u in self.units), key=lambda u: (-len(u), u)))
        unit = f"({alts})"
        return f"^{unit}({_SEPARATOR}{unit}){{{MIN_WORDS - 1},{MAX_WORDS - 1}}}[.]$"

    def schema(self) -> dict[str, Any]:
        """The answer's JSON schema: product_type and attribute values from lists, the description a
        pattern over the vocabulary. Keys in the order the model writes them."""
        props = {k: {"type": "string", "enum": list(v)} for k, v in self.attribute_values.items()}
        return {
            "type": "object",
            "properties": {
                "product_type": {"type": "string", "enum": list(self.product_types)},
                "attributes": {"type": "object", "properties": props, "additionalProperties": False},
                "description": {"type": "string", "pattern": self.description_pattern()},
            },
            "required": ["product_type", "attributes", "description"],
            "additionalProperties": False,
        }

    # -------------------------------------------------------------------- as a check
    def outside(self, text: str) -> list[str]:
        """Words of `text` that no unit covers (in order, each once): each separator-delimited chunk must be a
        sequence of units."""
        bad: list[str] = []
        longest = max((len(u.split()) for u in self.units), default=1)
        for chunk in re.split(r"[,;:!?]+\s*|\.+(?=\s|$)\s*|\s+-\s+", text or ""):  # not "4.5"
            ws = words(chunk)
            n = len(ws)
            reach = [False] * (n + 1)  # reach[i]: ws[:i] is a sequence of units
            reach[0] = True
            for i in range(n):
                if not reach[i]:
                    continue
                for j in range(i + 1, min(n, i + longest) + 1):
                    if " ".join(ws[i:j]) in self.units:
                        reach[j] = True
            if not reach[n]:
                last = max(i for i in range(n + 1) if reach[i])
                bad.append(ws[last])
        return list(dict.fromkeys(bad))

    def violations(self, output: Any) -> list[Issue]:
        """The constraint as checker issues (for backends that do not enforce the schema)."""
        if not isinstance(output, dict):
            return []
        issues: list[Issue] = []
        desc = output.get("description")
        if isinstance(desc, str):
            for w in self.outside(desc)[:8]:
                why = (f"'{w}' is not a word of the listing; use only the listing's words" if w.lower() not in BINDING
                       else f"'{w}' may only join what the listing joins ('for' + who it is for, 'in' + its colour)")
                issues.append(Issue("outside_vocabulary", "description", w, why))
        attrs = output.get("attributes")
        if isinstance(attrs, dict):
            for k, v in attrs.items():
                allowed = self.attribute_values.get(str(k))
                if allowed is None or str(v) not in allowed:
                    issues.append(Issue("unsupported_attribute", f"attributes.{k}", str(v),
                                        f"attribute '{k}: {v}' is not one of the listing's values for '{k}'"
                                        if allowed else f"attribute '{k}' is not in the listing"))
        pt = output.get("product_type")
        if isinstance(pt, str) and pt not in self.product_types:
            issues.append(Issue("unsupported_product_type", "product_type", pt,
                                f"product type '{pt}' is not one of: {', '.join(self.product_types[:4])}"))
        return issues

    def enforce(self, output: dict[str, Any]) -> dict[str, Any]:
        """`output` with everything that breaks the constraint removed: description sentences holding a word
        outside the vocabulary, attribute values not on the list, a product type not on the list (→ the first
        allowed one)."""
        desc = output.get("description") if isinstance(output.get("description"), str) else ""
        kept = [s for s in _sentences(desc) if not self.outside(s)]
        attrs = output.get("attributes") if isinstance(output.get("attributes"), dict) else {}
        pt = output.get("product_type")
        return {"description": " ".join(kept),
                "attributes": {k: v for k, v in attrs.items() if str(v) in self.attribute_values.get(str(k), ())},
                "product_type": pt if pt in self.product_types else self.product_types[0]}


def close_truncated(answer: str) -> str:
    """A grammar-constrained answer cut off inside its description (max_tokens), closed after its last whole
    clause: ``…"description": "A, B, C, D`` → ``…"description": "A, B, C."}``. Only removes text; an answer
    cut anywhere else is returned as it is (and fails to parse)."""
    key = '"description"'
    at = answer.rfind(key)
    if at < 0 or answer.rstrip().endswith("}"):
        return answer
    start = answer.find('"', at + len(key) + 1)
    if start < 0:
        return answer
    body = answer[start + 1:]
    cut = max(body.rfind(", "), body.rfind(". "))
    if cut <= 0:
        return answer
    return answer[: start + 1] + body[:cut].rstrip(" ,.") + '."}'


def tidy(text: str) -> str:
    """Repeats out: a sentence said before, a comma clause said before in the same sentence (a small model
    under a grammar loops: "3 in 1, 3 in 1, 3 in 1"). Removes words only, never adds any."""
    out: list[str] = []
    seen: set[str] = set()
    for sent in _sentences(text):
        body, end = (sent[:-1], sent[-1]) if sent[-1] in ".!?" else (sent, ".")
        clauses: list[str] = []
        for c in (c.strip() for c in body.split(",")):
            if c and c.lower() not in (x.lower() for x in clauses):
                clauses.append(c)
        sent = ", ".join(clauses) + end
        key = " ".join(words(sent.lower()))
        if clauses and key not in seen:
            seen.add(key)
            out.append(sent)
    return " ".join(out)


def _sentences(text: str) -> Iterable[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
