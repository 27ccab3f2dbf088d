"""Deterministic faithfulness checks: is everything an enrichment says backed by its source?

The small local LLMs invent details (colours, materials, years, brands, "waterproof"); these
checks are what make their output usable. They run before any model opinion, cost ~0.2 ms a
product, and are the judge of the hallucination numbers in ``bench/results/enrich.json``.

Matching is on *canonical tokens* (:func:`canon_tokens`): lower case, abbreviations and colour
codes expanded (wht → white), colour/gender/material synonyms merged (gray → grey, mens → men,
wooden → wood), plurals folded (kurtas → kurta, watches → watch), units spelled one way
(10ml → 10 ml), thousands separators dropped. The source is the raw title, description,
category path and attribute keys and values, plus hyphen-joined neighbours so "T-shirt" and
"tshirt" meet.

Checks and their verdict names (``CheckReport.verdicts``):

* ``required_fields`` — description (str), attributes (object of str → str), product_type (str);
* ``length_ok`` — description within [min_chars, max_chars] and >= min_words; at most
  ``max_attributes`` attributes, keys <= 40 and values <= 120 chars;
* ``attributes_supported`` — every attribute value's content tokens occur in the source
  (yes/no values need a source attribute with the same key and value);
* ``product_type_supported`` — the product type's tokens occur in the source;
* ``attributes_supported`` also type-checks a value against its key: a value of another kind
  ("usage: Women", "fit: Solid", "material: Grey"), or one that shares nothing with the source's
  own value for the same key ("type: Wristwatch" where the source says "type: Analog",
  "machine_washable: IWS Cotton Bath Towel" where it says "Yes"), is unsupported;
* ``description_supported`` — no number, colour, material, gender/age word, construction detail
  ("long sleeves", "zip pocket") or capitalised name in the description that the source lacks, and
  at most ``max_novel_ratio`` of its content words new;
* ``no_price`` — no price, currency or discount anywhere in the output ("Rs. 499", "₹499",
  "rupees 499", "499/-"; prices go stale and were stripped from the cleaned source; this is
  stricter than "absent from the source");
* ``no_new_claims`` — no marketing/quality/care claim ("waterproof", "premium", "soft, breezy",
  "machine washable") the source lacks;
* ``no_new_brands`` — no known brand name the source lacks, and no unknown maker either: the word
  after "by" ("by biba") or a sentence-opening name followed by a maker verb ("Biba makes this …");
* ``not_repetitive`` — no 3-word phrase repeated 3+ times (small models loop).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from shopclip.enrich.normalize import (
    ABBREVIATIONS,
    COLOUR_CODES,
    KNOWN_BRANDS,
    basic_clean,
    normalize_text,
    normalize_units,
)

# ---------------------------------------------------------------------------- lexicons


def _words(text: str) -> frozenset[str]:
    """A word list written as a block of text."""
    return frozenset(text.split())


SYNONYMS: dict[str, str] = {
    "gray": "grey", "grey": "grey", "mens": "men", "man": "men", "male": "men", "gents": "men",
    "gentleman": "men", "gentlemen": "men", "womens": "women", "woman": "women", "female": "women",
    "ladies": "women", "lady": "women", "kids": "kid", "children": "kid", "child": "kid", "childrens": "kid",
    "infant": "baby", "infants": "baby", "toddler": "baby",
    "multicolor": "multicolour", "multicolored": "multicolour", "multicoloured": "multicolour",
    "multi": "multicolour", "multicolors": "multicolour", "colorful": "colourful", "colour": "color",
    "wooden": "wood", "golden": "gold", "silvery": "silver", "aluminum": "aluminium", "jewelry": "jewellery",
    "tee": "tshirt", "tees": "tshirt", "sneakers": "sneaker", "trainers": "sneaker", "spectacles": "eyeglass",
    "handcrafted": "handmade", "stainless": "stainless", "litre": "l", "liter": "l", "ltr": "l",
    "inches": "inch", "cms": "cm", "gms": "g", "gm": "g", "grams": "g", "kgs": "kg", "pcs": "piece",
    "pc": "piece", "pieces": "piece", "analogue": "analog", "favourite": "favorite", "centre": "center",
    "jeggings": "jegging", "off-white": "offwhite", "navy": "navy",
}

COLOURS = _words("""
black white grey red blue green yellow pink purple orange brown beige maroon navy silver gold olive
cream tan charcoal copper khaki magenta lavender peach teal turquoise bronze mustard burgundy taupe rust
fuchsia fushia violet indigo ivory mauve coral aqua cyan lime mint rose wine nude camel offwhite
multicolour transparent clear metallic sky skin ecru mahogany plum lilac scarlet crimson amber
""")

MATERIALS = _words("""
cotton leather silk wool woollen polyester nylon denim steel plastic wood glass ceramic rubber canvas
suede linen rayon viscose spandex lycra elastane metal aluminium brass copper iron bamboo jute velvet
satin chiffon georgette fleece mesh porcelain stainless acrylic crepe chanderi khadi modal tweed
corduroy cashmere pu faux synthetic marble stone resin terracotta melamine silicone titanium zinc alloy
paper cardboard fabric microfiber microfibre poly
""")

GENDER_AGE = _words("men women boy girl kid baby unisex teen adult")

#: What a product is for (Myntra's "usage"), its surface pattern and its cut: attribute value kinds.
USAGES = _words("casual formal ethnic sport sports party smart partywear sportswear festive wedding")
PATTERNS = _words("""
solid printed print striped stripe checked check checkered floral abstract geometric polka dot plain
woven textured colourblocked colorblocked camouflage graphic typography paisley ombre
""")
FITS = _words("slim regular relaxed loose skinny straight tapered oversized bootcut")

#: Marketing and quality claims, flagged unless the source makes them too (canonical, joined by space).
CLAIMS = _words("""
waterproof water-resistant durable premium luxury luxurious best guaranteed guarantee warranty certified
organic natural handmade eco-friendly ecofriendly sustainable breathable lightweight hypoallergenic
antibacterial anti-bacterial genuine authentic original award award-winning bestselling bestseller
top-rated superior high-quality unbreakable scratch-proof rust-proof fireproof shockproof dermatologically
clinically proven doctor recommended ultimate world-class exclusive limited patented
non-toxic toxin-free chemical-free bpa-free 100% imported
soft softer softest breezy airy cozy cosy comfy snug stretchy stretchable silky plush fluffy
washable absorbent insulated leakproof skidproof ergonomic cushioned padded foldable rechargeable
""")
_CLAIM_PHRASES = ("high quality", "top quality", "water resistant", "long lasting", "stain resistant",
                  "wrinkle free", "fade resistant", "skin friendly", "easy to clean", "one of a kind",
                  "made in", "lifetime", "money back", "machine wash", "hand wash", "dry clean", "quick dry",
                  "easy care", "non slip", "anti slip", "leak proof", "skid proof", "slip resistant",
                  "moisture wicking", "dishwasher safe", "microwave safe", "wrinkle resistant")

#: Construction details a listing states or not (canonical, singular): said without the source, invented.
DETAILS = _words("""
sleeve sleeveless collar collared hood hooded pocket zip zipper zipped button buttoned drawstring lace laced
lining lined embroidered embroidery sequin sequinned beaded neck neckline turtleneck waistband insole outsole
""")

#: Well-known brands (lower case); any other brand is caught by the capitalised-name rule.
BRANDS = KNOWN_BRANDS

STOPWORDS = _words("""
a an the and or of for with to in on at by from as is are be this that it its it's these those into
onto over under per via your you our their his her they them we can will which who while also than
then so such very more most other each any all some both either up out off not no yes but if when where
set pack made piece one two three about
""")

#: Neutral words a faithful description may use without the source saying them.
GLUE = _words("""
product item items features feature featuring featured design designed designs style styled stylish
look looks looking great good nice ideal suitable perfect use used uses using usage wear worn wearing
everyday daily day occasion occasions regular classic simple clean finish finished detail details
detailing pair pairs comes come available offers offer provides provide adds add keep keeps keeping
made crafted make makes shape shaped size sized fit fits fitting comfort comfortable easy easily
practical functional versatile modern traditional elegant smart sleek casual formal home office
outdoor indoor travel everyday collection range type model series version variant edition
solid printed print pattern patterned plain textured texture neat tidy front back side top bottom
inside outside upper lower body part parts piece pieces unit units set sets kit kits sized
colour color colours colors shade shades tone tones hue featuring boasts boast showcases showcase
description product's brand brand's new own well just like look great any many much few
description it this that which wear pair ideal choice option addition add complement complete
""")

#: Price amounts and discounts: never allowed in an enrichment.
_PRICE_RE = re.compile(
    r"(?:\b(?:rs\.?|inr|usd|eur|mrp|rupees?|dollars?)|₹|\$|€|£)\s*:?\s*\d[\d,.]*|"
    r"\b\d[\d,]*\s*(?:rs|rupees?|inr|dollars?|usd)\b|\b\d[\d,]*(?:\.\d+)?\s*/-|\b\d+\s*%\s*off\b",
    re.I,
)
#: Price talk without an amount: allowed only when the source says it too.
_PRICE_WORDS = _words("price priced discount discounted sale cheap cheapest cost mrp")
_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[a-z][a-z0-9]*")
# a capitalised word not starting a sentence and not part of a code ("Dv6", "T-Shirt", "You'Re")
_CAP_RE = re.compile(r"(?<![.!?]\s)(?<!^)(?<![\w'’\-])([A-Z][a-zA-Z'’]*[a-zA-Z])(?![\w'’\-])")
# "by <maker>" in any case ("by biba", "by Biba"): a brand the checker's list cannot know
_BY_RE = re.compile(r"\bby\s+(?:the\s+)?([A-Za-z][\w'’&\-]*)", re.I)
# a sentence opening with a name that then acts as the maker ("Biba makes this", "Biba's kurta")
_LEAD_MAKER_RE = re.compile(
    r"(?:^|(?<=[.!?])\s+)([A-Z][a-zA-Z'’\-]*[a-zA-Z])(?:'s\b|’s\b|\s+(?:makes|made|offers|brings|presents|introduces|"
    r"designs|designed|creates|created|crafts|crafted|manufactures|manufactured|launches|is\s+proud)\b)")
#: Objects of "by" that are not makers (people in general, manners); participles and adverbs
#: ("by the renowned …", "by simply …") are skipped by their ending.
_BY_NOT_MAKERS = _words("""
hand machine far default itself nature anyone everyone everybody anybody someone somebody people person
all many most others anybody users user customers customer wearers wearer buyers buyer individuals those
""")
_NOT_A_NAME_END = ("ed", "ing", "ly")


# ---------------------------------------------------------------------------- canonical tokens


def singular(tok: str) -> str:
    """A crude English singular: enough to make both sides of a comparison agree."""
    if len(tok) <= 3 or tok.isdigit() or tok in {"jeans", "shorts", "trousers", "glasses", "sunglasses"}:
        return {"jeans": "jean", "shorts": "short", "trousers": "trouser", "glasses": "glass",
                "sunglasses": "sunglass"}.get(tok, tok)
    if tok.endswith("ies") and len(tok) > 4:
        return tok[:-3] + "y"
    if tok.endswith(("ches", "shes", "sses", "xes", "zes")):
        return tok[:-2]
    if tok.endswith("ves") and tok[:-3] + "f" in {"scarf", "shelf", "leaf", "half", "wolf"}:
        return tok[:-3] + "f"
    if tok.endswith("knives"):
        return tok[:-3] + "fe"
    if tok.endswith("s") and not tok.endswith(("ss", "us", "is")):
        return tok[:-1]
    return tok


def canon_token(tok: str) -> str:
    tok = COLOUR_CODES.get(tok, tok)
    exp = ABBREVIATIONS.get(tok)
    if exp and " " not in exp:
        tok = exp.lower().replace("'", "").replace("-", "")
    tok = SYNONYMS.get(tok, tok)
    tok = singular(tok)
    tok = SYNONYMS.get(tok, tok)
    if re.fullmatch(r"\d+\.\d+", tok):
        tok = tok.rstrip("0").rstrip(".")
    return tok


def canon_tokens(text: Any) -> list[str]:
    """Canonical tokens of any text (see the module docstring)."""
    s = normalize_units(basic_clean(text)).lower()
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,112 → 1112
    s = s.replace("&", " and ").replace("'s", "").replace("'", "")
    s = re.sub(r"\bt[\s-]shirts?\b", "tshirt", s)
    return [canon_token(t) for t in _TOKEN_RE.findall(s)]


def _content(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t not in STOPWORDS]


@dataclass
class SourceIndex:
    """Everything a product's listing says, as canonical tokens (+ joined neighbours)."""

    tokens: set[str]
    attributes: dict[str, str]  # canonical key ("strap color") → canonical value ("black")
    text: str  # canonical tokens joined by spaces, for phrase look-ups

    @classmethod
    def from_product(cls, product: Any) -> SourceIndex:
        get = (lambda k: product.get(k)) if isinstance(product, dict) else (lambda k: getattr(product, k, None))
        attrs = dict(get("attributes") or {})
        fields = [str(get("title") or ""), str(get("description") or ""), " ".join(get("category") or [])]
        fields += [f"{str(k).replace('_', ' ')} {v}" for k, v in attrs.items()]
        toks: list[str] = []
        for f in fields:
            ft = canon_tokens(f)
            toks.extend(ft)
            toks.extend(a + b for a, b in zip(ft, ft[1:], strict=False))  # "non stick" ~ "nonstick"
            toks.append(" ")  # field boundary for the joined text
        # normalised forms too: "Tshirts" → "T-shirt" and back
        toks.extend(canon_tokens(normalize_text(get("title") or "", is_title=True)))
        canon_attrs = {" ".join(canon_tokens(str(k).replace("_", " "))): " ".join(canon_tokens(v))
                       for k, v in attrs.items()}
        return cls(tokens={t for t in toks if t.strip()}, attributes=canon_attrs, text=" ".join(toks))

    def missing(self, text: Any) -> list[str]:
        """Content tokens of `text` that the source lacks (a joined pair counts as found)."""
        toks = _content(canon_tokens(text))
        out: list[str] = []
        i = 0
        while i < len(toks):
            t = toks[i]
            if t in self.tokens:
                i += 1
                continue
            if i + 1 < len(toks) and t + toks[i + 1] in self.tokens:
                i += 2
                continue
            out.append(t)
            i += 1
        return out

    def has_phrase(self, phrase: str) -> bool:
        p = " ".join(canon_tokens(phrase))
        return bool(p) and f" {p} " in f" {self.text} "


