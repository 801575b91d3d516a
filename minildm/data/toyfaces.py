"""Toy faces: a procedurally drawn, offline stand-in for the CelebA face data set.

Latent diffusion models are usually trained on photos such as CelebA, which need a large
download and a GPU. This module draws cartoon faces instead, so that tests, CI and CPU-only
laptops have a real generative task without any network access:

* Each face is drawn from a few dozen random parameters (position, face shape, skin tone,
  hair, eyes, mouth, ...) and depends only on ``(seed, index)``: no files, any size.
* Ten CelebA-style attributes (hair colour, eyeglasses, hat, smile, beard, pale skin) are
  known exactly and drawn independently, for attribute- and text-conditioning (`caption`).
* Shapes are signed distance functions (negative inside) with an anti-aliased edge, so a
  face renders at any resolution: 32 px for quick experiments, 64-256 px for super-resolution.

Rendering is vectorised: each layer (background, hair, face, eyes, ...) is computed for a
whole batch at once on the pixel grid and alpha-blended over the layers below it. The part map and
part boxes of every face (which part each pixel shows) come from :mod:`minildm.data.toyface_parts`.

Example::

    images, attributes = generate(16, resolution=32, seed=0)  # (16, 3, 32, 32), (16, 10)
    caption(attributes[0])  # e.g. "a smiling face with blond hair and eyeglasses"
"""
import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ATTRIBUTES = ("Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Eyeglasses",
              "Wearing_Hat", "Smiling", "No_Beard", "Pale_Skin")
HAIR_OPTIONS = ATTRIBUTES[:5]  # exactly one of these is true for every face

# Colours are RGB in [0, 1]. Row k of _HAIR_COLORS belongs to HAIR_OPTIONS[k]; bald faces
# use row 0 for their eyebrows and beard.
_HAIR_COLORS = np.array([[0.26, 0.17, 0.11], [0.09, 0.07, 0.07], [0.95, 0.80, 0.35],
                         [0.36, 0.20, 0.09], [0.68, 0.68, 0.70]])
_SKIN_TONES = np.array([[0.48, 0.32, 0.23], [0.68, 0.47, 0.34], [0.87, 0.67, 0.53],
                        [0.98, 0.88, 0.81]])  # dark to light; Pale_Skin uses the lightest end
_IRIS_COLORS = np.array([[0.35, 0.20, 0.10], [0.20, 0.40, 0.65], [0.25, 0.45, 0.25],
                         [0.40, 0.42, 0.45]])  # brown, blue, green, gray
_HAT_STYLES = np.array([  # crown width (relative), crown corner radius, brim, band, pompom
    [1.0, 0.40, 0.00, 0.06, 0.09],  # beanie
    [1.0, 0.40, 0.07, 0.00, 0.00],  # cap
    [0.8, 0.08, 0.28, 0.04, 0.00]])  # brimmed hat
_WHITE, _DARK, _TEETH, _LENS, _LIPS, _MOUTH_INSIDE = torch.tensor([  # each (3, 1, 1)
    [0.96, 0.96, 0.94], [0.06, 0.05, 0.05], [0.95, 0.93, 0.86], [0.80, 0.90, 0.97],
    [0.55, 0.18, 0.20], [0.30, 0.06, 0.08]]).view(6, 3, 1, 1)
_FACE_HEIGHT = 0.6  # half height of the face ellipse in face-local units
_NUM_DRAWS = 64  # random numbers per face, one per parameter (53 used; add new ones last)
_PIXELS_PER_CHUNK = 2**19  # faces are rendered in chunks of about this many pixels
Number = Tensor | float  # a constant, or one value per face of shape (N, 1, 1)


