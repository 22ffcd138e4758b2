"""Procedural toy scenes: coloured shapes drawn with PIL, each with a caption and the
attributes it was drawn from, so captions, VQA answers and benchmark labels are TRUE
for the image and a model could learn them.

A scene is one or two groups of identical shapes; a group has a shape, colour, count
(1-4), position (a region of the canvas), size, fill state and, for arrows and
triangles, the direction they point. Every random choice goes through the `random.Random`
passed in, so a seed fixes the pixels.

`draw_pair(rng, pattern)` draws two scenes that differ in exactly one visual pattern
(orientation, presence, state, quantity, position, colour, structure, text, viewpoint):
the miniature of an MMVP pair.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 20),
    "black": (20, 20, 20),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((250, 250, 250), (205, 205, 205), (235, 225, 200))
SHAPES = ("circle", "square", "triangle", "star", "arrow")
ORIENTED_SHAPES = ("triangle", "arrow")
DIRECTIONS = ("up", "down", "left", "right")
POSITIONS = ("left", "right", "top", "bottom")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
SIZES = ("small", "large")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
# the nine MMVP visual patterns, in the benchmark's category order, as toy attribute changes
PATTERNS = (
    "orientation",
    "presence",
    "state",
    "quantity",
    "position",
    "color",
    "structure",
    "text",
    "viewpoint",
)


@dataclass(frozen=True)
class Group:
    """`count` identical shapes sharing one region of the canvas."""

    shape: str
    color: str
    count: int
    position: str
    size: str = "large"
    direction: str | None = None  # only for ORIENTED_SHAPES
    filled: bool = True

    def noun(self) -> str:
        """'red square', 'blue triangle pointing up' (singular, without count)."""
        state = "" if self.filled else "hollow "
        pointing = f" pointing {self.direction}" if self.direction else ""
        return f"{state}{self.color} {self.shape}{pointing}"

    def phrase(self) -> str:
        """'two small red squares on the left'."""
        size = "small " if self.size == "small" else ""
        state = "" if self.filled else "hollow "
        noun = f"{self.shape}{'s' if self.count > 1 else ''}"
        pointing = f" pointing {self.direction}" if self.direction else ""
        words = f"{size}{state}{self.color} {noun}"
        amount = NUMBER_WORDS[self.count] if self.count > 1 else ("an" if words[0] in "aeiou" else "a")
        where = f"on the {self.position}" if self.position in ("left", "right") else f"at the {self.position}"
        return f"{amount} {words}{pointing} {where}"

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "color": self.color,
            "count": self.count,
            "position": self.position,
            "size": self.size,
            "direction": self.direction,
            "filled": self.filled,
        }


@dataclass
class Scene:
    image: Image.Image
    caption: str
    attributes: dict


def random_group(rng: random.Random, position: str, exclude_color: str | None = None) -> Group:
    shape = rng.choice(SHAPES)
    color = rng.choice([c for c in COLORS if c != exclude_color])
    return Group(
        shape=shape,
        color=color,
        count=rng.randint(1, 4),
        position=position,
        size=rng.choice(SIZES),
        direction=rng.choice(DIRECTIONS) if shape in ORIENTED_SHAPES else None,
        filled=rng.random() > 0.2,
    )


def random_groups(rng: random.Random) -> list[Group]:
    """One group, or two groups in opposite regions with different colours."""
    first = random_group(rng, rng.choice(POSITIONS))
    if rng.random() < 0.5:
        return [first]
    return [first, random_group(rng, OPPOSITE[first.position], exclude_color=first.color)]


def caption_of(groups: list[Group], text: str | None = None) -> str:
    caption = " and ".join(g.phrase() for g in groups)
    if text:
        caption += f", with the letter {text} in the corner"
    return caption


def draw_scene(
    rng: random.Random,
    size: tuple[int, int] = (64, 48),
    groups: list[Group] | None = None,
    text: str | None = None,
    background: tuple[int, int, int] | None = None,
) -> Scene:
    """Draw `groups` (random if None) on a `size` = (width, height) canvas."""
    groups = groups if groups is not None else random_groups(rng)
    background = background or rng.choice(BACKGROUNDS)
    image = Image.new("RGB", size, background)
    pen = ImageDraw.Draw(image)
    for group in groups:
        for center, radius in _layout(group, size, rng):
            _draw_shape(pen, group, center, radius)
    if text:
        pen.text((1, 0), text, fill=(0, 0, 0))
    attributes = {
        "groups": [g.to_dict() for g in groups],
        "text": text,
        "background": list(background),
        "size": list(size),
    }
    return Scene(image=image, caption=caption_of(groups, text), attributes=attributes)


def _region(position: str, width: int, height: int) -> tuple[float, float, float, float]:
    return {
        "left": (0, 0, width / 2, height),
        "right": (width / 2, 0, width, height),
        "top": (0, 0, width, height / 2),
        "bottom": (0, height / 2, width, height),
        "center": (width / 4, height / 4, 3 * width / 4, 3 * height / 4),
    }[position]


def _layout(
    group: Group, size: tuple[int, int], rng: random.Random
) -> list[tuple[tuple[float, float], float]]:
    """Centres and radii of a group's shapes: cells along the region's longer side."""
    x0, y0, x1, y1 = _region(group.position, *size)
    horizontal = (x1 - x0) >= (y1 - y0)
    cell_w = (x1 - x0) / group.count if horizontal else (x1 - x0)
    cell_h = (y1 - y0) if horizontal else (y1 - y0) / group.count
    radius = max(2.0, min(cell_w, cell_h) / 2 * (0.85 if group.size == "large" else 0.45))
    slack = min(cell_w, cell_h) / 2 - radius
    out = []
    for i in range(group.count):
        cx = x0 + cell_w * (i + 0.5 if horizontal else 0.5) + rng.uniform(-slack, slack) * 0.5
        cy = y0 + cell_h * (0.5 if horizontal else i + 0.5) + rng.uniform(-slack, slack) * 0.5
        out.append(((cx, cy), radius))
    return out


_ANGLE = {"up": -90.0, "down": 90.0, "left": 180.0, "right": 0.0}


def _rotate(points: list[tuple[float, float]], center: tuple[float, float], degrees: float):
    """Rotate points given relative to a shape pointing right (+x) about `center`."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(center[0] + x * cos - y * sin, center[1] + x * sin + y * cos) for x, y in points]