# ---------------------------------------------------------------------------- report


@dataclass
class Issue:
    code: str  # machine-readable: unsupported_attribute, unsupported_number, price, claim, brand, ...
    field: str  # description | attributes.<key> | product_type | <top-level>
    value: str  # the offending text (a token, a phrase or a value)
    reason: str  # a sentence for the refine prompt and for people

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


VERDICTS = ("required_fields", "length_ok", "attributes_supported", "product_type_supported",
            "description_supported", "no_price", "no_new_claims", "no_new_brands", "not_repetitive")
_VERDICT_OF = {
    "missing_field": "required_fields", "bad_type": "required_fields",
    "too_short": "length_ok", "too_long": "length_ok", "too_many_attributes": "length_ok",
    "unsupported_attribute": "attributes_supported", "unsupported_product_type": "product_type_supported",
    "unsupported_number": "description_supported", "unsupported_colour": "description_supported",
    "unsupported_material": "description_supported", "unsupported_gender": "description_supported",
    "unsupported_name": "description_supported", "off_source": "description_supported",
    "unsupported_detail": "description_supported",
    "example_copy": "description_supported", "outside_vocabulary": "description_supported",
    "price": "no_price", "claim": "no_new_claims", "brand": "no_new_brands", "repetition": "not_repetitive",
}