def sample_face_params(n: int, seed: int, start: int = 0) -> dict[str, np.ndarray]:
    """Random parameters of faces ``start .. start + n - 1``, each an array of shape (n,).

    Face ``i`` gets its own random stream ``default_rng([seed, i])``, so it depends only on
    ``(seed, i)``: a larger ``n`` or a different ``start`` never changes other faces.
    Attributes are booleans, "hair" indexes HAIR_OPTIONS (0 = bald). Lengths are in
    face-local units (the face is 1.2 high); values in [0, 1] are style choices that
    `render_faces` interprets together with the attributes.
    """
    rows = [np.random.default_rng([seed, i]).random(_NUM_DRAWS) for i in range(start, start + n)]
    columns = iter(np.array(rows).reshape(n, _NUM_DRAWS).T)  # one column per parameter

    def uniform(low: float = 0.0, high: float = 1.0) -> np.ndarray:
        return (low + (high - low) * next(columns)).astype(np.float32)

    def choice(k: int) -> np.ndarray:  # integers in 0 .. k - 1
        return (next(columns) * k).astype(np.int64)

    return {  # evaluated in order, so each parameter always gets the same column
        "hair": choice(5), "eyeglasses": uniform() < 0.3, "hat": uniform() < 0.25,
        "smiling": uniform() < 0.5, "beard": uniform() < 0.25, "pale": uniform() < 0.25,
        "face_x": uniform(-0.06, 0.06), "face_y": uniform(-0.02, 0.08), "scale": uniform(0.9, 1.04),
        "face_width": uniform(0.40, 0.48), "jaw": uniform(0.0, 0.35), "skin_tone": uniform(),
        "hair_shade": uniform(0.9, 1.06), "hair_length": uniform(), "hairline": uniform(-0.42, -0.22),
        "parting": uniform(-0.3, 0.3), "temples": uniform(0.1, 0.9), "eye_x": uniform(0.16, 0.2),
        "eye_y": uniform(-0.1, -0.04), "eye_size": uniform(0.85, 1.2), "iris": choice(4),
        "brow_raise": uniform(0.1, 0.14), "brow_tilt": uniform(-0.25, 0.25),
        "brow_thickness": uniform(0.02, 0.032), "nose_y": uniform(0.1, 0.16), "nose_size": uniform(0.8, 1.25),
        "mouth_y": uniform(0.3, 0.36), "mouth_width": uniform(), "mouth_curve": uniform(),
        "mouth_open": uniform(), "beard_top": uniform(0.1, 0.2), "beard_density": uniform(0.75, 1.0),
        "lens_width": uniform(0.1, 0.12), "lens_height": uniform(0.075, 0.095), "lens_round": uniform(),
        "frame_thickness": uniform(0.035, 0.05), "frame_hue": uniform(), "hat_style": choice(3),
        "hat_hue": uniform(), "hat_value": uniform(0.35, 0.85), "hat_base": uniform(-0.36, -0.3),
        "hat_height": uniform(0.42, 0.52), "background_hue": uniform(),
        "background_shift": uniform(-0.15, 0.15), "background_saturation": uniform(0.15, 0.5),
        "background_value": uniform(0.55, 0.9), "background_angle": uniform(0, 2 * np.pi),
        "blob_x": uniform(-1, 1), "blob_y": uniform(-1, 1), "blob_size": uniform(0.3, 0.8),
        "shirt_hue": uniform(), "shirt_saturation": uniform(0.2, 0.7), "shirt_value": uniform(0.3, 0.8),
    }


