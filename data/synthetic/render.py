"""The procedural face renderer of the synthetic benchmark: identity, geometry, drawing, nuisances.

A face is drawn with OpenCV on a 2x canvas and area-downsampled for anti-aliasing: jaw, ears, hair, eyes
with irises and lids, brows, nose, lips, teeth, wrinkles and folds. Besides the expression parameters
(:func:`data.synthetic.generative.expression_params`) every face gets a random *identity* (face shape,
feature sizes and spacing, skin tone, hair; :func:`sample_identity`), pose (position, scale, in-plane
rotation), background clutter, occluders (glasses, sunglasses, bars, hand-like blobs), lighting
gradient, colour cast, blur, Gaussian noise and occasional greyscale; so a CNN has to read the
expression rather than a pixel shortcut. The 68 landmarks follow the iBUG 300-W markup (Sagonas et al.,
*300 Faces in-the-Wild Challenge*, ICCV Workshops 2013) and are the drawn geometry's own points, in
stored-image pixels.

Everything random is drawn from the ``rng`` the caller passes, in a fixed order, so a face is a pure
function of that generator's state.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

NUM_LANDMARKS = 68
SUPERSAMPLE = 2  # draw at 2x and area-downsample: cheap anti-aliasing
_SHIFT = 4  # fixed-point fractional bits for OpenCV drawing (sub-pixel geometry)
_FIX = float(1 << _SHIFT)

_SKIN_TONES = np.array([[241, 206, 180], [214, 168, 132], [176, 124, 88], [128, 86, 58], [88, 58, 40]], float)
_HAIR_COLOURS = np.array([[28, 24, 22], [62, 42, 28], [105, 72, 44], [196, 164, 104], [150, 148, 146],
                          [130, 58, 30]], float)
_IRIS_COLOURS = np.array([[88, 58, 34], [45, 30, 20], [70, 108, 150], [80, 108, 70]], float)

GAZE_RANGE = (-0.03, 0.03)  # iris offset from the eye centre, face units, per axis
# Identity parameters drawn uniformly from these ranges (one vectorised draw per face: cheaper).
_IDENTITY_RANGES = {
    "face_w": (0.9, 1.04), "face_h": (1.08, 1.24), "chin_narrow": (0.05, 0.3), "eye_sep": (0.36, 0.44),
    "eye_y": (-0.16, -0.08), "eye_size": (0.88, 1.12), "brow_gap": (0.09, 0.14), "brow_thick": (0.045, 0.075),
    "brow_arch": (0.015, 0.045), "nose_y": (0.2, 0.29), "nose_w": (0.11, 0.16), "mouth_y": (0.53, 0.6),
    "mouth_w": (0.26, 0.32), "lip_u": (0.04, 0.06), "lip_l": (0.055, 0.08), "hairline": (-0.78, -0.62),
    "gaze_x": GAZE_RANGE, "gaze_y": GAZE_RANGE, "skin_tone": (0.0, len(_SKIN_TONES) - 1.0),
}
_ID_LO = np.array([lo for lo, _ in _IDENTITY_RANGES.values()])
_ID_SPAN = np.array([hi - lo for lo, hi in _IDENTITY_RANGES.values()])
_HAIR_STYLE_CDF = np.cumsum([0.12, 0.48, 0.3, 0.1])  # none, short, long, cap with a fringe


def sample_identity(rng: np.random.Generator) -> dict:
    """Who the face belongs to: shape, feature placement and colours (independent of the expression)."""
    values = _ID_LO + _ID_SPAN * rng.random(len(_ID_LO))
    idp = dict(zip(_IDENTITY_RANGES, values.tolist()))
    u = idp.pop("skin_tone")
    lo = min(int(u), len(_SKIN_TONES) - 2)
    jitter = rng.normal(0.0, 1.0, 6)
    picks = rng.random(3)
    skin = np.clip(_SKIN_TONES[lo] + (u - lo) * (_SKIN_TONES[lo + 1] - _SKIN_TONES[lo]) + 7.0 * jitter[:3], 0, 255)
    hair = np.clip(_HAIR_COLOURS[int(picks[0] * len(_HAIR_COLOURS))] + 8.0 * jitter[3:], 0, 255)
    idp.update({
        "gaze": (idp.pop("gaze_x"), idp.pop("gaze_y")),
        "skin": skin,
        "lip": np.clip(skin * np.array([0.82, 0.55, 0.55]) + np.array([30.0, 6.0, 10.0]), 0, 255),
        "hair": hair,
        "brow": hair * 0.75,
        "iris": _IRIS_COLOURS[int(picks[1] * len(_IRIS_COLOURS))],
        "hair_style": int(np.searchsorted(_HAIR_STYLE_CDF, picks[2] * _HAIR_STYLE_CDF[-1], side="right")),
    })
    return idp


def _sq(u: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))


# Constant sampling grids, computed once: at this image size numpy's per-call overhead, not arithmetic,
# is what costs, so every curve below is a few scalar-times-constant-vector operations.
_JAW_T = np.linspace(0.0, np.pi, 17)
_JAW_COS, _JAW_SIN = np.cos(_JAW_T), np.sin(_JAW_T)
_JAW_SIN4 = _JAW_SIN ** 4
_FOREHEAD_S = np.linspace(0.0, np.pi, 15)
_FOREHEAD_COS, _FOREHEAD_SIN = np.cos(_FOREHEAD_S), np.sin(_FOREHEAD_S)
_EYE_U = np.linspace(-1.0, 1.0, 11)
_EYE_PROFILE = _sq(_EYE_U) ** 1.4
_EYE_K = (1.0 - 1.0 / 9.0) ** 0.7  # the lid profile at the landmark positions u = +-1/3
_EYE_LM_DX = np.array([-1.0, -1.0 / 3, 1.0 / 3, 1.0, 1.0 / 3, -1.0 / 3])
_EYE_LM_UP = np.array([0.0, _EYE_K, _EYE_K, 0.0, 0.0, 0.0])
_EYE_LM_LO = np.array([0.0, 0.0, 0.0, 0.0, _EYE_K, _EYE_K])
_BROW_U = np.linspace(0.0, 1.0, 5)  # 0 = outer end, 1 = inner end
_BROW_ARCH = np.sin(np.pi * _BROW_U ** 0.8)
_BROW_TAPER = (0.55 + 0.45 * _BROW_U)[:, None]
_HAIR_S = np.linspace(0.0, np.pi, 15)
_HAIR_X = np.linspace(-1.02, 1.02, 13)
_FOLD_T = np.linspace(0.0, 1.0, 9)[:, None]
_WRINKLE_X = np.linspace(-0.38, 0.38, 7)
_WRINKLE_Y = 0.03 * np.linspace(-1.0, 1.0, 7) ** 2
# Mouth: every curve is evaluated at fixed fractions u = x / mouth half-width, all in one vector.
_INNER = 0.88  # inner-lip corners sit at 0.88 of the mouth half-width
_MU = np.concatenate([
    np.linspace(-1.0, 1.0, 25),                 # [0:25]  dense outer lip contour
    _INNER * np.linspace(-1.0, 1.0, 21),        # [25:46] dense inner lip contour
    np.array([-0.6, -0.25, 0.0, 0.25, 0.6]),    # [46:51] landmarks 49-53 (upper), 59..55 (lower)
    _INNER * np.array([-0.5, 0.0, 0.5]),        # [51:54] landmarks 61-63 (upper), 67..65 (lower)
    np.array([-1.0, 1.0, -_INNER, _INNER]),     # [54:58] corners 48, 54, 60, 64
])
_MU2 = _MU ** 2
_MU_POS2 = np.maximum(_MU, 0.0) ** 2
_MSQ = _sq(_MU)
_MSQ_IN = _sq(_MU / _INNER)
_MBOW = _MSQ * (1.0 - 0.3 * np.exp(-(_MU / 0.15) ** 2))  # cupid's bow: thinner upper lip in the middle
_MTEETH = np.sqrt(_MSQ_IN)


def _face_geometry(idp: dict, ex: np.ndarray) -> tuple[np.ndarray, dict]:
    """68 iBUG landmarks and the dense curves the renderer draws, in face units (half-width ~ 1, y down).

    The landmarks are sampled from the very curves that are drawn, so they are exact by construction.
    """
    curve, mopen, mwidth, press, teeth, ulr, asym, braise, btilt, eopen, cheek, wrinkle = ex.tolist()
    lm = np.empty((NUM_LANDMARKS, 2))
    geo: dict = {}

    # Jaw (0-16, image left -> right); an open mouth drops the chin.
    wid, hgt = idp["face_w"], idp["face_h"] + 0.2 * mopen
    lm[0:17, 0] = -wid * _JAW_COS * (1.0 - idp["chin_narrow"] * _JAW_SIN4)
    lm[0:17, 1] = -0.15 + hgt * _JAW_SIN
    forehead = np.stack([wid * _FOREHEAD_COS, -0.15 - 0.95 * _FOREHEAD_SIN], 1)
    geo["head"] = np.concatenate([lm[0:17], forehead[1:-1]])

    # Eyes (36-41 image-left eye, 42-47 image-right eye): corners, upper lid, lower lid.
    ey, esz = idp["eye_y"], idp["eye_size"]
    ew = 0.14 * esz
    eh_up = 0.075 * esz * eopen
    eh_lo = 0.06 * esz * (0.6 + 0.4 * eopen) * (1.0 - 0.45 * min(cheek, 1.0))  # raised cheeks push it up
    geo["eyes"] = []
    for base, cx in ((36, -idp["eye_sep"]), (42, idp["eye_sep"])):
        xs = cx + ew * _EYE_U
        upper = np.stack([xs, ey - eh_up * _EYE_PROFILE], 1)
        lower = np.stack([xs, ey + eh_lo * _EYE_PROFILE], 1)
        lm[base:base + 6, 0] = cx + ew * _EYE_LM_DX
        lm[base:base + 6, 1] = ey - eh_up * _EYE_LM_UP + eh_lo * _EYE_LM_LO
        geo["eyes"].append((cx, ey, ew, upper, lower))

    # Brows (17-21 outer->inner on the image left, 22-26 inner->outer on the right). Tilt rotates the
    # brow about its middle; raise moves it; it never sinks into the eye (the lid gives way instead).
    base_y = ey - 0.075 * esz - idp["brow_gap"] - 0.085 * braise
    squeeze = 0.05 * max(-btilt, 0.0)  # anger knits the brows together
    by = np.minimum(base_y - idp["brow_arch"] * _BROW_ARCH - 0.15 * btilt * (_BROW_U - 0.4), ey - eh_up - 0.035)
    geo["brows"] = []
    for sign, start in ((-1.0, 17), (1.0, 22)):
        cx = sign * idp["eye_sep"]
        outer_x, inner_x = cx + sign * 1.2 * ew, cx - sign * (0.95 * ew + squeeze)
        pts = np.stack([outer_x + (inner_x - outer_x) * _BROW_U, by], 1)
        lm[start:start + 5] = pts if sign < 0 else pts[::-1]
        geo["brows"].append(pts)  # outer -> inner
    geo["brow_base"] = base_y

    # Nose (27-30 bridge, 31-35 base); a wrinkled nose lifts and flares the nostrils.
    nt, nw = idp["nose_y"], idp["nose_w"] * (1.0 + 0.18 * wrinkle)
    lm[27:31, 0] = 0.0
    lm[27:31, 1] = ey + (nt - ey) * np.array([0.0, 0.33, 0.66, 1.0])
    lm[31:36, 0] = nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    lm[31:36, 1] = nt + np.array([0.04, 0.06, 0.07, 0.06, 0.04]) - 0.03 * wrinkle

    # Mouth (48-59 outer lip, 60-67 inner lip). The lip line is a parabola whose corners rise (smile)
    # or fall (frown); opening splits it, mostly by dropping the lower lip; a raised upper lip bares teeth.
    my = idp["mouth_y"] + 0.03 * mopen
    w = idp["mouth_w"] * mwidth
    gap = 0.27 * mopen
    tu = idp["lip_u"] * (1.0 - 0.6 * press) * (1.0 - 0.3 * max(curve, 0.0))
    tl = idp["lip_l"] * (1.0 - 0.6 * press) * (1.0 - 0.2 * max(curve, 0.0))
    up_open = 0.3 * gap + 0.035 * ulr
    x = w * _MU
    line = my - 0.13 * curve * _MU2 - 0.07 * asym * _MU_POS2
    inner_up = line - up_open * _MSQ_IN
    inner_lo = line + 0.7 * gap * _MSQ_IN
    outer_up = inner_up - tu * _MBOW - 0.03 * ulr * _MSQ
    outer_lo = inner_lo + tl * _MSQ
    geo["lips"] = np.concatenate([np.stack([x[0:25], outer_up[0:25]], 1),
                                  np.stack([x[24::-1], outer_lo[24::-1]], 1)])
    iu = np.stack([x[25:46], inner_up[25:46]], 1)
    geo["inner_up"] = iu
    geo["inner"] = np.concatenate([iu, np.stack([x[45:24:-1], inner_lo[45:24:-1]], 1)])
    geo["inner_gap"] = up_open + 0.7 * gap
    teeth_lo = np.minimum(inner_up[45:24:-1] + 0.085 * teeth * _MTEETH[45:24:-1], inner_lo[45:24:-1])
    geo["teeth"] = np.concatenate([iu, np.stack([x[45:24:-1], teeth_lo], 1)])
    lm[48] = (x[54], line[54])
    lm[49:54, 0], lm[49:54, 1] = x[46:51], outer_up[46:51]
    lm[54] = (x[55], line[55])
    lm[55:60, 0], lm[55:60, 1] = x[50:45:-1], outer_lo[50:45:-1]
    lm[60] = (x[56], line[56])
    lm[61:64, 0], lm[61:64, 1] = x[51:54], inner_up[51:54]
    lm[64] = (x[57], line[57])
    lm[65:68, 0], lm[65:68, 1] = x[53:50:-1], inner_lo[53:50:-1]
    geo["mouth_corner_y"] = float(line[55])
    geo["mouth_w"] = w
    return lm, geo


def _c(colour) -> tuple:
    return tuple(np.asarray(colour, dtype=np.float64).tolist())


class _Painter:
    """Records face-unit drawing operations, then draws them through one similarity transform.

    Recording first lets all points go through a single matrix product and fixed-point conversion
    (per-call numpy overhead would otherwise dominate the rendering time).
    """

    def __init__(self, centre: np.ndarray, scale: float, angle: float):
        self.scale = scale
        self.angle_deg = math.degrees(angle)
        c, s = math.cos(angle), math.sin(angle)
        self.matrix_t = (scale * np.array([[c, -s], [s, c]])).T
        self.centre = centre
        self.ops: list[tuple] = []
        self.chunks: list[np.ndarray] = []
        self.count = 0

    def canvas(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, dtype=np.float64) @ self.matrix_t + self.centre

    def px(self, units: float) -> int:
        return max(1, int(units * self.scale + 0.5))

    def _add(self, pts) -> tuple[int, int]:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        self.chunks.append(pts)
        start = self.count
        self.count += len(pts)
        return start, self.count

    def poly(self, pts, colour) -> None:
        self.ops.append((0, *self._add(pts), _c(colour)))

    def line(self, pts, colour, width: float, closed: bool = False) -> None:
        self.ops.append((1, *self._add(pts), _c(colour), self.px(width), closed))

    def ellipse(self, centre, axes, colour, angle: float = 0.0, thickness: float | None = None) -> None:
        a = (int(axes[0] * self.scale * _FIX + 0.5), int(axes[1] * self.scale * _FIX + 0.5))
        th = -1 if thickness is None else self.px(thickness)
        self.ops.append((2, *self._add(centre), _c(colour), a, self.angle_deg + angle, th))

    def render(self, img: np.ndarray) -> None:
        if not self.ops:
            return
        fixed = np.rint(self.canvas(np.concatenate(self.chunks)) * _FIX).astype(np.int32)
        for op in self.ops:
            kind, a, b, colour = op[:4]
            if kind == 0:
                cv2.fillPoly(img, [fixed[a:b]], colour, cv2.LINE_8, _SHIFT)
            elif kind == 1:
                cv2.polylines(img, [fixed[a:b]], op[5], colour, op[4], cv2.LINE_8, _SHIFT)
            else:
                cx, cy = fixed[a].tolist()
                cv2.ellipse(img, (cx, cy), op[4], op[5], 0, 360, colour, op[6], cv2.LINE_8, _SHIFT)


def _mix(a, b, t: float) -> np.ndarray:
    return np.asarray(a, float) * (1.0 - t) + np.asarray(b, float) * t


def _bezier(p0, p1, p2) -> np.ndarray:
    t = _FOLD_T
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)


def _draw_background(rng: np.random.Generator, img: np.ndarray) -> None:
    size = img.shape[0]
    base = rng.uniform(30, 230, 3)
    other = np.clip(base + rng.normal(0, 45, 3), 0, 255)
    ramp = (base + (other - base) * np.linspace(0.0, 1.0, size)[:, None]).astype(np.uint8)
    if rng.random() < 0.5:
        img[:] = ramp[:, None, :]
    else:
        img[:] = ramp[None, :, :]
    # Clutter: shapes in random colours, so neither the background nor its edges predict the class.
    # One vectorised draw per shape: kind, colour (3), filled?, thickness, position (2), radius, other (2).
    n = int(rng.integers(2, 9))
    for u in rng.random((n, 12)).tolist():
        kind = int(u[0] * 4)
        colour = (u[1] * 255, u[2] * 255, u[3] * 255)
        thick = -1 if u[4] < 0.5 else 1 + int(u[5] * 4)
        p = (int((u[6] * 1.2 - 0.1) * size), int((u[7] * 1.2 - 0.1) * size))
        r = int((0.04 + 0.26 * u[8]) * size)
        if kind == 0:
            q = (p[0] + int((u[9] - 0.5) * 0.8 * size), p[1] + int((u[10] - 0.5) * 0.8 * size))
            cv2.rectangle(img, p, q, colour, thick)
        elif kind == 1:
            cv2.circle(img, p, r, colour, thick)
        elif kind == 2:
            q = (int((u[9] * 1.2 - 0.1) * size), int((u[10] * 1.2 - 0.1) * size))
            cv2.line(img, p, q, colour, 1 + int(u[11] * 6))
        else:
            corners = 3 + int(u[11] * 3)
            pts = (np.array(p) + (rng.random((corners, 2)) * 2.0 - 1.0) * r).astype(np.int32)
            cv2.fillPoly(img, [pts], colour)


def _draw_face(rng: np.random.Generator, pt: _Painter, idp: dict, ex: np.ndarray, lm: np.ndarray, geo: dict) -> None:
    curve, mopen, mwidth, press, teeth, ulr, asym, braise, btilt, eopen, cheek, wrinkle = ex.tolist()
    skin, hair = idp["skin"], idp["hair"]
    dark = skin * 0.55
    style = idp["hair_style"]
    wid = idp["face_w"]

    # Hair behind the head (long style), neck and shoulders, ears.
    if style == 2:
        pt.ellipse((0.0, -0.3), (wid * 1.2, 0.95), hair * 0.85)
        pt.poly(np.array([[-wid * 1.2, -0.3], [wid * 1.2, -0.3], [wid * 1.28, 1.1], [-wid * 1.28, 1.1]]), hair * 0.85)
    pt.poly(np.array([[-0.42, 0.5], [0.42, 0.5], [0.46, 1.5], [-0.46, 1.5]]), skin * 0.85)
    cloth = rng.uniform(20, 235, 3)
    pt.poly(np.array([[-0.5, 1.35], [0.5, 1.35], [2.2, 1.9], [2.2, 3.0], [-2.2, 3.0], [-2.2, 1.9]]), cloth)
    pt.ellipse((-wid * 0.98, 0.02), (0.11, 0.2), skin * 0.9)
    pt.ellipse((wid * 0.98, 0.02), (0.11, 0.2), skin * 0.9)

    # Head (with soft shading under the cheekbones for some volume), then the hair cap and hairline.
    pt.poly(geo["head"], skin)
    jaw_shade = np.concatenate([lm[3:14], lm[13:2:-1] * np.array([0.93, 1.0]) + np.array([0.0, -0.07])])
    pt.poly(jaw_shade, skin * 0.92)
    if style in (1, 2, 3):
        outer = np.stack([wid * 1.06 * np.cos(_HAIR_S), -0.12 - 1.02 * np.sin(_HAIR_S)], 1)
        xs = wid * _HAIR_X
        hl = idp["hairline"] + (0.12 if style == 3 else 0.0)
        inner = np.stack([xs, hl + 0.42 * np.abs(_HAIR_X) ** 3.5], 1)
        if style == 3:  # fringe: a jagged hairline
            inner[1:-1:2, 1] += 0.06
        pt.poly(np.concatenate([outer, inner]), hair)

    # Forehead wrinkles (raised brows) and knitted-brow furrows (anger), from faint to strong.
    lift = min(max((braise - 0.35) / 0.6, 0.0), 1.0)
    if lift > 0.05:
        col = _mix(skin, dark, 0.55 * lift)
        for j in range(3):
            y = geo["brow_base"] - 0.1 - 0.07 * j
            pt.line(np.stack([_WRINKLE_X, y + _WRINKLE_Y], 1), col, 0.018)
    knit = min(max((-btilt - 0.3) / 0.6, 0.0), 1.0)
    if knit > 0.05:
        by = geo["brows"][0][-1, 1]
        col = _mix(skin, dark, 0.7 * knit)
        for sign in (-1.0, 1.0):
            pt.line(np.array([[sign * 0.045, by - 0.04], [sign * 0.06, idp["eye_y"]]]), col, 0.02)

    # Eyes: white, iris, pupil and highlight, then skin drawn back over whatever lies outside the lids.
    ir = 0.062 * idp["eye_size"]
    lid_col, crease_col = _mix(skin, dark, 0.6), _mix(skin, dark, 0.35)
    for cx, cy, ew, upper, lower in geo["eyes"]:
        pt.poly(np.concatenate([upper, lower[::-1]]), (236, 232, 226))
        ic = (cx + idp["gaze"][0], cy + idp["gaze"][1] * 0.5)
        pt.ellipse(ic, (ir, ir), idp["iris"])
        pt.ellipse(ic, (ir * 0.45, ir * 0.45), (15, 12, 12))
        pt.ellipse((ic[0] + ir * 0.35, ic[1] - ir * 0.35), (ir * 0.2, ir * 0.2), (250, 250, 250))
        pad = 0.16
        pt.poly(np.concatenate([upper, [[cx + ew + 0.01, cy - pad], [cx - ew - 0.01, cy - pad]]]), skin)
        pt.poly(np.concatenate([lower, [[cx + ew + 0.01, cy + pad], [cx - ew - 0.01, cy + pad]]]), skin)
        pt.line(upper, (25, 18, 15), 0.028)  # upper lid and lashes
        pt.line(lower, lid_col, 0.012)
        pt.line(upper + np.array([0.0, -0.045]), crease_col, 0.01)  # lid crease
        if cheek > 0.3:  # crow's feet of a Duchenne smile
            sgn = -1.0 if cx < 0 else 1.0
            outer_x = cx + sgn * ew
            col = _mix(skin, dark, 0.6 * min(1.0, (cheek - 0.3) / 0.5))
            for dy in (-0.03, 0.015):
                pt.line(np.array([[outer_x + sgn * 0.035, cy + dy * 0.5], [outer_x + sgn * 0.09, cy + dy * 2.0]]),
                        col, 0.012)

    # Brows: tapered filled shapes along the landmark curve (thicker at the inner end).
    for pts in geo["brows"]:
        top = pts.copy()
        top[:, 1:] -= idp["brow_thick"] * _BROW_TAPER
        pt.poly(np.concatenate([top, pts[::-1]]), idp["brow"])

    # Nose: side shading, base curve, nostrils, and wrinkles across the bridge for disgust.
    nt, nw = idp["nose_y"], float(lm[35, 0])
    pt.line(np.array([[-0.05, idp["eye_y"] + 0.05], [-0.06, nt - 0.08], [-nw * 0.95, nt + 0.01]]),
            _mix(skin, dark, 0.45), 0.016)
    pt.line(lm[31:36], _mix(skin, dark, 0.6), 0.018)
    nostril = _mix(skin, (20, 10, 10), 0.7)
    pt.ellipse((-nw * 0.5, lm[32, 1] - 0.005), (0.032, 0.018), nostril)
    pt.ellipse((nw * 0.5, lm[32, 1] - 0.005), (0.032, 0.018), nostril)
    if wrinkle > 0.3:
        col = _mix(skin, dark, 0.75 * min(1.0, (wrinkle - 0.3) / 0.5))
        for j in range(3):
            y = idp["eye_y"] + 0.06 + 0.035 * j
            pt.line(np.array([[-0.07, y + 0.01], [0.0, y - 0.012], [0.07, y + 0.01]]), col, 0.014)

    # Nasolabial folds: deep in smiles and disgust, faint otherwise.
    fold = min(max(cheek, 0.8 * wrinkle, 0.4 * mopen), 1.0)
    if fold > 0.1:
        col = _mix(skin, dark, 0.55 * fold)
        w, cy = geo["mouth_w"], geo["mouth_corner_y"]
        for sign in (-1.0, 1.0):
            pt.line(_bezier((sign * (nw + 0.05), nt - 0.01), (sign * (w + 0.13), (nt + cy) / 2),
                            (sign * (w + 0.05), cy + 0.05)), col, 0.016)

    # Mouth: lips, dark interior, upper teeth, and the lip line.
    pt.poly(geo["lips"], idp["lip"])
    if geo["inner_gap"] > 0.012:
        pt.poly(geo["inner"], (72, 22, 28))
        if teeth > 0.08:
            pt.poly(geo["teeth"], (238, 234, 220))
    pt.line(geo["inner_up"], _mix(idp["lip"], (30, 10, 10), 0.6), 0.016)


def _draw_occluder(rng: np.random.Generator, pt: _Painter, idp: dict, lm: np.ndarray) -> None:
    kind = int(rng.choice(4, p=[0.3, 0.15, 0.3, 0.25]))
    if kind in (0, 1):  # glasses / sunglasses around the eyes
        frame = rng.uniform(0, 90, 3) if rng.random() < 0.7 else rng.uniform(90, 220, 3)
        rw, rh = rng.uniform(0.19, 0.24), rng.uniform(0.12, 0.17)
        left, right = lm[36:42].mean(0), lm[42:48].mean(0)
        for c in (left, right):
            if kind == 1:
                pt.ellipse(c, (rw, rh), (20, 20, 24))
            pt.ellipse(c, (rw, rh), frame, thickness=0.03)
        pt.line(np.array([left + [rw, -0.02], right - [rw, 0.02]]), frame, 0.03)
        pt.line(np.array([left - [rw, 0.0], [-idp["face_w"], left[1] - 0.02]]), frame, 0.03)
        pt.line(np.array([right + [rw, 0.0], [idp["face_w"], right[1] - 0.02]]), frame, 0.03)
    elif kind == 2:  # a bar (microphone, strap, hat brim...) across a random part of the face
        c = rng.uniform([-0.6, -0.5], [0.6, 0.9])
        ang = rng.uniform(-np.pi, np.pi)
        half_l, half_w = rng.uniform(0.5, 1.3), rng.uniform(0.07, 0.17)
        d, n = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        pts = np.array([c + half_l * d + half_w * n, c - half_l * d + half_w * n,
                        c - half_l * d - half_w * n, c + half_l * d - half_w * n])
        pt.poly(pts, rng.uniform(0, 255, 3))
    else:  # a hand-like blob: palm and fingers, from one side
        col = np.clip(idp["skin"] * rng.uniform(0.85, 1.1) + rng.normal(0, 10, 3), 0, 255)
        side = float(rng.choice([-1.0, 1.0]))
        c = np.array([side * rng.uniform(0.45, 0.9), rng.uniform(0.2, 1.0)])
        pt.ellipse(c, (0.32, 0.25), col, angle=float(rng.uniform(-40, 40)))
        for j in range(4):
            tip = c + np.array([-side * (0.3 + 0.07 * (j in (1, 2))), -0.18 + 0.12 * j])
            pt.line(np.array([c + [0.0, -0.18 + 0.12 * j], tip]), col, 0.09)
        pt.line(np.array([c + [0.0, -0.12], c + [-side * 0.32, -0.12]]), col * 0.8, 0.012)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of standard-normal noise; each image reads a random window (drawing fresh noise per
    image was the single most expensive step). Seeded, so every process builds the same bank."""
    return np.random.default_rng(0x5EED).standard_normal(1 << 20, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return xx, yy


def render_face(rng: np.random.Generator, ex: np.ndarray, image_size: int, occluder_prob: float,
                identity: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one face with expression parameters ``ex``; returns (RGB uint8 image, (68, 2) landmarks).

    ``identity`` (from :func:`sample_identity`) fixes who is shown; by default a fresh identity is the
    first thing drawn from ``rng``, which is what every benchmark face does. Pose, background, occluder
    and photometric nuisances are always drawn from ``rng``.
    """
    idp = sample_identity(rng) if identity is None else identity
    lm, geo = _face_geometry(idp, ex)

    big = image_size * SUPERSAMPLE
    canvas = np.empty((big, big, 3), np.uint8)
    _draw_background(rng, canvas)
    # Tight, FER-style crop: the face spans most of the image; brows-to-chin centred with some jitter.
    scale = rng.uniform(0.3, 0.37) * big
    angle = math.radians(rng.uniform(-13.0, 13.0))
    centre = big * (0.5 + rng.uniform(-0.05, 0.05, 2)) - np.array([-math.sin(angle), math.cos(angle)]) * 0.3 * scale
    painter = _Painter(centre, scale, angle)
    _draw_face(rng, painter, idp, ex, lm, geo)
    if rng.random() < occluder_prob:
        _draw_occluder(rng, painter, idp, lm)
    painter.render(canvas)

    img = cv2.resize(canvas, (image_size, image_size), interpolation=cv2.INTER_AREA).astype(np.float32)
    # Photometric nuisances: lighting gradient, colour cast, contrast, blur, sensor noise, greyscale.
    # u: light direction, light strength, gain, contrast, brightness, blur?, blur sigma, noise std, grey?
    u = rng.random(9).tolist()
    cast = rng.uniform(0.9, 1.1, 3)
    xx, yy = _pixel_grid(image_size)
    direction = 2.0 * math.pi * u[0]
    light = 1.0 + 0.7 * u[1] * (math.cos(direction) * xx + math.sin(direction) * yy)
    contrast = 0.75 + 0.4 * u[3]
    mean = float(img.mean())
    # Contrast about the pre-lighting mean folds every step into one multiply and one add.
    img *= light[..., None] * (((0.75 + 0.45 * u[2]) * contrast) * cast).astype(np.float32)
    img += (1.0 - contrast) * mean + (30.0 * u[4] - 15.0) + 0.5  # +0.5: round, don't truncate
    if u[5] < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), (0.3 + 0.6 * u[6]) * image_size / 96.0)
    bank = _noise_bank()
    if img.size < bank.size:
        start = int(rng.integers(0, bank.size - img.size))
        img += (7.0 * u[7]) * bank[start:start + img.size].reshape(img.shape)
    else:  # very large images: fresh noise
        img += (7.0 * u[7]) * rng.standard_normal(img.shape, dtype=np.float32)
    if u[8] < 0.1:
        img[:] = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    np.clip(img, 0, 255, out=img)
    img = img.astype(np.uint8)

    # Canvas pixel centres are integers; stored pixel k covers canvas [2k, 2k + 2), centre 2k + 0.5.
    landmarks = (painter.canvas(lm) + 0.5) / SUPERSAMPLE - 0.5
    return img, np.clip(landmarks, 0.0, image_size - 1.0)