@dataclass
class CheckReport:
    issues: list[Issue] = field(default_factory=list)
    n_attr_values: int = 0
    n_attr_unsupported: int = 0

    @property
    def passed(self) -> bool:
        return not self.issues

    @property
    def verdicts(self) -> dict[str, bool]:
        bad = {_VERDICT_OF.get(i.code, i.code) for i in self.issues}
        return {v: v not in bad for v in VERDICTS}

    def reasons(self, limit: int = 8) -> list[str]:
        seen: list[str] = []
        for i in self.issues:
            if i.reason not in seen:
                seen.append(i.reason)
        return seen[:limit]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdicts": self.verdicts, "issues": [i.to_dict() for i in self.issues],
                "n_attr_values": self.n_attr_values, "n_attr_unsupported": self.n_attr_unsupported}


@dataclass
class CheckConfig:
    min_chars: int = 25
    max_chars: int = 600
    min_words: int = 5
    max_attributes: int = 20
    max_novel_ratio: float = 0.5  # share of the description's content words the source lacks
    min_content_words_for_ratio: int = 4


# ---------------------------------------------------------------------------- the checker


def _is_yes_no(value: str) -> bool:
    return value.strip().lower() in {"yes", "no", "true", "false", "y", "n"}


_YES_NO = {"yes": "yes", "y": "yes", "true": "yes", "no": "no", "n": "no", "false": "no"}
_EMPTY_CANON = frozenset({"", "na", "n a", "none", "nil", "null", "not applicable"})