def attributes_from_params(params: dict[str, np.ndarray]) -> torch.BoolTensor:
    """The CelebA-style attributes of the faces, a bool tensor (N, len(ATTRIBUTES))."""
    hair = torch.as_tensor(params["hair"])
    names = ("eyeglasses", "hat", "smiling", "beard", "pale")
    flag = {name: torch.as_tensor(params[name]).bool() for name in names}
    columns = [hair == k for k in range(len(HAIR_OPTIONS))]
    columns += [flag["eyeglasses"], flag["hat"], flag["smiling"], ~flag["beard"], flag["pale"]]
    return torch.stack(columns, dim=1)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """Vectorised HSV to RGB: arrays (N,) in [0, 1] -> (N, 3)."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6
    return np.reshape(v, (-1, 1)) * (1 - np.reshape(s, (-1, 1)) * np.clip(np.minimum(k, 4 - k), 0, 1))


def _drawing_params(params: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Derive colours and attribute-dependent shapes, and convert everything to torch.

    Scalars become (N, 1, 1) and colours (N, 3, 1, 1), ready to broadcast over images.
    Everything visible follows from the attributes here, so flipping an attribute in
    `params` and rendering again shows the same face with just that attribute changed.
    """
    p = dict(params)
    p["has_hair"] = p["hair"] > 0
    p["hair_color"] = np.clip(_HAIR_COLORS[p["hair"]] * p["hair_shade"][:, None], 0.03, 0.97)
    tone = np.where(p["pale"], 0.84 + 0.16 * p["skin_tone"], 0.7 * p["skin_tone"])
    anchors = np.linspace(0, 1, len(_SKIN_TONES))
    p["skin_color"] = np.stack([np.interp(tone, anchors, _SKIN_TONES[:, c]) for c in range(3)], -1)
    p["iris_color"] = _IRIS_COLORS[p["iris"]]
    smiling = p["smiling"]
    p["mouth_bend"] = np.where(smiling, 0.06 + 0.05 * p["mouth_curve"], -0.03 + 0.035 * p["mouth_curve"])
    p["mouth_open"] = np.where(smiling, 0.07 + 0.08 * p["mouth_open"], 0.0)
    p["mouth_width"] = np.where(smiling, 0.18 + 0.05 * p["mouth_width"], 0.12 + 0.05 * p["mouth_width"])
    style = _HAT_STYLES[p["hat_style"]]
    p["crown_width"] = style[:, 0] * (p["face_width"] + 0.11)
    p["crown_radius"], p["brim"], p["band"], p["pompom"] = style[:, 1:].T
    p["frame_color"] = _hsv_to_rgb(p["frame_hue"], 0.6, 0.12)
    p["hat_color"] = _hsv_to_rgb(p["hat_hue"], 0.7, p["hat_value"])
    p["shirt_color"] = _hsv_to_rgb(p["shirt_hue"], p["shirt_saturation"], p["shirt_value"])
    hue, saturation, value = p["background_hue"], p["background_saturation"], p["background_value"]
    p["background_from"] = _hsv_to_rgb(hue, saturation, value)
    p["background_to"] = _hsv_to_rgb((hue + p["background_shift"]) % 1, saturation, 0.75 * value)
    p["blob_color"] = _hsv_to_rgb((hue + 0.5) % 1, 0.25, 0.95)
    shapes = {1: (-1, 1, 1), 2: (-1, 3, 1, 1)}
    return {k: torch.as_tensor(v, dtype=torch.float32).view(shapes[v.ndim]) for k, v in p.items()}


def ellipse(u: Tensor, v: Tensor, cu: Number, cv: Number, ru: Number, rv: Number) -> Tensor:
    """Approximate signed distance to an ellipse with centre (cu, cv) and radii (ru, rv).

    The implicit function f = a^2 + b^2 - 1 divided by the length of its gradient is a
    first-order distance: exact on the edge, which is all the anti-aliasing needs.
    """
    a, b = (u - cu) / ru, (v - cv) / rv
    gradient_length = 2 * torch.sqrt((a / ru) ** 2 + (b / rv) ** 2)
    return (a * a + b * b - 1) / gradient_length.clamp(min=1e-6)


def circle(u: Tensor, v: Tensor, cu: Number, cv: Number, radius: Number) -> Tensor:
    """Signed distance to a circle with centre (cu, cv)."""
    return torch.sqrt((u - cu) ** 2 + (v - cv) ** 2) - radius


def box(u: Tensor, v: Tensor, cu: Number, cv: Number, hu: Number, hv: Number, radius: Number = 0.0) -> Tensor:
    """Signed distance to a box with centre (cu, cv), half sizes (hu, hv) and rounded corners."""
    qu, qv = (u - cu).abs() - hu + radius, (v - cv).abs() - hv + radius
    outside = torch.sqrt(qu.clamp(min=0) ** 2 + qv.clamp(min=0) ** 2)
    return outside + torch.maximum(qu, qv).clamp(max=0) - radius


