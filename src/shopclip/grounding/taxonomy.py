"""Product types as data: what a prompt names, where it sits on a body, which ImageNet classes see it.

Every offline localiser needs to turn free text ("Casual Shoes", "Puma Men White
Tshirt") into something it can act on: the pose localiser needs a body region, the
class-activation localiser needs ImageNet classes, the benchmark needs to know which
products would make a scene ambiguous. One table keeps those three views consistent.

The ImageNet indices are the standard ILSVRC-2012 order used by EfficientNet's head.
They were checked against EfficientNet-Lite0 on the sample catalog: the mean softmax
over 16 training images of each leaf category puts the listed classes in its top 6
(e.g. Sports Shoes → running shoe 0.81; Sunglasses → sunglass 0.82 + sunglasses 0.15;
Handbags → mailbag 0.67 + purse 0.17; Belts → buckle 0.60; Coffee Mugs → coffee mug 0.74;
Briefs → swimming trunks 0.74). ``tests/test_grounding_taxonomy.py`` re-checks four of
them (sports shoes, sunglasses, coffee mugs, belts) on real train photos.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shopclip.catalog import Product

# The ImageNet classes used below, index → name (only these; the head has 1000).
IMAGENET_NAMES: dict[int, str] = {
    409: "analog clock", 411: "apron", 414: "backpack", 431: "bassinet", 433: "bathing cap",
    434: "bath towel", 440: "beer bottle", 441: "beer glass", 443: "bib", 451: "bolo tie", 452: "bonnet",
    457: "bow tie", 459: "brassiere", 464: "buckle", 465: "bulletproof vest", 474: "cardigan",
    496: "Christmas stocking", 502: "clog", 504: "coffee mug", 508: "computer keyboard", 514: "cowboy boot",
    515: "cowboy hat", 529: "diaper", 530: "digital clock", 531: "digital watch", 544: "Dutch oven",
    551: "face powder", 567: "frying pan", 568: "fur coat", 578: "gown", 585: "hair spray",
    601: "hoopskirt", 608: "jean", 610: "jersey, T-shirt", 615: "knee pad", 617: "lab coat",
    619: "lampshade", 620: "laptop", 629: "lipstick", 630: "Loafer", 631: "lotion", 635: "magnetic compass",
    636: "mailbag", 638: "maillot", 652: "military uniform", 655: "miniskirt", 662: "modem", 673: "mouse",
    689: "overskirt", 697: "pajama", 711: "perfume", 721: "pillow", 735: "poncho", 737: "pop bottle",
    742: "printer", 745: "projector", 748: "purse", 750: "quilt", 754: "radio", 770: "running shoe",
    774: "sandal", 775: "sarong", 793: "shower cap", 794: "shower curtain", 796: "ski mask", 806: "sock",
    808: "sombrero", 824: "stole", 826: "stopwatch", 831: "studio couch", 834: "suit", 836: "sunglass",
    837: "sunglasses", 838: "sunscreen", 841: "sweatshirt", 842: "swimming trunks", 846: "table lamp",
    854: "theater curtain", 869: "trench coat", 883: "vase", 892: "wall clock", 893: "wallet",
    898: "water bottle", 905: "window shade", 906: "Windsor tie", 907: "wine bottle", 909: "wok", 968: "cup",
}

# Body regions the pose localiser knows (see pose.py for the landmarks of each).
REGIONS = ("torso", "tunic", "legs", "hips", "body", "feet", "head", "eyes", "neck", "wrist")


@dataclass(frozen=True)
class ProductType:
    """One kind of product: how prompts name it, where it is worn, which ImageNet classes fire on it."""

    name: str
    keywords: tuple[str, ...]
    classes: tuple[int, ...] = ()
    region: str | None = None  # body region when the product is worn; None = never worn
    group: str = ""  # products of one group look alike: never two in one benchmark scene

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in IMAGENET_NAMES]
        if unknown:
            raise ValueError(f"{self.name}: ImageNet classes without a name in IMAGENET_NAMES: {unknown}")
        if self.region is not None and self.region not in REGIONS:
            raise ValueError(f"{self.name}: unknown region {self.region!r}")

    @property
    def class_names(self) -> list[str]:
        return [IMAGENET_NAMES[c] for c in self.classes]


# Order matters: the first type with a matching keyword wins, so the specific
# ("flip flop", "track pant", "laptop bag") come before the generic ("top", "pant", "bag").
PRODUCT_TYPES: tuple[ProductType, ...] = (
    ProductType("socks", ("sock",), (806, 496, 615), "feet", "socks"),
    ProductType("flip flops", ("flip flop", "slipper", "floater"), (774, 502, 630), "feet", "footwear"),
    ProductType("sandals", ("sandal",), (774, 502, 630), "feet", "footwear"),
    ProductType("heels", ("heel", "pump", "stiletto", "wedge"), (774, 502, 630), "feet", "footwear"),
    ProductType("boots", ("boot",), (514, 630, 770), "feet", "footwear"),
    ProductType("shoes", ("shoe", "sneaker", "loafer", "moccasin", "flats", "footwear", "trainer"),
                (770, 630, 502, 774, 514), "feet", "footwear"),
    ProductType("watches", ("watch",), (531, 409, 826, 635, 892), "wrist", "watches"),
    ProductType("clocks", ("clock",), (409, 892, 530), None, "watches"),
    ProductType("sunglasses", ("sunglass", "eyewear", "spectacle", "goggle", "eyeglass", "shades"),
                (836, 837), "eyes", "eyewear"),
    ProductType("wallets", ("wallet", "card holder"), (893, 748), None, "wallets"),
    ProductType("backpacks", ("backpack", "rucksack", "laptop bag", "school bag"), (414, 636), None, "bags"),
    ProductType("handbags", ("handbag", "bag", "clutch", "purse", "tote", "satchel", "sling"),
                (636, 748, 414, 893), None, "bags"),
    ProductType("belts", ("belt",), (464,), None, "belts"),
    ProductType("caps", ("cap", "hat", "headwear", "beanie"), (433, 793, 515, 808, 452, 796), "head", "headwear"),
    ProductType("ties", ("tie",), (906, 457, 451), "neck", "ties"),
    ProductType("scarves", ("scarf", "scarves", "muffler", "stole", "dupatta", "shawl"), (824, 906), "neck", "scarves"),
    ProductType("vests", ("innerwear vest", "vest", "camisole", "tank top"), (610, 465, 638), "torso", "topwear"),
    ProductType("innerwear", ("brief", "trunk", "boxer", "innerwear", "underwear", "bra", "lingerie"),
                (842, 459, 638), "hips", "innerwear"),
    ProductType("dresses", ("dress", "gown", "jumpsuit", "saree", "sari"), (578, 601, 655, 689), "body", "dresses"),
    ProductType("bottomwear", ("trouser", "jean", "pant", "short", "skirt", "legging", "jogger", "chino",
                               "capri", "bottomwear", "pyjama", "pajama"),
                (608, 655, 842, 689, 697), "legs", "bottomwear"),
    ProductType("kurtas", ("kurta", "kurti", "tunic", "kaftan"), (655, 824, 735, 689, 610), "tunic", "topwear"),
    ProductType("topwear", ("tshirt", "t-shirt", "tee", "shirt", "top", "sweater", "sweatshirt",
                            "jacket", "blazer", "hoodie", "vest", "tunic", "jersey", "coat", "cardigan",
                            "pullover", "polo", "topwear", "blouse"),
                (610, 841, 474, 834, 617, 465, 869, 652), "torso", "topwear"),
    ProductType("baby clothes", ("baby girl", "baby boy", "infant wear", "romper", "onesie"),
                (610, 697, 841, 601, 443), None, "baby clothes"),
    ProductType("mugs", ("mug", "cup", "saucer"), (504, 968), None, "mugs"),
    ProductType("bottles", ("bottle", "sipper", "flask"), (898, 907, 737, 440), None, "bottles"),
    ProductType("glasses", ("glass", "tumbler"), (441, 968), None, "glassware"),
    ProductType("fragrances", ("deodorant", "perfume", "fragrance", "spray", "deo"), (585, 711, 631), None, "beauty"),
    ProductType("cosmetics", ("lipstick", "lip", "makeup", "nail", "lotion", "cream", "face care", "shampoo",
                              "conditioner", "body wash", "oil"), (629, 551, 631, 838), None, "beauty"),
    ProductType("routers", ("router", "modem"), (662, 754), None, "electronics"),
    ProductType("laptops", ("laptop", "notebook"), (620,), None, "electronics"),
    ProductType("keyboards", ("keyboard",), (508,), None, "electronics"),
    ProductType("mice", ("mouse",), (673,), None, "electronics"),
    ProductType("printers", ("printer",), (742,), None, "electronics"),
    ProductType("projectors", ("projector",), (745,), None, "electronics"),
    ProductType("blankets", ("blanket", "quilt", "dohar", "bedsheet", "bed linen", "duvet", "comforter"),
                (750, 831), None, "linen"),
    ProductType("towels", ("towel",), (434,), None, "linen"),
    ProductType("curtains", ("curtain",), (794, 854, 905), None, "linen"),
    ProductType("cushions", ("cushion", "pillow"), (721,), None, "linen"),
    ProductType("lamps", ("lamp", "lantern", "lampshade"), (846, 619), None, "lamps"),
    ProductType("vases", ("vase",), (883,), None, "decor"),
    ProductType("cookware", ("pan", "pot", "cookware", "kadai", "wok", "casserole", "steamer"),
                (567, 909, 544), None, "cookware"),
    ProductType("diapers", ("diaper", "nappies", "nappy"), (529,), None, "baby care"),
    ProductType("strollers", ("stroller", "pram"), (431,), None, "baby care"),
)

# Leaf categories that qualify their parent instead of naming a product ("Showpieces > Ethnic").
_QUALIFIER_LEAVES = {"ethnic", "contemporary", "fengshui", "accessories", "living", "combo & kits",
                     "combos and kits", "accessory gift set"}


_PLURAL = r"(?:s|es|'s|s')?"


def _normalise(text: str) -> str:
    t = text.lower().replace("t-shirt", "tshirt").replace("t shirt", "tshirt")
    t = re.sub(r"[^a-z0-9&' ]+", " ", t)
    return " " + " ".join(t.split()) + " "


def match_type(prompt: str) -> ProductType | None:
    """The first product type with a keyword among the prompt's words (plurals too: 'shoes', 'watches')."""
    text = _normalise(prompt)
    for ptype in PRODUCT_TYPES:
        for kw in ptype.keywords:
            if re.search(" " + re.escape(kw) + _PLURAL + " ", text):
                return ptype
    return None


def product_type(p: Product) -> str:
    """The prompt for a product: its category leaf ('Casual Shoes'), or 'Parent Leaf' for qualifier leaves.

    The leaf names what the product *is*, which is what a detector must find; titles
    add brand and colour noise ("Puma Men White ..."), so they are the fallback only.
    """
    cats = [c for c in p.category if c.strip()]
    if not cats:
        return p.title
    leaf = cats[-1]
    if leaf.lower() in _QUALIFIER_LEAVES and len(cats) > 1:
        return f"{leaf} {cats[-2]}"
    return leaf


def type_of_product(p: Product) -> ProductType | None:
    """Product type from the category leaf first, then the whole path, then the title."""
    for text in (product_type(p), " ".join(p.category), p.title):
        t = match_type(text)
        if t is not None:
            return t
    return None


def group_of(p: Product) -> str:
    """Look-alike group for benchmark scenes: the product type's group, else the category path's first two levels."""
    t = type_of_product(p)
    if t is not None:
        return t.group
    return " > ".join(p.category[:2]) or p.title
