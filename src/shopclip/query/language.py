"""Which query encoder a query needs: English (shopclip's own text tower) or the multilingual one.

Script first: Devanagari is Hindi; any other non-Latin letters (Arabic, Cyrillic, CJK, ...)
go to the multilingual encoder as "xx". Latin-script text is Spanish, French or German
when it carries that language's marks: letters English never uses (ñ ¿ ß ä ç œ ...) or its
common small words ("para", "pour", "für", ...). Anything else is English, so English
queries keep today's path. A query mixing Devanagari with Latin words ("लाल Nike जूते")
counts as Hindi: the multilingual encoder reads both.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["LANGUAGES", "detect_language"]

LANGUAGES = ("en", "hi", "es", "fr", "de", "xx")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_MARK_CHARS = {
    "es": set("ñ¿¡"),
    "de": set("ßäöü"),
    "fr": set("çœæèêëîïûùâà"),
}
_MARK_WORDS = {
    "es": set(["para", "con", "sin", "del", "los", "las", "una", "unos", "unas", "por", "de", "el", "la", "y", "o", "en", "mujer", "mujeres", "hombre", "hombres", "niño", "niña", "niños", "niñas", "zapatos", "zapatillas", "camisa", "camiseta", "camisetas", "vestido", "bolso", "bolsos", "reloj", "relojes", "gafas", "rojo", "roja", "rojos", "rojas", "azul", "azules", "negro", "negra", "negros", "negras", "blanco", "blanca", "blancos", "blancas", "verde", "verdes", "gris", "rosa", "amarillo", "amarilla", "marrón", "morado", "morada", "pantalones", "sudadera", "chaqueta", "cinturón", "cartera", "calcetines", "sandalias", "chanclas", "tacones", "deportivas", "gorra", "mochila", "falda", "vaqueros"]),
    "fr": set(["pour", "avec", "sans", "des", "les", "une", "un", "et", "ou", "en", "de", "du", "la", "le", "femme", "femmes", "homme", "hommes", "enfant", "fille", "filles", "garçon", "garçons", "chaussures", "baskets", "chemise", "chemises", "robe", "sac", "sacs", "montre", "montres", "lunettes", "rouge", "rouges", "bleu", "bleue", "bleus", "bleues", "noir", "noire", "noirs", "noires", "blanc", "blanche", "blancs", "blanches", "vert", "verte", "gris", "grise", "rose", "jaune", "marron", "violet", "violette", "pantalon", "pantalons", "ceinture", "portefeuille", "chaussettes", "sandales", "talons", "casquette", "jupe", "veste", "pull"]),
    "de": set(["für", "mit", "ohne", "und", "oder", "der", "die", "das", "den", "dem", "ein", "eine", "einen", "damen", "herren", "frau", "frauen", "mann", "männer", "kinder", "mädchen", "jungen", "schuhe", "turnschuhe", "hemd", "hemden", "kleid", "tasche", "taschen", "uhr", "uhren", "brille", "rot", "rote", "roter", "rotes", "blau", "blaue", "blauer", "schwarz", "schwarze", "schwarzer", "weiß", "weiße", "weißer", "weiss", "grün", "grüne", "grau", "graue", "rosa", "gelb", "gelbe", "braun", "braune", "lila", "hose", "hosen", "gürtel", "geldbörse", "socken", "sandalen", "absätze", "mütze", "rucksack", "rock", "jacke", "pullover", "sneaker"]),
}


# Words the marker lists share with English shopping queries.
_SHARED_WITH_ENGLISH = frozenset(["de", "la", "el", "en", "o", "y", "a", "con", "par", "une", "des", "die", "top", "tops", "rose", "jean", "short", "robe", "sac", "pull", "rock", "sneaker", "marine", "bordeaux", "gris", "rosa", "lila"])
# German compounds and inflected colours: "Damenhandtasche", "Herrenhemd", "blaues", "grauer".
_GERMAN = re.compile(r"^(?:(?:damen|herren|kinder)\w+|\w+(?:schuhe|hemd|uhr|hose|tasche|pullover)|"
                     r"(?:schwarz|weiß|weiss|blau|grau|grün|gelb|braun|silbern|golden|weinrot|marineblau|"
                     r"olivgrün|rot)(?:e|er|es|en))$")


def _script(ch: str) -> str:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "other"
    if name.startswith("DEVANAGARI"):
        return "deva"
    if name.startswith("LATIN"):
        return "latin"
    return "other"


def detect_language(text: str) -> str:
    """One of LANGUAGES: "en", "hi", "es", "fr", "de", or "xx" (another non-Latin script)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    scripts = [_script(c) for c in letters]
    if "deva" in scripts:
        return "hi"
    if sum(s == "other" for s in scripts) > sum(s == "latin" for s in scripts):
        return "xx"
    lower = text.lower()
    words = [w for w in _WORD.findall(lower)]
    scores = {}
    for lang in ("es", "fr", "de"):
        chars = sum(c in _MARK_CHARS[lang] for c in lower)
        hits = sum(w in _MARK_WORDS[lang] for w in words)
        scores[lang] = 2 * chars + hits
    scores["de"] += sum(1 for w in words if _GERMAN.match(w))
    best = max(scores, key=lambda k: scores[k])
    if scores[best] == 0:
        return "en"
    # A word English shares ("de", "top", "rose") alone does not make a query foreign.
    strong = 2 * sum(c in _MARK_CHARS[best] for c in lower) + sum(
        1 for w in words if (w in _MARK_WORDS[best] and w not in _SHARED_WITH_ENGLISH)
        or (best == "de" and _GERMAN.match(w)))
    return best if strong >= 1 else "en"