class Canvas:
    """A batch of images being painted, with its pixel grid in two coordinate systems.

    Image coordinates x, y run from -1 to 1 (y points down). Face-local coordinates u, v are
    shifted and scaled per face so that the face is centred at (0, 0); the layers draw in
    u, v. Keeping u as (N, 1, R) and v as (N, R, 1) lets broadcasting make every shape
    (N, R, R) without storing full coordinate grids.
    """
    planes = ("rgb",)  # the per-pixel tensors, sliced alike by `crop`

    def __init__(self, p: dict[str, Tensor], resolution: int):
        centres = (torch.arange(resolution) + 0.5) * (2 / resolution) - 1
        self.x, self.y = centres.view(1, 1, -1), centres.view(1, -1, 1)
        self.u = (self.x - p["face_x"]) / p["scale"]  # (N, 1, R)
        self.v = (self.y - p["face_y"]) / p["scale"]  # (N, R, 1)
        self.pixel = 2 / resolution / p["scale"]  # (N, 1, 1) size of a pixel in face units
        self.rgb = torch.zeros(len(p["scale"]), 3, resolution, resolution)  # (N, 3, R, R)

    def crop(self, u_min: float, u_max: float, v_min: float, v_max: float) -> "Canvas":
        """The rectangle of the canvas that covers this range of face coordinates (plus a
        pixel for anti-aliasing) for every face of the batch. Drawing a small feature there
        gives the same image as drawing it on the whole canvas, but is much faster."""
        cols = ((self.u >= u_min - self.pixel) & (self.u <= u_max + self.pixel)).any(0).flatten().nonzero()
        rows = ((self.v >= v_min - self.pixel) & (self.v <= v_max + self.pixel)).any(0).flatten().nonzero()
        c0, c1, r0, r1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
        part = copy.copy(self)
        part.x, part.u = self.x[..., c0:c1], self.u[..., c0:c1]
        part.y, part.v = self.y[:, r0:r1], self.v[:, r0:r1]
        for name in self.planes:  # views (..., r, c): painting them paints self
            setattr(part, name, getattr(self, name)[..., r0:r1, c0:c1])
        return part

    def blend(self, alpha: Tensor, color: Tensor) -> None:
        """Mix `color` into the image with weight `alpha` (N, R, R) in [0, 1]."""
        self.rgb.lerp_(color, alpha.unsqueeze(1))

    def paint(self, distance: Tensor, color: Tensor, opacity: Number = 1.0) -> None:
        """Paint a shape given by its signed distance (N, R, R), anti-aliased over one pixel."""
        self.blend((0.5 - distance / self.pixel).clamp(0, 1) * opacity, color)


def face_distance(c: Canvas, p: dict[str, Tensor]) -> Tensor:
    """Signed distance to the face: an ellipse whose lower half narrows towards the chin."""
    taper = 1 - p["jaw"] * (c.v / _FACE_HEIGHT).clamp(0, 1) ** 2  # (N, R, 1)
    return ellipse(c.u / taper, c.v, 0, 0, p["face_width"], _FACE_HEIGHT)


def skull_distance(c: Canvas, p: dict[str, Tensor]) -> Tensor:
    """Signed distance to the cap of hair around the top of the head."""
    return ellipse(c.u, c.v, 0, -0.08, p["face_width"] + 0.1, 0.68)


def draw_background(c: Canvas, p: dict[str, Tensor]) -> None:
    """A smooth two-colour gradient in a random direction, plus a soft blob of light."""
    angle = p["background_angle"]
    t = (0.5 + 0.35 * (c.x * torch.cos(angle) + c.y * torch.sin(angle))).clamp(0, 1)  # (N, R, R)
    c.rgb[:] = torch.lerp(p["background_from"], p["background_to"], t.unsqueeze(1))
    squared_distance = (c.x - p["blob_x"]) ** 2 + (c.y - p["blob_y"]) ** 2
    c.blend(0.35 * torch.exp(-squared_distance / p["blob_size"] ** 2), p["blob_color"])