def _key_kind(key: str) -> str | None:
    k = key.lower().replace(" ", "_")
    if "material" in k or "fabric" in k:
        return "material"
    if "colo" in k or k in {"shade"}:
        return "colour"
    if k in {"gender", "ideal_for", "for"}:
        return "gender"
    if k == "brand":
        return "brand"
    if k in {"usage", "occasion"}:
        return "usage"
    if k in {"pattern", "print"}:
        return "pattern"
    if k in {"fit", "fit_type"}:
        return "fit"
    return None


#: Value kinds recognised by their words, and how a reason names them.
_VALUE_KINDS: dict[str, tuple[frozenset[str], str]] = {
    "colour": (COLOURS, "a colour"), "material": (MATERIALS, "a material"),
    "gender": (GENDER_AGE, "who the product is for"), "usage": (USAGES, "a usage"),
    "pattern": (PATTERNS, "a pattern"), "fit": (FITS, "a fit"),
}


def _kind_issue(key: str, value: str, vt: list[str], src: SourceIndex) -> Issue | None:
    """A value of the wrong kind for its key: 'material: Grey', 'color: Ethnic', 'brand: W Women'."""
    kind = _key_kind(key)
    content = [t for t in vt if t not in STOPWORDS]
    if not kind or not content:
        return None
    same = src.attributes.get(" ".join(canon_tokens(key.replace("_", " "))))
    if same is not None and set(same.split()) & set(content):
        return None  # the source says exactly this for this key
    bad = None
    if kind == "material" and all(t in COLOURS and t not in MATERIALS for t in content):
        bad = "is a colour, not a material"
    elif kind == "colour" and not any(t in COLOURS for t in content):
        bad = "is not a colour"
    elif kind == "gender" and not all(t in GENDER_AGE for t in content):
        bad = "is not who the product is for"
    elif kind == "brand" and any(t in GENDER_AGE or t in COLOURS for t in content):
        bad = "mixes the brand with a gender or colour word"
    elif kind in {"usage", "pattern", "fit"}:  # wholly a value of another kind: "usage: Women", "fit: Solid"
        own = _VALUE_KINDS[kind][0]
        for other, (words, name) in _VALUE_KINDS.items():
            if other != kind and all(t in words for t in content) and not any(t in own for t in content):
                bad = f"is {name}, not a {kind}"
                break
    if bad:
        return Issue("unsupported_attribute", f"attributes.{key}", value, f"attribute '{key}: {value}': '{value}' {bad}")
    return None


