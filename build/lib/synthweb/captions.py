"""Captions for the synthetic web: varied English alt-text, foreign-language text, generic noise.

English captions name the concept through synonyms, in several word orders, with context words a
real alt-text would carry; the concept stays recoverable from the words. Foreign captions say the
same in German, French, Spanish, Chinese and Russian, long enough for fastText to identify them,
as real non-English alt-text does. Generic captions carry no concept at all.
"""

from __future__ import annotations

import numpy as np

from synthweb.render import Concept

COLOUR_WORDS = {
    "red": ["red", "bright red", "crimson", "scarlet"],
    "green": ["green", "bright green", "emerald green", "grass green"],
    "blue": ["blue", "deep blue", "royal blue", "cobalt blue"],
    "yellow": ["yellow", "golden yellow", "lemon yellow", "sunny yellow"],
    "purple": ["purple", "violet", "deep purple", "plum purple"],
}
SHAPE_WORDS = {
    "circle": ["circle", "round disc", "circular shape", "ball"],
    "square": ["square", "square tile", "box shape", "block"],
    "triangle": ["triangle", "triangular shape", "pyramid shape", "triangle sign"],
    "star": ["star", "five-pointed star", "star shape", "little star"],
    "cross": ["cross", "plus sign", "cross shape", "plus symbol"],
}
TEXTURE_WORDS = {
    "plain": ["", "plain", "solid", "flat"],
    "striped": ["striped", "stripy"],
    "dotted": ["dotted", "spotted"],
}
BACKGROUNDS = ["grey", "light", "dark", "plain", "white", "neutral", "simple"]
TEMPLATES = [
    "a {tex} {col} {shape}",
    "a {tex} {col} {shape} on a {bg} background",
    "photo of a {col} {shape}",
    "{col} {shape}, {ctx}",
    "close-up of a {tex} {shape} in {col}",
    "{ctx}: {col} {shape}",
    "the {shape} is {col}",
    "a picture showing one {col} {shape} {place}",
    "{col} {shape} {place}, {ctx}",
    "simple drawing of a {tex} {col} {shape}",
    "{shape} in {col} against a {bg} backdrop",
    "my favourite {col} {shape}",
]
CONTEXT = [
    "stock image",
    "high resolution",
    "vector illustration",
    "clip art",
    "hand drawn",
    "digital art",
    "isolated on background",
    "icon design",
    "free download",
    "minimal style",
]
PLACES = ["in the middle", "near the corner", "slightly off centre", "on the left", "on the right", "at the top"]

GENERIC = [
    "image",
    "photo",
    "untitled",
    "click to enlarge",
    "IMG_{n}.JPG",
    "DSC{n}",
    "product photo {n}",
    "free shipping on all orders over $50",
    "home page banner",
    "thumbnail",
    "see more details",
    "best price guaranteed buy now",
    "view gallery",
    "image {n} of 12",
    "Copyright {n} all rights reserved",
    "Share on Facebook",
    "<img src='pic{n}.jpg'>",
    "https://example.com/img/{n}.jpg",
    "new arrivals spring collection",
    "logo",
]

# Colour adjective + shape noun per language, and templates long enough for reliable language ID.
FOREIGN = {
    "de": {
        "colour": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lila"},
        "shape": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "cross": "Kreuz"},
        "templates": [
            "Ein {shape} in der Farbe {col} auf einem hellen Hintergrund",
            "Das Bild zeigt einen {shape}, der {col} ist",
            "Foto von einem {shape} in {col}, kostenlos herunterladen",
            "Hier sieht man in der Mitte des Bildes einen {shape} in {col}",
        ],
    },
    "fr": {
        "colour": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet"},
        "shape": {"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile", "cross": "croix"},
        "templates": [
            "Une image d'un {shape} de couleur {col} sur un fond clair",
            "Photo d'un {shape} {col} au milieu de l'image",
            "Le dessin montre un {shape} qui est {col}",
            "Voici un {shape} {col}, téléchargement gratuit",
        ],
    },
    "es": {
        "colour": {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado"},
        "shape": {
            "circle": "círculo",
            "square": "cuadrado",
            "triangle": "triángulo",
            "star": "estrella",
            "cross": "cruz",
        },
        "templates": [
            "Una imagen de un {shape} de color {col} sobre un fondo claro",
            "Foto de un {shape} {col} en el centro de la imagen",
            "El dibujo muestra una forma de {shape} que es de color {col}",
            "Aquí se puede ver un {shape} {col}, descarga gratis",
        ],
    },
    "zh": {
        "colour": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色"},
        "shape": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字形"},
        "templates": [
            "一个{col}的{shape}在浅色的背景上",
            "这张图片显示了一个{col}的{shape}",
            "{col}{shape}的照片，免费下载",
            "图片中间有一个{col}的{shape}图案",
        ],
    },
    "ru": {
        "colour": {
            "red": "красного",
            "green": "зелёного",
            "blue": "синего",
            "yellow": "жёлтого",
            "purple": "фиолетового",
        },
        "shape": {
            "circle": "круг",
            "square": "квадрат",
            "triangle": "треугольник",
            "star": "звезда",
            "cross": "крест",
        },
        "templates": [
            "Фотография: {shape} {col} цвета на светлом фоне",
            "На этой картинке изображён {shape} {col} цвета",
            "Рисунок, где {shape} {col} цвета находится в центре",
            "Здесь можно увидеть {shape} {col} цвета, скачать бесплатно",
        ],
    },
}
LANGS = tuple(FOREIGN)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def english(concept: Concept, rng: np.random.Generator, texture: str = "plain") -> str:
    text = _pick(rng, TEMPLATES).format(
        tex=_pick(rng, TEXTURE_WORDS[texture]),
        col=_pick(rng, COLOUR_WORDS[concept.colour]),
        shape=_pick(rng, SHAPE_WORDS[concept.shape]),
        bg=_pick(rng, BACKGROUNDS),
        ctx=_pick(rng, CONTEXT),
        place=_pick(rng, PLACES),
    )
    text = " ".join(text.split())  # an empty texture word leaves a double space
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def foreign(concept: Concept, lang: str, rng: np.random.Generator) -> str:
    spec = FOREIGN[lang]
    col = spec["colour"][concept.colour]
    return _pick(rng, spec["templates"]).format(col=col, shape=spec["shape"][concept.shape])


def generic(rng: np.random.Generator) -> str:
    return _pick(rng, GENERIC).format(n=int(rng.integers(1000, 99999)))


def eval_templates() -> list[str]:
    """Zero-shot prompt templates for the concepts (class name = "<colour> <shape>")."""
    return ["a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}."]