def draw_shoulders(c: Canvas, p: dict[str, Tensor]) -> None:
    """A shirt: a wide ellipse rising from the bottom edge."""
    c = c.crop(-1.0, 1.0, 0.7, 2.0)
    c.paint(ellipse(c.u, c.v, 0, 1.3, 0.95, 0.52), p["shirt_color"])


def draw_hair_back(c: Canvas, p: dict[str, Tensor]) -> None:
    """Hair behind the head: the skull cap joined to a curtain of random length."""
    bottom, width = -0.05 + 0.95 * p["hair_length"], p["face_width"] + 0.08
    curtain = box(c.u, c.v, 0, (bottom - 0.1) / 2, width, (bottom + 0.1) / 2, 0.1)
    c.paint(torch.minimum(skull_distance(c, p), curtain), p["hair_color"], p["has_hair"])


def draw_neck(c: Canvas, p: dict[str, Tensor]) -> None:
    """The neck, in the shadow of the chin."""
    c = c.crop(-0.2, 0.2, 0.3, 2.0)
    c.paint(box(c.u, c.v, 0, 0.68, 0.16, 0.3, 0.08), p["skin_color"] * 0.8)


def draw_ears(c: Canvas, p: dict[str, Tensor]) -> None:
    """Ears with a darker inside. Faces are symmetric, so drawing in |u| gives both ears."""
    c = c.crop(-0.6, 0.6, -0.25, 0.2)
    u, centre = c.u.abs(), p["eye_y"] + 0.08
    c.paint(ellipse(u, c.v, p["face_width"], centre, 0.07, 0.11), p["skin_color"] * 0.92)
    c.paint(ellipse(u, c.v, p["face_width"] + 0.015, centre, 0.03, 0.06), p["skin_color"] * 0.7)


def draw_face(c: Canvas, p: dict[str, Tensor]) -> None:
    """The face in the skin colour, slightly darker towards its edge."""
    c = c.crop(-0.5, 0.5, -0.6, 0.6)
    distance = face_distance(c, p)  # (N, R, R)
    shading = 1 - 0.12 * (1 + distance / 0.3).clamp(0, 1)  # darkens the outer 0.3
    c.paint(distance, p["skin_color"] * shading.unsqueeze(1))


def draw_hair_front(c: Canvas, p: dict[str, Tensor]) -> None:
    """Hair over the forehead: the skull cap above a hairline that may be low (a fringe),
    tilted (a side parting) and curved down at the temples, with a light shine on top."""
    c = c.crop(-0.6, 0.6, -0.8, 0.3)
    hairline = p["hairline"] + p["parting"] * c.u + p["temples"] * c.u ** 2  # (N, 1, R)
    hair = torch.maximum(skull_distance(c, p), c.v - hairline)
    c.paint(hair, p["hair_color"], p["has_hair"])
    shine = torch.maximum(hair + 0.04, ellipse(c.u, c.v, -0.12, -0.6, 0.22, 0.06))
    c.paint(shine, 0.6 * p["hair_color"] + 0.35, 0.4 * p["has_hair"])


def draw_beard(c: Canvas, p: dict[str, Tensor]) -> None:
    """A beard: the lower face below a line rising towards the ears, plus a moustache."""
    c = c.crop(-0.55, 0.55, -0.15, 0.65)
    chin = torch.maximum(face_distance(c, p) - 0.03, p["beard_top"] - 0.5 * c.u ** 2 - c.v)
    moustache = ellipse(c.u, c.v, 0, p["mouth_y"] - 0.06, 0.16, 0.045)
    c.paint(torch.minimum(chin, moustache), p["hair_color"] * 0.85, p["beard"] * p["beard_density"])