def check_attribute(key: str, value: str, src: SourceIndex) -> Issue | None:
    v = value.strip().lower()
    if v in _YES_NO:  # a bare yes/no is only backed by a source attribute of the same name saying so
        k = " ".join(canon_tokens(key.replace("_", " ")))
        if _YES_NO.get(src.attributes.get(k, ""), src.attributes.get(k)) == _YES_NO[v]:
            return None
        return Issue("unsupported_attribute", f"attributes.{key}", value,
                     f"attribute '{key}: {value}' is not stated in the source")
    missing = src.missing(value)
    if missing:
        return Issue("unsupported_attribute", f"attributes.{key}", value,
                     f"attribute '{key}: {value}' is not supported by the source (no '{' '.join(missing[:3])}')")
    vt = canon_tokens(value)
    if issue := _kind_issue(key, value, vt, src):
        return issue
    # the source gives this very key another value: its words elsewhere in the listing do not make it
    # this key's value ("machine_washable: IWS Cotton Bath Towel" where the source says Yes)
    same = src.attributes.get(" ".join(canon_tokens(key.replace("_", " "))))
    content = {t for t in vt if t not in STOPWORDS}
    if same and same not in _EMPTY_CANON and content and not (set(same.split()) & content):
        return Issue("unsupported_attribute", f"attributes.{key}", value,
                     f"attribute '{key}: {value}' contradicts the source's {key}: {same}")
    return None