def _draw_shape(pen: ImageDraw.ImageDraw, group: Group, center: tuple[float, float], r: float) -> None:
    color = COLORS[group.color]
    fill, outline = (color, None) if group.filled else (None, color)
    cx, cy = center
    if group.shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=1)
        return
    if group.shape == "square":
        s = r * 0.85
        pen.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=outline, width=1)
        return
    if group.shape == "star":
        points = [
            (
                cx + (r if k % 2 == 0 else r * 0.45) * math.cos(math.radians(-90 + 36 * k)),
                cy + (r if k % 2 == 0 else r * 0.45) * math.sin(math.radians(-90 + 36 * k)),
            )
            for k in range(10)
        ]
    elif group.shape == "triangle":
        points = _rotate(
            [(r, 0.0), (-r * 0.8, -r * 0.9), (-r * 0.8, r * 0.9)], center, _ANGLE[group.direction]
        )
    elif group.shape == "arrow":
        shaft, head = r * 0.3, r * 0.75
        points = _rotate(
            [(-r, -shaft), (0.0, -shaft), (0.0, -head), (r, 0.0), (0.0, head), (0.0, shaft), (-r, shaft)],
            center,
            _ANGLE[group.direction],
        )
    else:
        raise ValueError(f"unknown shape {group.shape!r}; known shapes: {SHAPES}")
    pen.polygon(points, fill=fill, outline=outline)


# ---------------------------------------------------------------- questions with true answers
@dataclass(frozen=True)
class QA:
    kind: str  # count | color | position | presence | shape
    question: str
    answer: str  # short answer ("2", "Red", "Left", "Yes")
    sentence: str  # the same answer as a full sentence