def draw_nose(c: Canvas, p: dict[str, Tensor]) -> None:
    """A nose: a soft shadow at the tip and two nostrils."""
    c = c.crop(-0.1, 0.1, 0.03, 0.23)
    size, y = p["nose_size"], p["nose_y"]
    c.paint(ellipse(c.u, c.v, 0, y, 0.055 * size, 0.045 * size), p["skin_color"] * 0.82, 0.7)
    nostrils = ellipse(c.u.abs(), c.v, 0.025 * size, y + 0.02, 0.014 * size, 0.01 * size)
    c.paint(nostrils, p["skin_color"] * 0.45)


def draw_mouth(c: Canvas, p: dict[str, Tensor]) -> None:
    """A mouth between two parabolas. A smile bends upwards and opens to show the teeth."""
    c = c.crop(-0.25, 0.25, 0.17, 0.58)
    width, is_open = p["mouth_width"], p["mouth_open"] > 0
    across = (c.u / width).clamp(-1, 1) ** 2  # (N, 1, R) 0 in the middle, 1 at the corners
    top = p["mouth_y"] - p["mouth_bend"] * across
    bottom = top + 0.04 + p["mouth_open"] * (1 - across)
    lips = torch.maximum(torch.maximum(top - c.v, c.v - bottom), c.u.abs() - width)  # (N, R, R)
    c.paint(lips, torch.lerp(p["skin_color"], _LIPS, 0.75))
    c.paint(lips + 0.012, _MOUTH_INSIDE, is_open)
    c.paint(torch.maximum(lips + 0.012, c.v - top - 0.4 * p["mouth_open"]), _TEETH, is_open)


def draw_eyes(c: Canvas, p: dict[str, Tensor]) -> None:
    """Eyes: white, iris, pupil, a highlight and the upper lid, both eyes at once in |u|."""
    c = c.crop(-0.3, 0.3, -0.18, 0.04)
    u, x, y, size = c.u.abs(), p["eye_x"], p["eye_y"], p["eye_size"]
    white = ellipse(u, c.v, x, y, 0.075 * size, 0.048 * size)
    c.paint(white, _WHITE)
    c.paint(torch.maximum(circle(u, c.v, x, y, 0.04 * size), white), p["iris_color"])
    c.paint(circle(u, c.v, x, y, 0.02 * size), _DARK)
    c.paint(circle(u, c.v, x, y - 0.016 * size, 0.008), _WHITE)
    c.paint(torch.maximum(white.abs() - 0.008, c.v - y), _DARK, 0.8)


def draw_eyebrows(c: Canvas, p: dict[str, Tensor]) -> None:
    """Eyebrows: tilted thin ellipses above the eyes, darker than the hair."""
    c = c.crop(-0.32, 0.32, -0.32, -0.06)
    du, dv = c.u.abs() - p["eye_x"], c.v - (p["eye_y"] - p["brow_raise"])
    cos, sin = torch.cos(p["brow_tilt"]), torch.sin(p["brow_tilt"])
    along, across = cos * du + sin * dv, cos * dv - sin * du  # rotated by the tilt angle
    c.paint(ellipse(along, across, 0, 0, 0.085, p["brow_thickness"]), p["hair_color"] * 0.7)


def draw_eyeglasses(c: Canvas, p: dict[str, Tensor]) -> None:
    """Eyeglasses: two rounded rims around the eyes, a bridge and the arms to the ears."""
    c = c.crop(-0.52, 0.52, -0.24, 0.12)
    u, x, y, on = c.u.abs(), p["eye_x"], p["eye_y"] + 0.01, p["eyeglasses"]
    half_width, half_height, half_thickness = p["lens_width"], p["lens_height"], p["frame_thickness"] / 2
    lens = box(u, c.v, x, y, half_width, half_height, p["lens_round"] * half_height)
    c.paint(lens, _LENS, 0.3 * on)
    c.paint(lens.abs() - half_thickness, p["frame_color"], on)
    inner, outer, ear = x - half_width, x + half_width, p["face_width"] + 0.02
    bridge = box(u, c.v, 0, y - 0.02, inner, half_thickness)
    arm = box(u, c.v, (outer + ear) / 2, y - 0.03, (ear - outer) / 2, half_thickness)
    c.paint(torch.minimum(bridge, arm), p["frame_color"], on)