def _repeated_trigram(tokens: list[str], src: SourceIndex) -> str | None:
    """A 3-word phrase said 3+ times (a looping model) — unless the source repeats it as much."""
    grams = Counter(tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2))
    for g, n in grams.most_common(3):
        if n >= 3 and f" {' '.join(g)} " in f" {src.text} " and src.text.count(f" {' '.join(g)} ") >= n:
            continue
        if n >= 3:
            return " ".join(g)
    return None


def check_text(text: str, src: SourceIndex, fieldname: str = "description",
               cfg: CheckConfig | None = None, leak: frozenset[str] = frozenset()) -> list[Issue]:
    """Free-text checks: numbers, colours, materials, gender, names, brands, claims, prices, novelty, and
    words copied from the prompt's few-shot examples (``leak``) that the source lacks."""
    cfg = cfg or CheckConfig()
    issues: list[Issue] = []
    if m := _PRICE_RE.search(text):
        issues.append(Issue("price", fieldname, m.group(0).strip().rstrip(".,"),
                            "do not mention prices, discounts or costs"))
    toks = canon_tokens(text)
    seen: set[tuple[str, str]] = set()

    def add(code: str, value: str, reason: str) -> None:
        if (code, value) not in seen:
            seen.add((code, value))
            issues.append(Issue(code, fieldname, value, reason))

    for t in toks:
        if t in src.tokens:
            continue
        if t[0].isdigit():
            add("unsupported_number", t, f"the number '{t}' is not in the source")
        elif t in COLOURS:
            add("unsupported_colour", t, f"the colour '{t}' is not in the source")
        elif t in MATERIALS:
            add("unsupported_material", t, f"the material '{t}' is not in the source")
        elif t in GENDER_AGE:
            add("unsupported_gender", t, f"'{t}' (who it is for) is not in the source")
        elif t in BRANDS:
            add("brand", t, f"the brand '{t}' is not in the source")
        elif t in CLAIMS or t.replace("-", "") in CLAIMS:
            add("claim", t, f"the claim '{t}' is not made by the source")
        elif t in _PRICE_WORDS:
            add("price", t, f"do not talk about '{t}' (prices, discounts, offers)")
        elif t in DETAILS:
            add("unsupported_detail", t, f"the detail '{t}' is not in the source")
        elif t in leak:
            add("example_copy", t, f"'{t}' comes from the examples, not from this listing")
    low = " ".join(toks)
    for phrase in _CLAIM_PHRASES:
        cp = " ".join(canon_tokens(phrase))
        if f" {cp} " in f" {low} " and not src.has_phrase(phrase):
            add("claim", phrase, f"the claim '{phrase}' is not made by the source")
    clean = basic_clean(text)
    # makers the brand list cannot know: "by biba", "Biba makes this …" (a name opening a sentence is
    # otherwise indistinguishable from an ordinary first word, so only the maker pattern counts)
    makers = [m.group(1) for m in _BY_RE.finditer(clean)] + [m.group(1) for m in _LEAD_MAKER_RE.finditer(clean)]
    for word in makers:
        ct = canon_tokens(word)
        if not ct or ct[0] in src.tokens or ct[0] in STOPWORDS or ct[0] in GLUE or ct[0] in _BY_NOT_MAKERS \
                or ct[0] in COLOURS or ct[0] in MATERIALS or ct[0] in GENDER_AGE or ct[0][0].isdigit() \
                or ct[0].endswith(_NOT_A_NAME_END):
            continue
        add("brand", ct[0], f"the maker '{word}' is not in the source")
    # capitalised names mid-sentence (brands, places, films) that the source never mentions
    for m in _CAP_RE.finditer(clean):
        word = m.group(1)
        ct = canon_tokens(word)
        if not ct:
            continue
        c = ct[0]
        if c in src.tokens or c in STOPWORDS or c in GLUE or c in COLOURS or c in MATERIALS or c in GENDER_AGE:
            continue
        add("unsupported_name", word, f"the name '{word}' is not in the source")
    content = [t for t in _content(toks) if len(t) > 2 and not t[0].isdigit()]
    if len(content) >= cfg.min_content_words_for_ratio:
        novel = [t for t in content if t not in src.tokens and t not in GLUE]
        ratio = len(novel) / len(content)
        if ratio > cfg.max_novel_ratio:
            add("off_source", f"{ratio:.2f}",
                f"{ratio:.0%} of the words are not from the source (e.g. {', '.join(sorted(set(novel))[:4])})")
    if rep := _repeated_trigram(toks, src):
        add("repetition", rep, f"the phrase '{rep}' is repeated")
    return issues