def questions_about(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions about count, colour, position and presence whose answers hold for `scene`."""
    groups = [Group(**g) for g in scene.attributes["groups"]]
    out = []
    for g in groups:
        plural = f"{g.color} {g.shape}s"
        out.append(
            QA(
                "count",
                f"How many {plural} are there?",
                str(g.count),
                f"There {'is' if g.count == 1 else 'are'} {NUMBER_WORDS[g.count]} {g.color} "
                f"{g.shape}{'s' if g.count > 1 else ''}.",
            )
        )
        out.append(
            QA(
                "color",
                f"What color is the {g.shape}{'s' if g.count > 1 else ''}?"
                if sum(h.shape == g.shape for h in groups) == 1
                else f"What color are the shapes on the {g.position}?",
                g.color.capitalize(),
                f"The {g.shape}{'s are' if g.count > 1 else ' is'} {g.color}.",
            )
        )
        out.append(
            QA(
                "position",
                f"Where {'are' if g.count > 1 else 'is'} the {plural if g.count > 1 else g.noun()}?"
                f" Left, right, top or bottom?",
                g.position.capitalize(),
                f"{'They are' if g.count > 1 else 'It is'} {'on' if g.position in ('left', 'right') else 'at'}"
                f" the {g.position}.",
            )
        )
    present = {g.shape for g in groups}
    absent = [s for s in SHAPES if s not in present]
    probe = rng.choice([rng.choice(sorted(present)), rng.choice(absent)])
    yes = probe in present
    out.append(
        QA(
            "presence",
            f"Is there a {probe} in the image?",
            "Yes" if yes else "No",
            f"{'Yes' if yes else 'No'}, there is {'a' if yes else 'no'} {probe} in the image.",
        )
    )
    return out


# ---------------------------------------------------------------- MMVP-style pairs
@dataclass
class Pair:
    """Two scenes differing in one pattern; `statements[i]` is true for `scenes[i]` only;
    `question`/`options`/`answers` are the MMVP-style multiple choice for the pair."""

    pattern: str
    scenes: tuple[Scene, Scene]
    statements: tuple[str, str]
    question: str
    options: tuple[str, str]
    answers: tuple[int, int]  # index into options of the true option for each scene


def draw_pair(rng: random.Random, pattern: str, size: tuple[int, int] = (32, 32)) -> Pair:
    """Draw two scenes that differ only in `pattern` (one of PATTERNS)."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; known patterns: {PATTERNS}")
    base = Group(
        shape=rng.choice(("circle", "square", "star")),
        color=rng.choice(list(COLORS)),
        count=1,
        position="center",
        size="large",
    )
    background = rng.choice(BACKGROUNDS)
    text_a = text_b = None
    extra_a: list[Group] = []
    extra_b: list[Group] = []
    if pattern == "orientation":
        d1, d2 = rng.sample(("up", "down"), 2) if rng.random() < 0.5 else rng.sample(("left", "right"), 2)
        a, b = replace(base, shape="arrow", direction=d1), replace(base, shape="arrow", direction=d2)
        statements = (f"an arrow pointing {d1}", f"an arrow pointing {d2}")
        question, options = "Which way is the arrow pointing?", (d1.capitalize(), d2.capitalize())
    elif pattern == "presence":
        a = b = replace(base, position="left")
        other = rng.choice([s for s in ("circle", "square", "star") if s != base.shape])
        extra_a = [Group(shape=other, color=base.color, count=1, position="right")]
        statements = (f"a {base.shape} next to a {other}", f"a {base.shape} alone")
        question, options = f"Is there a {other} in the image?", ("Yes", "No")
    elif pattern == "state":
        a, b = base, replace(base, filled=False)
        statements = (f"a filled {base.color} {base.shape}", f"a hollow {base.color} {base.shape} outline")
        question, options = f"Is the {base.shape} filled or hollow?", ("Filled", "Hollow")
    elif pattern == "quantity":
        n1, n2 = rng.sample((1, 2, 3, 4), 2)
        a, b = replace(base, count=n1, position="top"), replace(base, count=n2, position="top")
        statements = (
            f"{NUMBER_WORDS[n1]} {base.color} {base.shape}{'s' if n1 > 1 else ''}",
            f"{NUMBER_WORDS[n2]} {base.color} {base.shape}{'s' if n2 > 1 else ''}",
        )
        question, options = f"How many {base.shape}s are there?", (str(n1), str(n2))
    elif pattern == "position":
        p1, p2 = rng.choice((("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")))
        a, b = replace(base, position=p1), replace(base, position=p2)
        statements = (f"a {base.color} {base.shape} at the {p1}", f"a {base.color} {base.shape} at the {p2}")
        question, options = f"Where is the {base.shape}?", (p1.capitalize(), p2.capitalize())
    elif pattern == "color":
        c1, c2 = rng.sample(list(COLORS), 2)
        a, b = replace(base, color=c1), replace(base, color=c2)
        statements = (f"a {c1} {base.shape}", f"a {c2} {base.shape}")
        question, options = f"What color is the {base.shape}?", (c1.capitalize(), c2.capitalize())
    elif pattern == "structure":
        s1, s2 = rng.sample(("circle", "square", "star", "triangle"), 2)
        a = replace(base, shape=s1, direction="up" if s1 == "triangle" else None)
        b = replace(base, shape=s2, direction="up" if s2 == "triangle" else None)
        statements = (f"a {base.color} {s1}", f"a {base.color} {s2}")
        question, options = "What shape is the object?", (s1.capitalize(), s2.capitalize())
    elif pattern == "text":
        t1, t2 = rng.sample(("A", "B", "E", "K", "X"), 2)
        a = b = replace(base, size="small", position="bottom")
        text_a, text_b = t1, t2
        statements = (f"the letter {t1} above a {base.shape}", f"the letter {t2} above a {base.shape}")
        question, options = "Which letter is written in the image?", (t1, t2)
    else:  # viewpoint: close-up (large) vs far away (small)
        a, b = base, replace(base, size="small")
        statements = (
            f"a close-up of a {base.color} {base.shape}",
            f"a {base.color} {base.shape} seen from far away",
        )
        question, options = f"Is the {base.shape} seen close up or from far away?", ("Close up", "Far away")
    scene_a = draw_scene(rng, size, [a, *extra_a], text=text_a, background=background)
    scene_b = draw_scene(rng, size, [b, *extra_b], text=text_b, background=background)
    return Pair(
        pattern=pattern,
        scenes=(scene_a, scene_b),
        statements=statements,
        question=question,
        options=options,
        answers=(0, 1),
    )