def draw_hat(c: Canvas, p: dict[str, Tensor]) -> None:
    """A hat on top of the head: a crown with a band, a brim and a pompom, whose sizes
    (zero for none) depend on the style: beanie, cap or brimmed hat."""
    c = c.crop(-0.9, 0.9, -1.2, -0.2)
    base, color, on = p["hat_base"], p["hat_color"], p["hat"]
    crown = box(c.u, c.v, 0, base, p["crown_width"], p["hat_height"], p["crown_radius"])
    c.paint(torch.maximum(crown, c.v - base), color, on)
    band = box(c.u, c.v, 0, base - p["band"], p["crown_width"] + 0.01, p["band"], 0.02)
    c.paint(band, color * 0.7, on * (p["band"] > 0))
    brim = ellipse(c.u, c.v, 0, base, p["crown_width"] + p["brim"], 0.06)
    c.paint(brim, color * 0.8, on * (p["brim"] > 0))
    pompom = circle(c.u, c.v, 0, base - p["hat_height"], p["pompom"])
    c.paint(pompom, 0.5 * color + 0.45, on * (p["pompom"] > 0))


LAYERS = (draw_background, draw_shoulders, draw_hair_back, draw_neck, draw_ears, draw_face,
          draw_hair_front, draw_beard, draw_nose, draw_mouth, draw_eyes, draw_eyebrows,
          draw_eyeglasses, draw_hat)  # back to front


def render_faces(params: dict[str, np.ndarray], resolution: int, layers: Sequence = LAYERS) -> Tensor:
    """Draw the faces described by `params`: float32 (N, 3, R, R) with values in [-1, 1].
    ``layers`` picks what to draw, e.g. ``LAYERS[:1]`` for the backgrounds alone."""
    p = _drawing_params(params)
    n, chunk = len(params["hair"]), max(1, _PIXELS_PER_CHUNK // resolution**2)
    images = torch.empty(n, 3, resolution, resolution)
    for first in range(0, n, chunk):  # in chunks, to bound the memory at high resolution
        chunk_params = {name: value[first:first + chunk] for name, value in p.items()}
        canvas = Canvas(chunk_params, resolution)
        for draw in layers:
            draw(canvas, chunk_params)
        images[first:first + chunk] = canvas.rgb * 2 - 1
    return images.clamp(-1, 1)


def generate(n: int, resolution: int = 32, seed: int = 0, start: int = 0) -> tuple[Tensor, torch.BoolTensor]:
    """Faces ``start .. start + n - 1`` of the data set `seed`: images (N, 3, R, R) in
    [-1, 1] and their attributes (N, len(ATTRIBUTES)) as booleans."""
    params = sample_face_params(n, seed, start)
    return render_faces(params, resolution), attributes_from_params(params)


_CAPTION_WORDS = {"Black_Hair": "black hair", "Blond_Hair": "blond hair", "Brown_Hair": "brown hair",
                  "Gray_Hair": "gray hair", "Pale_Skin": "pale skin", "Eyeglasses": "eyeglasses",
                  "Wearing_Hat": "a hat"}


def caption(attributes_row: Tensor | Sequence[bool]) -> str:
    """A short description built only from one row of attributes, for example
    "a smiling face with blond hair, eyeglasses and a beard"."""
    has = dict(zip(ATTRIBUTES, (bool(value) for value in attributes_row), strict=True))
    adjectives = [word for name, word in (("Smiling", "smiling"), ("Bald", "bald")) if has[name]]
    features = [words for name, words in _CAPTION_WORDS.items() if has[name]]
    features += [] if has["No_Beard"] else ["a beard"]
    text = " ".join(["a", *adjectives, "face"])
    if len(features) == 1:
        text += " with " + features[0]
    elif features:
        text += " with " + ", ".join(features[:-1]) + " and " + features[-1]
    return text