def check_output(output: Any, product: Any, cfg: CheckConfig | None = None,
                 src: SourceIndex | None = None, leak: frozenset[str] = frozenset()) -> CheckReport:
    """Run every check on a parsed enrichment {description, attributes, product_type}.

    ``leak``: canonical tokens of the prompt's few-shot answers (:func:`example_tokens`); a small model
    copies them ("Zentra ZR12", "party wear") into unrelated products."""
    cfg = cfg or CheckConfig()
    src = src or SourceIndex.from_product(product)
    rep = CheckReport()
    if not isinstance(output, dict):
        rep.issues.append(Issue("bad_type", "output", type(output).__name__, "the output must be a JSON object"))
        return rep
    desc = output.get("description")
    attrs = output.get("attributes")
    ptype = output.get("product_type")
    for name, val, typ in (("description", desc, str), ("attributes", attrs, dict), ("product_type", ptype, str)):
        if val is None:
            rep.issues.append(Issue("missing_field", name, "", f"the field '{name}' is missing"))
        elif not isinstance(val, typ):
            rep.issues.append(Issue("bad_type", name, type(val).__name__,
                                    f"'{name}' must be a {'string' if typ is str else 'JSON object'}"))
    if isinstance(desc, str):
        n_words = len(desc.split())
        if len(desc.strip()) < cfg.min_chars or n_words < cfg.min_words:
            rep.issues.append(Issue("too_short", "description", desc[:40],
                                    f"the description must be at least {cfg.min_words} words"))
        elif len(desc) > cfg.max_chars:
            rep.issues.append(Issue("too_long", "description", str(len(desc)),
                                    f"the description must be under {cfg.max_chars} characters"))
        rep.issues.extend(check_text(desc, src, "description", cfg, leak))
    if isinstance(attrs, dict):
        if len(attrs) > cfg.max_attributes:
            rep.issues.append(Issue("too_many_attributes", "attributes", str(len(attrs)),
                                    f"give at most {cfg.max_attributes} attributes"))
        for k, v in attrs.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                rep.issues.append(Issue("bad_type", f"attributes.{k}", type(v).__name__,
                                        f"attribute '{k}' must be a string"))
                continue
            v = str(v)
            if not v.strip() or len(str(k)) > 40 or len(v) > 120:
                rep.issues.append(Issue("too_long" if v.strip() else "too_short", f"attributes.{k}", v[:40],
                                        f"attribute '{k}' must be a short non-empty value"))
                continue
            rep.n_attr_values += 1
            issue = check_attribute(str(k), v, src)
            if issue is None and (copied := [t for t in canon_tokens(v) if t in leak and t not in src.tokens]):
                issue = Issue("unsupported_attribute", f"attributes.{k}", v,
                              f"attribute '{k}: {v}' copies '{copied[0]}' from the examples, not from this listing")
            if issue:
                rep.n_attr_unsupported += 1
                rep.issues.append(issue)
            if _PRICE_RE.search(v):
                rep.issues.append(Issue("price", f"attributes.{k}", v, "do not mention prices, discounts or costs"))
    if isinstance(ptype, str):
        if not ptype.strip() or len(ptype.split()) > 8:
            rep.issues.append(Issue("too_long" if ptype.strip() else "too_short", "product_type", ptype[:40],
                                    "product_type must be 1 to 8 words"))
        elif missing := src.missing(ptype):
            rep.issues.append(Issue("unsupported_product_type", "product_type", ptype,
                                    f"product type '{ptype}' is not supported by the source (no '{missing[0]}')"))
    return rep


