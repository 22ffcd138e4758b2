"""The shapes world: 32x32 scenes of 1-3 identical shapes in one half of the canvas.

A scene has five attributes: `colour` and `shape` (coarse: every caption names them), and
`count`, `orientation` (only triangles and arrows point somewhere) and `position` (which half)
(fine: a caption mentions each one rarely, so a CLIP trained on such captions is partly blind
to them, as web-caption CLIPs are to orientation and count). Every random choice goes through
the `random.Random` passed in, so a seed fixes the pixels.

Scenes are drawn at 4x and box-downsampled, so edges are antialiased like a photo's and an
arrow's head is a few pixels, not one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

SIZE = 32
_SCALE = 4  # drawn at 128 px, downsampled to 32

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 200, 25),
    "purple": (135, 45, 175),
    "orange": (245, 125, 25),
}
SHAPES = ("circle", "square", "triangle", "arrow")
ORIENTED_SHAPES = ("triangle", "arrow")
DIRECTIONS = ("up", "down", "left", "right")
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = (1, 2, 3)
BACKGROUND = (242, 242, 242)

COARSE = ("colour", "shape")
FINE = ("count", "orientation", "position")
ATTRIBUTES = COARSE + FINE
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
_OTHER_SIDE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    position: str
    orientation: str | None  # None unless shape in ORIENTED_SHAPES
    layout_seed: int  # the small per-shape offsets; a pair shares it, so only its attribute differs

    def value(self, attribute: str):
        return getattr(self, attribute)

    def labels(self) -> dict:
        return {a: self.value(a) for a in ATTRIBUTES}

    def phrase(self, mention: tuple[str, ...] | set[str] = ()) -> str:
        """'a red triangle', or with fine attributes: 'two red triangles pointing up on the left'."""
        noun = f"{self.colour} {self.shape}"
        if "count" in mention:
            words = f"{NUMBER_WORDS[self.count]} {noun}{'s' if self.count > 1 else ''}"
        else:
            words = f"a {noun}"
        if "orientation" in mention and self.orientation:
            words += f" pointing {self.orientation}"
        if "position" in mention:
            words += f" on the {self.position}" if self.position in ("left", "right") else f" at the {self.position}"
        return words

    def caption(self, mention: tuple[str, ...] | set[str] = ()) -> str:
        """The text a CLIP sees: 'a photo of ' + phrase (MMVP-VLM prefixes its statements the same way)."""
        return "a photo of " + self.phrase(mention)

    @property
    def full_caption(self) -> str:
        return self.caption(FINE)


def sample_scene(rng: random.Random, shape: str | None = None) -> Scene:
    shape = shape or rng.choice(SHAPES)
    return Scene(
        colour=rng.choice(list(COLOURS)),
        shape=shape,
        count=rng.choice(COUNTS),
        position=rng.choice(POSITIONS),
        orientation=rng.choice(DIRECTIONS) if shape in ORIENTED_SHAPES else None,
        layout_seed=rng.randrange(2**31),
    )


def sample_mentions(rng: random.Random, p_mention: float) -> tuple[str, ...]:
    """Which fine attributes a training caption mentions: each independently with `p_mention`."""
    return tuple(a for a in FINE if rng.random() < p_mention)


def change(scene: Scene, attribute: str, rng: random.Random) -> Scene:
    """The same scene (layout included) with `attribute` set to a different value."""
    if attribute == "orientation":
        if scene.orientation is None:
            raise ValueError(f"a {scene.shape} has no orientation; pick one of {ORIENTED_SHAPES}")
        # the opposite direction half the time: the hardest contrast for a blind encoder
        value = rng.choice([d for d in DIRECTIONS if d != scene.orientation])
        return replace(scene, orientation=value)
    if attribute == "position":
        return replace(scene, position=_OTHER_SIDE[scene.position] if rng.random() < 0.5
                       else rng.choice([p for p in POSITIONS if p != scene.position]))
    if attribute == "count":
        return replace(scene, count=rng.choice([c for c in COUNTS if c != scene.count]))
    if attribute == "colour":
        return replace(scene, colour=rng.choice([c for c in COLOURS if c != scene.colour]))
    if attribute == "shape":
        # keep orientation meaningful: an oriented shape changes into the other oriented one
        pool = [s for s in SHAPES if s != scene.shape and (s in ORIENTED_SHAPES) == (scene.orientation is not None)]
        return replace(scene, shape=rng.choice(pool))
    raise ValueError(f"unknown attribute {attribute!r}; known: {ATTRIBUTES}")


def sample_pair(rng: random.Random, attribute: str) -> tuple[Scene, Scene]:
    """Two scenes that differ in exactly `attribute` (the miniature of an MMVP pair)."""
    scene = sample_scene(rng, shape=rng.choice(ORIENTED_SHAPES) if attribute == "orientation" else None)
    return scene, change(scene, attribute, rng)


# ---------------------------------------------------------------- drawing
def _cells(scene: Scene) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) per shape, in 32-px units: cells along the long side of the scene's half."""
    half = SIZE / 2
    x0, y0, x1, y1 = {"left": (0, 0, half, SIZE), "right": (half, 0, SIZE, SIZE),
                      "top": (0, 0, SIZE, half), "bottom": (0, half, SIZE, SIZE)}[scene.position]
    vertical = scene.position in ("left", "right")
    n = scene.count
    cell_w = (x1 - x0) if vertical else (x1 - x0) / n
    cell_h = (y1 - y0) / n if vertical else (y1 - y0)
    radius = min(min(cell_w, cell_h) * 0.42, 6.0)
    slack = max(0.0, min(cell_w, cell_h) / 2 - radius) * 0.6
    jitter = random.Random(scene.layout_seed)
    out = []
    for i in range(n):
        cx = x0 + cell_w * (0.5 if vertical else i + 0.5) + jitter.uniform(-slack, slack)
        cy = y0 + cell_h * (i + 0.5 if vertical else 0.5) + jitter.uniform(-slack, slack)
        out.append((cx, cy, radius))
    return out


_ROTATE = {"right": lambda x, y: (x, y), "left": lambda x, y: (-x, y),
           "down": lambda x, y: (y, x), "up": lambda x, y: (y, -x)}


def _polygon(shape: str, direction: str, r: float) -> list[tuple[float, float]]:
    """Corner offsets of a shape pointing right, turned to `direction`."""
    if shape == "triangle":
        points = [(r, 0.0), (-r * 0.8, -r * 0.95), (-r * 0.8, r * 0.95)]
    else:  # arrow: a shaft and a head
        shaft, head = r * 0.32, r * 0.9
        points = [(-r, -shaft), (0.05 * r, -shaft), (0.05 * r, -head), (r, 0.0), (0.05 * r, head),
                  (0.05 * r, shaft), (-r, shaft)]
    turn = _ROTATE[direction]
    return [turn(x, y) for x, y in points]


def draw(scene: Scene) -> Image.Image:
    """The scene as a 32x32 RGB image."""
    big = Image.new("RGB", (SIZE * _SCALE, SIZE * _SCALE), BACKGROUND)
    pen = ImageDraw.Draw(big)
    colour = COLOURS[scene.colour]
    for cx, cy, r in _cells(scene):
        cx, cy, r = cx * _SCALE, cy * _SCALE, r * _SCALE
        if scene.shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif scene.shape == "square":
            s = r * 0.85
            pen.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
        else:
            pen.polygon([(cx + x, cy + y) for x, y in _polygon(scene.shape, scene.orientation, r)], fill=colour)
    return big.resize((SIZE, SIZE), Image.BOX)