def example_tokens(answers: list[dict[str, Any]]) -> frozenset[str]:
    """Content words of few-shot example answers (descriptions and attribute values), minus glue words:
    what a copying model would leak into other products."""
    toks: set[str] = set()
    for a in answers:
        toks.update(canon_tokens(a.get("description", "")))
        for v in (a.get("attributes") or {}).values():
            toks.update(canon_tokens(v))
        toks.update(canon_tokens(a.get("product_type", "")))
    return frozenset(t for t in toks if t not in STOPWORDS and t not in GLUE and len(t) > 1)


# ---------------------------------------------------------------------------- repair


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def repair(output: dict[str, Any], report: CheckReport, product: Any, src: SourceIndex | None = None,
           cfg: CheckConfig | None = None, leak: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Remove what the checks flagged: unsupported attributes, sentences carrying unsupported content,
    an unsupported product type (→ the category leaf). The caller re-checks and may still fall back."""
    src = src or SourceIndex.from_product(product)
    out = {"description": output.get("description") if isinstance(output.get("description"), str) else "",
           "attributes": dict(output.get("attributes")) if isinstance(output.get("attributes"), dict) else {},
           "product_type": output.get("product_type") if isinstance(output.get("product_type"), str) else ""}
    for issue in report.issues:
        if issue.field.startswith("attributes."):
            out["attributes"].pop(issue.field.split(".", 1)[1], None)
    out["attributes"] = {str(k): str(v) for k, v in out["attributes"].items()
                         if isinstance(v, str | int | float) and str(v).strip() and len(str(v)) <= 120}
    if any(i.field == "product_type" for i in report.issues) or not out["product_type"].strip():
        get = (lambda k: product.get(k)) if isinstance(product, dict) else (lambda k: getattr(product, k, None))
        cat = list(get("category") or [])
        out["product_type"] = normalize_text(cat[-1]) if cat else ""
    desc_issues = [i for i in report.issues if i.field == "description" and i.code not in
                   {"too_short", "too_long", "off_source", "repetition", "missing_field", "bad_type"}]
    if desc_issues or any(i.code in {"off_source", "repetition"} and i.field == "description"
                          for i in report.issues):
        kept: list[str] = []
        seen: set[str] = set()
        for sent in _sentences(out["description"]):
            fixed = sent if not check_text(sent, src, "description", cfg, leak) else _trim_clauses(sent, src, cfg, leak)
            key = " ".join(canon_tokens(fixed))
            if fixed and key not in seen:  # small models say the same sentence twice
                seen.add(key)
                kept.append(fixed)
        out["description"] = " ".join(kept)
    return out


_CLAUSE_RE = re.compile(r"\s*[,;:]\s*|\s+(?=(?:for|with|in|by|from|made|featuring|including|which|that|and)\b)",
                        re.I)


def _trim_clauses(sentence: str, src: SourceIndex, cfg: CheckConfig | None, leak: frozenset[str]) -> str:
    """Drop the clauses of a sentence that carry unsupported content ("X for women, size 10" → "X"),
    keeping it only if its head clause survives; '' when nothing faithful is left."""
    body = sentence.rstrip(" .!?")
    parts = [p for p in _CLAUSE_RE.split(body) if p and p.strip()]
    if not parts or check_text(parts[0], src, "description", cfg, leak):
        return ""
    kept = [p.strip() for p in parts if not check_text(p, src, "description", cfg, leak)]
    out = " ".join(kept).strip(" ,;:")
    out = re.sub(r"\b(?:and|with|for|in|by|from|that|which)$", "", out, flags=re.I).strip(" ,;:")
    if len(_content(canon_tokens(out))) < 2 or check_text(out, src, "description", cfg, leak):
        return ""  # nothing faithful with content left ("It is")
    return out + "."
