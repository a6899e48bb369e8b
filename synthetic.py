"""A synthetic CK+ copy: faces drawn from 68 landmarks, moved by FACS Action Units.

Real CK+ is licensed per user and never available here, so every test, demo and
benchmark runs on a tree this module writes. The tree has the official layout, file
names and number formats (see CKPLUS.md), the junk a real copy carries, and label
statistics that follow CK+'s table: with the defaults (123 subjects, any seed) it holds
593 sequences, 327 emotion files, and exactly the AUs 1, 2, 4, 5, 6, 7, 12, 15, 17 and 25
are coded in more than 90 sequences.

How a sequence is made: each subject gets its own neutral face shape, placement and
appearance; each sequence draws a set of AUs with intensities from an emotion prototype
or a non-prototype recipe; the peak landmarks are the neutral ones plus each AU's
displacement field scaled by its intensity; the frames interpolate from neutral to
peak, and every frame is drawn from its landmarks by `render_face`.

    python synthetic.py /tmp/ckplus                 # the default tree (about 20-60 s)
    python synthetic.py /tmp/tiny --subjects 3      # a prefix of the default tree
"""
from __future__ import annotations

import argparse
import functools
import math
import shutil
import struct
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGES_DIR = "cohn-kanade-images"
FACS_DIR = "FACS_labels/FACS"
LANDMARKS_DIR = "Landmarks/Landmarks"
EMOTION_DIR = "Emotion_labels/Emotion"
EMOTIONS = {1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}
FRAME_SIZE = (640, 490)  # width, height of most CK+ frames
SMALL_FRAME_SIZE = (640, 480)  # the other size found in CK+
MAX_SUBJECTS = 300  # subject numbers grow by 1-3 from S005 and must stay within three digits

# Landmark indices of the iBUG 68-point scheme (0-based).
JAW = np.arange(0, 17)
BROW_L, BROW_R = np.arange(17, 22), np.arange(22, 27)  # image left (outer -> inner), image right (inner -> outer)
NOSE_BRIDGE, NOSTRILS = np.arange(27, 31), np.arange(31, 36)
EYE_L, EYE_R = np.arange(36, 42), np.arange(42, 48)
OUTER_LIP, INNER_LIP = np.arange(48, 60), np.arange(60, 68)


# ----------------------------------------------------------------------------- the label recipe
#
# One "deck" holds 593 sequence recipes whose AU and emotion totals follow CK+'s table. A
# recipe type is (name, emotion, sequences, labelled, slots); a slot is a list of mutually
# exclusive (fraction, AUs) options, and exactly round(fraction * sequences) recipes of the
# type receive each option (quotas, not coin flips), so the deck's totals are the same for
# every seed. Subjects take recipes from consecutive shuffled decks; the 123 subjects of
# the default tree take exactly one deck.

_Slot = list[tuple[float, tuple[int, ...]]]

RECIPES: list[tuple[str, int | None, int, int, list[_Slot]]] = [
    ("happy", 5, 76, 69, [
        [(1.0, (12,))], [(0.85, (6,))], [(0.7, (25,))], [(0.12, (7,))], [(0.05, (26,)), (0.05, (10,))],
    ]),
    ("surprise", 7, 92, 83, [
        [(0.97, (1,))], [(0.92, (2,))], [(0.65, (5,))], [(0.55, (25, 27)), (0.3, (25, 26)), (0.12, (25,))],
    ]),
    ("sadness", 6, 31, 28, [
        [(0.85, (1,))], [(0.85, (4,))], [(0.9, (15,))], [(0.7, (17,))], [(0.1, (11,)), (0.1, (25,))],
    ]),
    ("anger", 1, 50, 45, [
        [(1.0, (4,))], [(0.5, (7,)), (0.2, (5,)), (0.2, (5, 7))], [(0.45, (23,)), (0.4, (24,)), (0.15, (23, 24))],
        [(0.75, (17,))], [(0.1, (25,)), (0.1, (38,))],
    ]),
    ("disgust", 3, 65, 59, [
        [(0.85, (9,)), (0.15, (10,))], [(0.6, (17,))], [(0.62, (4,))], [(0.46, (7,))], [(0.35, (25,))],
        [(0.25, (6,))], [(0.15, (11,)), (0.2, (38,))],
    ]),
    ("fear", 4, 28, 25, [
        [(1.0, (1, 25))], [(0.9, (2,))], [(0.9, (4,))], [(0.8, (5,))], [(0.85, (20,))], [(0.2, (26,))], [(0.2, (7,))],
    ]),
    ("contempt", 2, 20, 18, [
        [(0.75, (14,)), (0.25, (12,))], [(0.1, (6,))],
    ]),
    # Non-prototype sequences: posed AU combinations that carry no emotion label.
    ("smile", None, 38, 0, [
        [(1.0, (12,))], [(0.65, (6,))], [(0.7, (25,))], [(0.22, (7,))], [(0.1, (10,)), (0.1, (26,))],
        [(0.05, (45,)), (0.05, (13,))],
    ]),
    ("frown", None, 55, 0, [
        [(1.0, (15,))], [(0.85, (17,))], [(0.3, (4,))], [(0.2, (1,))], [(0.2, (25,))], [(0.2, (24,)), (0.1, (23,))],
        [(0.12, (16,)), (0.12, (11,)), (0.08, (39,))],
    ]),
    ("chin", None, 34, 0, [
        [(1.0, (17,))], [(0.4, (23,)), (0.35, (24,))], [(0.4, (15,))], [(0.25, (4,))], [(0.2, (7,))], [(0.3, (14,))],
        [(0.15, (9,)), (0.1, (39,))], [(0.1, (11,)), (0.06, (45,))],
    ]),
    ("brows", None, 12, 0, [
        [(0.3, (1, 2)), (0.45, (1, 4)), (0.25, (4,))], [(0.3, (7,))], [(0.4, (25,))], [(0.1, (45,))],
    ]),
    ("eyes", None, 17, 0, [
        [(0.5, (6, 7)), (0.2, (7,)), (0.15, (43,)), (0.15, (45,))], [(0.4, (25,))], [(0.25, (4,))], [(0.1, (43,))],
    ]),
    ("open-mouth", None, 34, 0, [
        [(1.0, (25,))], [(0.65, (20,)), (0.15, (26,)), (0.2, (27,))], [(0.35, (16,))], [(0.15, (4,))], [(0.15, (1,))],
        [(0.15, (12,)), (0.1, (6,))], [(0.2, (38,))], [(0.12, (7,))], [(0.05, (22,)), (0.05, (18,))],
    ]),
    ("stretch", None, 16, 0, [
        [(1.0, (25,))], [(0.6, (1,))], [(0.2, (2,))], [(0.7, (27,)), (0.2, (26,))], [(0.8, (20,))], [(0.5, (4,))],
        [(0.2, (5,))],
    ]),
    ("nose", None, 13, 0, [
        [(1.0, (9,))], [(0.5, (17,))], [(0.4, (4,))], [(0.4, (7,))], [(0.2, (10,))], [(0.4, (25,))],
        [(0.25, (39,)), (0.2, (38,))],
    ]),
    ("misc", None, 12, 0, [
        [(0.25, (12,)), (0.2, (15,)), (0.2, (6, 7))], [(0.5, (25,))], [(0.4, (17,))], [(0.2, (11,)), (0.2, (14,))],
        [(0.35, (45,)), (0.25, (10,))], [(0.2, (18,)), (0.1, (21,)), (0.1, (54,)), (0.1, (64,)), (0.1, (31,))],
        [(0.1, (29,)), (0.1, (30,)), (0.1, (62,)), (0.1, (63,)), (0.1, (28,)), (0.1, (34,))],
        [(0.1, (44,)), (0.1, (61,)), (0.1, (22,)), (0.1, (43,))],
    ]),
]
DECK_SIZE = sum(r[2] for r in RECIPES)  # 593, as in CK+

# Sequences per subject: 123 subjects sharing 593 sequences (1 to 10 each, mean 4.8).
SUBJECT_DECK = {1: 7, 2: 13, 3: 15, 4: 18, 5: 23, 6: 22, 7: 12, 8: 7, 9: 4, 10: 2}
SUBJECT_DECK_SIZE = sum(SUBJECT_DECK.values())  # 123


@dataclass(frozen=True)
class Recipe:
    """The labels of one sequence before intensities are drawn."""

    kind: str
    aus: tuple[int, ...]
    emotion: int | None
    unilateral: bool = False  # contempt: AU12/AU14 on one side only


def _spawn(seed: int, *key: int) -> np.random.Generator:
    """A generator for one part of the tree, independent of how many other parts exist."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def build_deck(seed: int, block: int) -> list[Recipe]:
    """One shuffled deck of DECK_SIZE recipes; AU and emotion totals are the same for every seed."""
    rng = _spawn(seed, 1, block)
    deck: list[Recipe] = []
    for kind, emotion, n, labelled, slots in RECIPES:
        aus: list[set[int]] = [set() for _ in range(n)]
        for slot in slots:
            order = rng.permutation(n)
            start = 0
            for fraction, option in slot:
                take = int(math.floor(fraction * n + 0.5))
                for i in order[start:start + take]:
                    aus[i].update(option)
                start += take
        has_label = np.zeros(n, dtype=bool)
        has_label[rng.permutation(n)[:labelled]] = True
        deck += [Recipe(kind, tuple(sorted(a)), emotion if has_label[i] else None, unilateral=kind == "contempt")
                 for i, a in enumerate(aus)]
    return [deck[i] for i in rng.permutation(len(deck))]


def _subject_sizes(seed: int, block: int) -> list[int]:
    rng = _spawn(seed, 3, block)
    sizes = [k for k, n in SUBJECT_DECK.items() for _ in range(n)]
    return [sizes[i] for i in rng.permutation(len(sizes))]


def subject_plan(seed: int, subjects: int) -> list[tuple[int, list[Recipe]]]:
    """(subject number, recipes) for the first `subjects` subjects; each is a prefix of a longer plan."""
    plan = []
    number = 5
    offset = 0
    decks: dict[int, list[Recipe]] = {}
    for i in range(subjects):
        if i > 0:
            # Real subject numbers have gaps; the gap depends only on the subject's own stream.
            number += 1 + int(_spawn(seed, 4, i).choice(3, p=[0.6, 0.3, 0.1]))
        n = _subject_sizes(seed, i // SUBJECT_DECK_SIZE)[i % SUBJECT_DECK_SIZE]
        recipes = []
        for j in range(offset, offset + n):
            block = j // DECK_SIZE
            if block not in decks:
                decks[block] = build_deck(seed, block)
            recipes.append(decks[block][j % DECK_SIZE])
        offset += n
        plan.append((number, recipes))
    return plan


# ----------------------------------------------------------------------------- face geometry
#
# Shapes live in "face units": origin midway between the eye centres, x to the image
# right, y down, one unit = half the jaw width at eye level. `place` maps them to pixels.


def neutral_shape(rng: np.random.Generator) -> np.ndarray:
    """A random subject's neutral 68-point shape in face units (iBUG order)."""
    u = rng.uniform
    pts = np.zeros((68, 2))
    # Jaw: from the left temple at eye level, round the chin, to the right temple.
    chin = 1.62 * u(0.93, 1.07)
    top = 0.03 * u(-1, 1)
    square = u(0.6, 0.95)
    a = np.pi * (1 - np.arange(17) / 16)
    c = np.cos(a)
    pts[JAW, 0] = np.sign(c) * np.abs(c) ** square
    pts[JAW, 1] = top + (chin - top) * np.sin(a)
    # Brows: arched, the outer end a little lower.
    brow_y = -0.31 * u(0.85, 1.15)
    arch = 0.06 * u(0.6, 1.4)
    inner, outer = 0.11 * u(0.8, 1.2), 0.80 * u(0.93, 1.05)
    t = np.linspace(0, 1, 5)  # outer -> inner
    bx = -(outer + (inner - outer) * t)
    by = brow_y - arch * np.sin(np.pi * (0.15 + 0.7 * t)) + 0.04 * (1 - t)
    pts[BROW_L] = np.stack([bx, by], 1)
    pts[BROW_R] = np.stack([-bx[::-1], by[::-1]], 1)
    # Eyes: corners at eye level, the outer corner a touch higher.
    dx, w, h = 0.44 * u(0.93, 1.07), 0.34 * u(0.9, 1.1), 0.115 * u(0.8, 1.2)
    tilt = 0.012 * u(-1, 2)
    left = np.array([
        [-dx - w / 2, -tilt], [-dx - w / 6, -0.55 * h], [-dx + w / 6, -0.55 * h],
        [-dx + w / 2, 0.0], [-dx + w / 6, 0.45 * h], [-dx - w / 6, 0.45 * h],
    ])
    pts[EYE_L] = left
    # Mirror: 42 inner corner, 43-44 upper lid inner -> outer, 45 outer, 46-47 lower outer -> inner.
    pts[EYE_R] = left[[3, 2, 1, 0, 5, 4]] * [-1, 1]
    # Nose.
    nose = 0.52 * u(0.9, 1.1)
    nw = 0.19 * u(0.85, 1.15)
    pts[NOSE_BRIDGE] = np.stack([np.zeros(4), np.linspace(-0.04, nose, 4)], 1)
    pts[NOSTRILS] = np.stack([nw * np.array([-1, -0.5, 0, 0.5, 1]),
                              nose + np.array([0.05, 0.09, 0.1, 0.09, 0.05])], 1)
    # Mouth: outer lip 48-59, inner lip 60-67 (closed: the inner lips meet on one line).
    my = nose + 0.39 * u(0.9, 1.1)
    mw = 0.37 * u(0.88, 1.12)
    up, low = 0.085 * u(0.75, 1.3), 0.12 * u(0.8, 1.25)
    corner = 0.02 * u(-1, 1)  # some faces turn up or down at rest, as much as a weak AU
    pts[OUTER_LIP] = np.array([
        [-mw, my + corner], [-0.6 * mw, my - 0.8 * up], [-0.25 * mw, my - up], [0, my - 0.85 * up],
        [0.25 * mw, my - up], [0.6 * mw, my - 0.8 * up], [mw, my + corner],
        [0.6 * mw, my + 0.8 * low], [0.3 * mw, my + low], [0, my + 1.05 * low], [-0.3 * mw, my + low],
        [-0.6 * mw, my + 0.8 * low],
    ])
    pts[INNER_LIP] = np.array([
        [-0.82 * mw, my + corner / 2], [-0.35 * mw, my], [0, my], [0.35 * mw, my],
        [0.82 * mw, my + corner / 2], [0.35 * mw, my], [0, my], [-0.35 * mw, my],
    ])
    return pts


def _jaw_weight(shape: np.ndarray) -> np.ndarray:
    """0 at the temples, 1 at the chin: how much a jaw point follows the jaw when it drops."""
    y = shape[JAW, 1]
    return np.clip((y - y[0]) / (y[8] - y[0]), 0, 1) ** 1.5


def au_displacement(au: int, shape: np.ndarray, side: int = 0) -> np.ndarray:
    """Where each landmark moves (face units) for `au` at intensity C; zeros for AUs not modelled.

    `side` -1 or +1 limits a unilateral action to the image left or right half.
    """
    d = np.zeros((68, 2))
    L, R = -1.0, 1.0  # x direction pointing away from the midline on each side
    mw = shape[54, 0] - shape[48, 0]
    if au == 1:  # inner brow raiser
        d[BROW_L, 1] = d[BROW_R[::-1], 1] = [-0.01, -0.04, -0.08, -0.12, -0.14]
        d[[21, 22], 0] = [-0.01, 0.01]
    elif au == 2:  # outer brow raiser
        d[BROW_L, 1] = d[BROW_R[::-1], 1] = [-0.14, -0.13, -0.09, -0.04, -0.01]
        d[[37, 44], 1] = -0.01
    elif au == 4:  # brow lowerer: down and together
        d[BROW_L, 1] = d[BROW_R[::-1], 1] = [0.04, 0.06, 0.08, 0.11, 0.12]
        d[BROW_L, 0] = [0.0, 0.02, 0.04, 0.06, 0.07]
        d[BROW_R, 0] = [-0.07, -0.06, -0.04, -0.02, 0.0]
        d[[37, 38, 43, 44], 1] = 0.012
    elif au == 5:  # upper lid raiser
        d[[37, 38, 43, 44], 1] = -0.06
        d[[36, 39, 42, 45], 1] = -0.005
    elif au == 6:  # cheek raiser: lower lid and outer corner up, crow's feet
        d[[40, 41, 46, 47], 1] = [-0.025, -0.04, -0.04, -0.025]
        d[[36, 45], 1] = -0.02
        d[[36, 45], 0] = [0.01, -0.01]
        d[[37, 38, 43, 44], 1] = 0.01
        d[[17, 26], 1] = 0.02
        d[[1, 15], 0] = [0.015, -0.015]
    elif au == 7:  # lid tightener: lids narrow, lower lid straightens up
        d[[40, 41, 46, 47], 1] = [-0.045, -0.035, -0.035, -0.045]
        d[[37, 38, 43, 44], 1] = 0.02
    elif au == 9:  # nose wrinkler: nose and upper lip up, inner brows down
        d[NOSTRILS, 1] = -0.06
        d[[29, 30], 1] = [-0.02, -0.045]
        d[[31, 35], 0] = [-0.015, 0.015]
        d[[49, 50, 51, 52, 53], 1] = -0.04
        d[[61, 62, 63], 1] = -0.03
        d[[21, 22], 1] = 0.04
        d[[40, 41, 46, 47], 1] = -0.02
    elif au == 10:  # upper lip raiser
        d[[49, 50, 51, 52, 53], 1] = -0.06
        d[[61, 62, 63], 1] = -0.045
        d[NOSTRILS, 1] = -0.015
    elif au in (12, 14):  # lip corner puller / dimpler (corners back, barely up)
        up, out = (0.12, 0.08) if au == 12 else (0.02, 0.05)
        for pts, sgn in (([48, 60, 49, 59, 61, 67], L), ([54, 64, 53, 55, 63, 65], R)):
            if side and sgn != side:
                continue
            d[pts, 1] = [-up, -0.8 * up, -0.4 * up, -0.45 * up, -0.3 * up, -0.3 * up]
            d[pts, 0] = sgn * np.array([out, 0.8 * out, 0.35 * out, 0.35 * out, 0.2 * out, 0.2 * out])
        if au == 12:
            d[[50, 51, 52], 1] += -0.015
            d[[56, 57, 58], 1] += 0.01
    elif au == 15:  # lip corner depressor
        d[[48, 54], 1] = 0.1
        d[[60, 64], 1] = 0.085
        d[[49, 53, 59, 55], 1] = 0.035
        d[[48, 60], 0] = 0.01
        d[[54, 64], 0] = -0.01
    elif au == 16:  # lower lip depressor
        d[[56, 57, 58], 1] = 0.06
        d[[65, 66, 67], 1] = 0.05
    elif au == 17:  # chin raiser: chin and lower lip up, mouth arches
        d[JAW, 1] = -0.07 * _jaw_weight(shape)
        d[[56, 57, 58], 1] = -0.06
        d[[55, 59], 1] = -0.03
        d[[65, 66, 67], 1] = -0.015
        d[[61, 62, 63], 1] = -0.015
        d[[49, 50, 51, 52, 53], 1] = -0.02
        d[[48, 54, 60, 64], 1] = 0.025
    elif au == 18:  # lip pucker
        d[[48, 60], 0] = 0.07
        d[[54, 64], 0] = -0.07
    elif au == 20:  # lip stretcher: corners sideways, a little down
        d[[48, 60], 0] = -0.1 * mw / 0.74
        d[[54, 64], 0] = 0.1 * mw / 0.74
        d[[49, 59], 0], d[[53, 55], 0] = -0.04, 0.04
        d[[48, 54, 60, 64], 1] = 0.025
    elif au == 23:  # lip tightener: narrower, thinner lips
        d[[48, 60, 49, 59], 0] = 0.04
        d[[54, 64, 53, 55], 0] = -0.04
        d[[50, 51, 52], 1] = 0.025
        d[[56, 57, 58], 1] = -0.025
    elif au == 24:  # lip presser
        d[[49, 50, 51, 52, 53], 1] = 0.035
        d[[55, 56, 57, 58, 59], 1] = -0.04
        d[[48, 60], 0], d[[54, 64], 0] = -0.015, 0.015
    elif au == 25:  # lips part
        d[[65, 66, 67], 1] = [0.06, 0.07, 0.06]
        d[[55, 56, 57, 58, 59], 1] = [0.03, 0.05, 0.055, 0.05, 0.03]
        d[[61, 62, 63], 1] = -0.01
    elif au in (26, 27):  # jaw drop / mouth stretch
        drop = 0.13 if au == 26 else 0.24
        d[JAW, 1] = drop * _jaw_weight(shape)
        d[[56, 57, 58], 1] = drop
        d[[55, 59], 1] = 0.8 * drop
        d[[65, 66, 67], 1] = [0.9 * drop, drop, 0.9 * drop]
        d[[48, 54, 60, 64], 1] = 0.3 * drop
        if au == 27:
            d[[48, 60], 0], d[[54, 64], 0] = 0.05, -0.05
            d[[50, 51, 52, 61, 62, 63], 1] = -0.02
    elif au == 38:  # nostril dilator
        d[[31, 32], 0], d[[34, 35], 0] = -0.03, 0.03
    elif au == 39:  # nostril compressor
        d[[31, 32], 0], d[[34, 35], 0] = 0.025, -0.025
    elif au in (43, 45):  # eyes closed / blink: upper lid down onto the lower lid
        close = 0.09 if au == 43 else 0.07
        d[[37, 38, 43, 44], 1] = close
    elif au == 54:  # head down: the lower face compresses a little
        d[:, 1] = 0.03 * shape[:, 1]
    return d


def intensity_scale(intensity: float) -> float:
    """How far an AU moves the face at FACS intensity 1 (A, trace) .. 5 (E, maximum); C = 1."""
    return 0.4 + 0.3 * (intensity - 1)


def apply_aus(shape: np.ndarray, aus: dict[int, float], gain: float = 1.0, side: int = 0) -> np.ndarray:
    """The shape at the peak: `shape` plus every AU's displacement at its intensity.

    `side` (-1/+1) makes AU12 and AU14 unilateral, as in contempt; 0 keeps them bilateral.
    """
    peak = shape.copy()
    for au, intensity in aus.items():
        s = side if au in (12, 14) else 0
        peak += gain * intensity_scale(intensity) * au_displacement(au, shape, s)
    return peak


def place(shape: np.ndarray, center: tuple[float, float], scale: float, roll_deg: float) -> np.ndarray:
    """Face units -> frame pixels: scale, roll about the eye midpoint, translate."""
    r = math.radians(roll_deg)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return shape @ rot.T * scale + np.asarray(center)


# ----------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Appearance:
    """Grey levels and textures of one subject; everything `render_face` needs besides landmarks."""

    skin: float = 160.0
    background: float = 90.0
    background_slope: float = 0.0  # grey levels per 100 px down the frame
    hair: float = 40.0
    brow: float = 55.0
    lip: float = 120.0
    iris: float = 70.0
    clothes: float = 60.0
    brow_width: float = 0.07  # face units
    light: float = 0.0  # -1..1: light from the image left (negative) or right
    noise: float = 3.0  # std of the Gaussian sensor noise, grey levels
    blur: float = 0.9  # Gaussian blur radius, pixels
    hairline: float = 0.9  # forehead height above the brows, face units

    @staticmethod
    def random(rng: np.random.Generator) -> "Appearance":
        """A random subject: skin, hair, background, lighting and camera noise."""
        u = rng.uniform
        skin = u(115, 205)
        return Appearance(
            skin=skin,
            background=u(35, 215),
            background_slope=u(-15, 15),
            hair=u(15, min(110.0, skin - 30)),
            brow=skin - u(60, 105),
            lip=skin - u(25, 50),
            iris=u(35, 110),
            clothes=u(20, 230),
            brow_width=u(0.05, 0.09),
            light=u(-0.35, 0.35),
            noise=u(1.5, 5.0),
            blur=u(0.6, 1.2),
            hairline=u(0.7, 1.05),
        )


def _catmull_rom(points: np.ndarray, closed: bool, steps: int = 4) -> np.ndarray:
    """A smooth curve through `points` (n, 2), `steps` samples per segment."""
    p = np.asarray(points, dtype=np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        segments = len(p)
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        segments = len(p) - 1
    idx = np.arange(segments)[:, None] + np.arange(4)  # (segments, 4) control points of each segment
    curve = np.einsum("tk,skd->std", _cr_basis(steps), ext[idx]).reshape(-1, 2)
    return curve if closed else np.concatenate([curve, p[-1:]])


@functools.lru_cache(maxsize=None)
def _cr_basis(steps: int) -> np.ndarray:
    """Catmull-Rom weights of the four control points at `steps` positions along a segment."""
    t = np.linspace(0, 1, steps, endpoint=False)
    return 0.5 * np.stack([-t + 2 * t ** 2 - t ** 3, 2 - 5 * t ** 2 + 3 * t ** 3,
                           t + 4 * t ** 2 - 3 * t ** 3, -t ** 2 + t ** 3], 1)


class _Frame:
    """Face-unit coordinates of one face in a frame, derived from its own landmarks."""

    def __init__(self, landmarks: np.ndarray):
        eye_l = landmarks[EYE_L].mean(0)
        eye_r = landmarks[EYE_R].mean(0)
        self.origin = (eye_l + eye_r) / 2
        self.unit = float(np.linalg.norm(landmarks[16] - landmarks[0]) / 2)
        ex = (eye_r - eye_l) / max(float(np.linalg.norm(eye_r - eye_l)), 1e-6)
        self.ex, self.ey = ex, np.array([-ex[1], ex[0]])

    def to_px(self, uv) -> np.ndarray:
        uv = np.atleast_2d(np.asarray(uv, dtype=np.float64))
        return self.origin + self.unit * (uv[:, :1] * self.ex + uv[:, 1:2] * self.ey)

    def to_uv(self, px) -> np.ndarray:
        rel = (np.atleast_2d(px) - self.origin) / self.unit
        return np.stack([rel @ self.ex, rel @ self.ey], 1)

    def ellipse(self, centre, radii, n: int = 40) -> list[float]:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        uv = np.stack([centre[0] + radii[0] * np.cos(a), centre[1] + radii[1] * np.sin(a)], 1)
        return _xy(self.to_px(uv))


def _xy(points: np.ndarray) -> list[float]:
    """Points as the flat [x0, y0, x1, y1, ...] list ImageDraw takes."""
    return np.asarray(points, dtype=np.float64).ravel().tolist()


def _grey(v: float) -> int:
    return int(min(255, max(0, round(v))))


_STABLE = [0, 16, 27, 39, 42]  # temples, nose bridge, inner eye corners: no AU here moves them


def _actions(landmarks: np.ndarray, neutral: np.ndarray | None, frame: _Frame) -> dict[str, float]:
    """How far the face has moved from neutral (face units), for the wrinkles that show it."""
    if neutral is None:
        return {}
    cur, neu = frame.to_uv(landmarks), frame.to_uv(neutral)
    d = cur - neu
    d -= d[_STABLE].mean(0)  # the head may drift between frames; only the face's own motion counts
    return {
        "brow_raise": float(-d[17:27, 1].mean()),
        "brow_knit": float(d[[21, 22], 1].mean() + (d[21, 0] - d[22, 0]) / 2),
        "nose": float(-d[31:36, 1].mean()),
        "cheek": float(-d[[40, 41, 46, 47], 1].mean()),
        "smile": float(-d[[48, 54], 1].mean()),
        "chin": float(-d[8, 1] - d[57, 1]) / 2,
    }


class _Painter:
    """Draws the parts of one face, back to front, on a grey PIL image."""

    def __init__(self, img: Image.Image, landmarks: np.ndarray, ap: Appearance):
        self.draw = ImageDraw.Draw(img)
        self.lm, self.ap, self.fr = landmarks, ap, _Frame(landmarks)
        self.skin = ap.skin

    def px(self, length: float) -> int:
        """A stroke width in face units, in whole pixels."""
        return max(1, int(round(length * self.fr.unit)))

    def head(self) -> np.ndarray:
        """Clothes, neck, hair, ears, the shaded face and the fringe; returns the face outline (px)."""
        draw, fr, ap, skin = self.draw, self.fr, self.ap, self.skin
        jaw_uv = fr.to_uv(self.lm[JAW])
        chin_v = float(jaw_uv[8, 1])
        draw.polygon(_xy(fr.to_px([[-2.6, chin_v + 3.5], [-2.2, chin_v + 0.75], [2.2, chin_v + 0.75],
                                   [2.6, chin_v + 3.5]])), fill=_grey(ap.clothes))
        draw.polygon(_xy(fr.to_px([[-0.45, 0.6], [0.45, 0.6], [0.5, chin_v + 0.9], [-0.5, chin_v + 0.9]])),
                     fill=_grey(skin * 0.8))
        top_v = -0.31 - ap.hairline
        draw.polygon(fr.ellipse((0, (top_v - 0.25 + jaw_uv[0, 1]) / 2 + 0.15),
                                (1.16, (jaw_uv[0, 1] - top_v) / 2 + 0.55)), fill=_grey(ap.hair))
        for s in (-1, 1):
            draw.polygon(fr.ellipse((s * 1.03, 0.28), (0.13, 0.3), 20), fill=_grey(skin * 0.85))
        # The face: the jaw below, a forehead arc above, darker towards the edges for some relief.
        left_uv, right_uv = jaw_uv[0], jaw_uv[16]
        a = np.linspace(0, np.pi, 15)[1:-1]
        half = (right_uv[0] - left_uv[0]) / 2
        mid_u = (right_uv[0] + left_uv[0]) / 2
        base_v = (left_uv[1] + right_uv[1]) / 2
        forehead = np.stack([mid_u + half * np.cos(a), base_v - (base_v - top_v + 0.35) * np.sin(a) ** 0.8], 1)
        outline = np.concatenate([self.lm[JAW], fr.to_px(forehead)])
        centre = fr.to_px([[0, 0.45]])[0]
        for shrink, tone in ((1.0, 0.88), (0.93, 0.94), (0.86, 1.0)):
            draw.polygon(_xy(centre + shrink * (outline - centre)), fill=_grey(skin * tone))
        fringe = np.stack([mid_u + half * 1.05 * np.cos(a), top_v + 0.1 * np.sin(a) - 0.05], 1)
        cap = np.stack([mid_u + half * 1.05 * np.cos(a[::-1]), top_v - 0.9 * np.sin(a[::-1])], 1)
        draw.polygon(_xy(fr.to_px(np.concatenate([fringe, cap]))), fill=_grey(ap.hair))
        # Cheeks: light below each eye; they ride up with the lower lids (AU6).
        for lower, s in (([40, 41], -1), ([46, 47], 1)):
            v = float(fr.to_uv(self.lm[lower]).mean(0)[1])
            draw.polygon(fr.ellipse((s * 0.5, v + 0.3), (0.22, 0.15), 24), fill=_grey(skin * 1.03 + 2))
        return outline

    def wrinkles(self, act: dict[str, float]) -> None:
        """Lines that come with movement, darker the further the face has moved from neutral."""
        draw, fr, lm, skin = self.draw, self.fr, self.lm, self.skin
        dark = skin * 0.38  # how much darker than skin a full-depth wrinkle is

        def tone(amount: float, full: float) -> int:
            return _grey(skin - min(1.0, amount / full) * dark)

        brow_v = float(fr.to_uv(lm[17:27]).mean(0)[1])
        if act.get("brow_raise", 0) > 0.03:  # forehead lines (AU1, AU2)
            for j, dv in enumerate((0.13, 0.23, 0.33)):
                uu = np.linspace(-0.45 + 0.06 * j, 0.45 - 0.06 * j, 7)
                line = np.stack([uu, brow_v - dv - 0.025 * np.cos(uu * 3)], 1)
                draw.line(_xy(fr.to_px(line)), fill=tone(act["brow_raise"], 0.15), width=self.px(0.018))
        if act.get("brow_knit", 0) > 0.02:  # vertical frown lines between the brows (AU4)
            v = float(fr.to_uv(lm[[21, 22]]).mean(0)[1])
            for s in (-1, 1):
                draw.line(_xy(fr.to_px([[s * 0.06, v - 0.08], [s * 0.045, v + 0.07]])),
                          fill=tone(act["brow_knit"], 0.1), width=self.px(0.018))
        if act.get("nose", 0) > 0.015:  # across the bridge (AU9)
            v27 = float(fr.to_uv(lm[27:28])[0, 1])
            for dv in (0.07, 0.13, 0.19):
                draw.line(_xy(fr.to_px([[-0.08, v27 + dv + 0.02], [0, v27 + dv], [0.08, v27 + dv + 0.02]])),
                          fill=tone(act["nose"], 0.06), width=self.px(0.015))
        if act.get("cheek", 0) > 0.012:  # crow's feet (AU6, AU7)
            for corner, s in ((36, -1), (45, 1)):
                c = fr.to_uv(lm[corner:corner + 1])[0]
                for dv in (-0.04, 0.0, 0.045):
                    draw.line(_xy(fr.to_px([c + [s * 0.04, dv * 0.5], c + [s * 0.13, dv * 1.6]])),
                              fill=tone(act["cheek"], 0.05), width=self.px(0.012))
        if act.get("chin", 0) > 0.02:  # the raised chin boss (AU17)
            c = fr.to_uv(lm[8:9])[0]
            draw.polygon(fr.ellipse(c + [0, -0.18], (0.12, 0.06), 16),
                         fill=_grey(skin - 0.5 * min(1.0, act["chin"] / 0.06) * dark))
        # Smile folds from the nose wings past the lip corners, always faint, deeper when the corners rise.
        fold = _grey(skin - (0.25 + 0.75 * min(1.0, max(0.0, act.get("smile", 0.0)) / 0.1)) * dark * 0.7)
        for wing, corner, s in ((31, 48, -1), (35, 54, 1)):
            w_uv, c_uv = fr.to_uv(lm[[wing, corner]])
            path = np.array([w_uv + [s * 0.06, -0.02], (w_uv + c_uv) / 2 + [s * 0.1, 0], c_uv + [s * 0.07, 0.06]])
            draw.line(_xy(fr.to_px(_catmull_rom(path, closed=False))), fill=fold, width=self.px(0.014))

    def eyes(self) -> None:
        """White, iris and pupil, then the lids drawn over them, so the opening follows the landmarks."""
        draw, fr, skin = self.draw, self.fr, self.skin
        for eye, s in ((EYE_L, -1), (EYE_R, 1)):
            p = self.lm[eye]  # corner, upper lid, corner, lower lid
            draw.polygon(_xy(_catmull_rom(p, closed=True, steps=5)), fill=_grey(min(235.0, skin + 55)))
            ecx, ecy = p.mean(0)
            r = 0.2 * float(np.linalg.norm(p[3] - p[0]))
            draw.ellipse([ecx - r, ecy - r, ecx + r, ecy + r], fill=_grey(self.ap.iris))
            draw.ellipse([ecx - 0.45 * r, ecy - 0.45 * r, ecx + 0.45 * r, ecy + 0.45 * r], fill=10)
            draw.ellipse([ecx + 0.3 * r, ecy - 0.45 * r, ecx + 0.5 * r, ecy - 0.25 * r], fill=235)
            upper = _catmull_rom(p[[0, 1, 2, 3]], closed=False, steps=5)
            lower = _catmull_rom(p[[3, 4, 5, 0]], closed=False, steps=5)
            cover = 1.6 * r * fr.ey
            draw.polygon(_xy(np.concatenate([upper, upper[::-1] - cover])), fill=_grey(skin * 0.93))
            draw.polygon(_xy(np.concatenate([lower, lower[::-1] + cover])), fill=_grey(skin))
            # The crease sits on the socket, fixed to the corners: a raised lid (AU5) meets it.
            corners = fr.to_uv(p[[0, 3]])
            crease = np.array([corners[0] + [-s * 0.01, -0.02], corners.mean(0) + [0, -0.1],
                               corners[1] + [s * 0.01, -0.03]])
            draw.line(_xy(fr.to_px(_catmull_rom(crease, closed=False))), fill=_grey(skin * 0.72), width=self.px(0.012))
            draw.line(_xy(upper), fill=20, width=self.px(0.025), joint="curve")  # lashes
            draw.line(_xy(lower), fill=_grey(skin * 0.6), width=self.px(0.01))
            draw.line(_xy(fr.to_px(fr.to_uv(lower[2:-2]) + [0, 0.06])), fill=_grey(skin * 0.9), width=self.px(0.02))

    def brows(self) -> None:
        """Thick strokes, tapering from the inner end outwards."""
        for brow in (BROW_L, BROW_R):
            p = _catmull_rom(self.lm[brow], closed=False, steps=4)
            thick = np.linspace(1.0, 0.55, len(p)) if brow[0] == 22 else np.linspace(0.55, 1.0, len(p))
            offs = (self.ap.brow_width * self.fr.unit * thick)[:, None] * self.fr.ey / 2
            self.draw.polygon(_xy(np.concatenate([p - offs, (p + offs)[::-1]])), fill=_grey(self.ap.brow))

    def nose(self) -> None:
        """Side shadows, a lit tip, the line of the nostril wings and the nostrils."""
        draw, fr, skin = self.draw, self.fr, self.skin
        nose_uv = fr.to_uv(self.lm[27:36])
        for s, wing in ((-1, 31), (1, 35)):
            w = nose_uv[wing - 27]
            side = np.array([[s * 0.09, nose_uv[0, 1] + 0.08], [s * 0.08, (nose_uv[0, 1] + w[1]) / 2],
                             w + [s * 0.01, -0.07]])
            draw.line(_xy(fr.to_px(_catmull_rom(side, closed=False))), fill=_grey(skin * 0.86), width=self.px(0.025))
        draw.polygon(fr.ellipse(nose_uv[3] + [0, 0.01], (0.07, 0.05), 16), fill=_grey(skin * 1.08 + 5))
        draw.line(_xy(_catmull_rom(self.lm[31:36], closed=False)), fill=_grey(skin * 0.6), width=self.px(0.014))
        for n in (32, 34):
            draw.polygon(fr.ellipse(nose_uv[n - 27] + [0, -0.015], (0.045, 0.022), 14), fill=_grey(skin * 0.35))

    def mouth(self) -> None:
        """Outer lips; a dark opening with teeth when the inner lips part (AU25-27); the lip seam."""
        draw, fr, ap = self.draw, self.fr, self.ap
        draw.polygon(_xy(_catmull_rom(self.lm[OUTER_LIP], closed=True, steps=4)), fill=_grey(ap.lip))
        inner = self.lm[INNER_LIP]
        upper = _catmull_rom(inner[[0, 1, 2, 3, 4]], closed=False)
        lower = _catmull_rom(inner[[4, 5, 6, 7, 0]], closed=False)
        gap = float(np.max(np.abs(fr.to_uv(inner[[1, 2, 3]])[:, 1] - fr.to_uv(inner[[7, 6, 5]])[:, 1]))) * fr.unit
        if gap > 1.0:
            draw.polygon(_xy(np.concatenate([upper, lower])), fill=_grey(ap.lip * 0.2))
            teeth = min(0.45 * gap, 0.06 * fr.unit) * fr.ey
            edge = upper[2:-2]
            draw.polygon(_xy(np.concatenate([edge, edge[::-1] + teeth])), fill=_grey(min(230.0, self.skin + 40)))
        draw.line(_xy(upper), fill=_grey(ap.lip * 0.35), width=self.px(0.018), joint="curve")


def render_face(
    landmarks: np.ndarray,
    size: tuple[int, int] = FRAME_SIZE,
    appearance: Appearance | None = None,
    neutral: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Draw a grey face from its 68 landmarks (pixels, iBUG order) -> uint8 (height, width).

    `neutral`, the same face's landmarks at rest, adds the wrinkles that go with movement
    (forehead lines, frown lines, nose wrinkles, crow's feet, smile folds, chin bumps).
    `rng` adds the camera noise of `appearance`; without it the result has no noise.
    """
    ap = appearance or Appearance()
    lm = np.asarray(landmarks, dtype=np.float64)
    width, height = size
    img = Image.new("L", (width, height), _grey(ap.background))
    painter = _Painter(img, lm, ap)
    fr = painter.fr
    outline = painter.head()
    painter.wrinkles(_actions(lm, None if neutral is None else np.asarray(neutral, dtype=np.float64), fr))
    painter.eyes()
    painter.brows()
    painter.nose()
    painter.mouth()
    if ap.blur > 0:
        # Only the head has edges to soften; the background is flat until the lighting below.
        box = _head_box(outline, fr.unit, width, height)
        img.paste(img.crop(box).filter(ImageFilter.GaussianBlur(ap.blur)), box[:2])
    out = np.asarray(img, dtype=np.float32)
    # Lighting: a side light across the face and a vertical gradient over the frame.
    xs = np.arange(width, dtype=np.float32)
    across = np.clip((xs - np.float32(fr.origin[0])) / np.float32(1.3 * fr.unit), -1, 1)
    shade = 1 + np.float32(ap.light * 0.25) * across
    ramp = np.float32(ap.background_slope / 100.0) * (np.arange(height, dtype=np.float32) - np.float32(height / 2))
    out = out * shade[None, :] + ramp[:, None]
    if rng is not None and ap.noise > 0:
        out += _sensor_noise(rng, (height, width), ap.noise)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _head_box(outline: np.ndarray, unit: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0 = outline.min(0) - 0.25 * unit
    x1, y1 = outline.max(0) + 0.25 * unit
    return (max(0, int(x0)), max(0, int(y0)), min(width, int(x1) + 1), min(height, int(y1) + 1))


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, int], std: float) -> np.ndarray:
    """Zero-mean noise of the given std: the sum of the two nibbles of a random byte.

    Triangular rather than Gaussian, which no model here can tell apart at these levels,
    and several times cheaper to draw for a whole frame than normal variates.
    """
    b = np.frombuffer(rng.bytes(shape[0] * shape[1]), dtype=np.uint8).reshape(shape)
    total = (b & 15) + (b >> 4)  # 0..30, mean 15, variance 2 * (16**2 - 1) / 12
    return (total.astype(np.float32) - np.float32(15.0)) * np.float32(std / math.sqrt(42.5))


# ----------------------------------------------------------------------------- files


def record(*values: float) -> str:
    """One CK+ text line: each value as three spaces then %.7e."""
    return "".join("   %.7e" % v for v in values) + "\n"


def write_png(path: Path, pixels: np.ndarray) -> None:
    """An 8-bit grey (H, W) or RGB (H, W, 3) PNG, fast: Sub filter, Huffman-only deflate.

    Written directly because Pillow's encoder (even at compress_level=1) spends its time
    choosing row filters and matching strings; this is 2-3 times faster and any PNG reader
    opens it.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to its left
    filtered[:, 1:channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1:])

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    colour_type = {1: 0, 3: 2}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    # Huffman-only deflate: the filtered rows are small residuals, and skipping the string
    # matching halves the time at about the size of level 1.
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    data = packer.compress(filtered.tobytes()) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


# Junk as found in real copies: the first bytes of each format, then filler.
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(56)
_THUMBS_DB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56)
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(14)


# ----------------------------------------------------------------------------- generation


@dataclass
class SyntheticSummary:
    """What `generate` wrote."""

    subjects: int
    sequences: int
    frames: int
    au_counts: dict[int, int]  # every coded AU -> sequences coding it, sorted by AU
    emotion_counts: dict[int, int]  # emotion code -> emotion files, sorted
    junk_files: list[Path] = field(default_factory=list)  # junk files and the empty sequence folders
    rgb_sequences: int = 0
    small_sequences: int = 0  # sequences at 640x480
    seconds: float = 0.0
    out_dir: Path = Path(".")


@dataclass
class _SubjectResult:
    sequences: int
    frames: int
    aus: list[tuple[int, ...]]
    emotions: list[int]
    junk: list[Path]
    rgb: int
    small: int


def _draw_intensities(rng: np.random.Generator, aus: tuple[int, ...]) -> tuple[dict[int, float], dict[int, float]]:
    """(coded, acted) intensities: one strength per sequence, jittered per AU; sometimes coded 0."""
    strength = rng.uniform(1.5, 4.6)
    coded, acted = {}, {}
    for au in aus:
        level = int(np.clip(round(strength + rng.normal(0, 0.7)), 1, 5))
        acted[au] = float(level)
        # CK+ leaves some intensities uncoded (0); more often for the mouth-opening AUs.
        coded[au] = 0.0 if rng.random() < (0.25 if au in (25, 26, 27) else 0.04) else float(level)
    return coded, acted


def _write_subject(
    out: Path, seed: int, index: int, number: int, recipes: list[Recipe], frames_range: tuple[int, int],
    rgb_fraction: float, small_fraction: float, junk: bool,
) -> _SubjectResult:
    """Everything of one subject; depends only on (seed, index, number, recipes) and the options."""
    rng = _spawn(seed, 0, index)
    junk_rng = _spawn(seed, 2, index)  # its own stream, so --no-junk leaves every other byte as it was
    subject = f"S{number:03d}"
    shape = neutral_shape(rng)
    ap = Appearance.random(rng)
    scale = rng.uniform(100, 130)  # half the jaw width in pixels: faces 200-260 px wide
    centre = (320 + rng.uniform(-40, 40), 185 + rng.uniform(-15, 15))
    roll = float(np.clip(rng.normal(0, 2.0), -5, 5))
    gain = rng.uniform(0.85, 1.15)  # how strongly this subject moves for a given intensity
    dirs = {k: out / d / subject for k, d in
            (("img", IMAGES_DIR), ("facs", FACS_DIR), ("lmk", LANDMARKS_DIR), ("emo", EMOTION_DIR))}
    result = _SubjectResult(0, 0, [], [], [], 0, 0)
    seq_number = 0
    for recipe in recipes:
        seq_number += 1 + int(rng.random() < 0.12)  # CK+ sequence numbers skip now and then
        seq = f"{seq_number:03d}"
        coded, acted = _draw_intensities(rng, recipe.aus)
        side = int(rng.choice([-1, 1])) if recipe.unilateral else 0
        n_frames = int(rng.integers(frames_range[0], frames_range[1] + 1))
        size = SMALL_FRAME_SIZE if rng.random() < small_fraction else FRAME_SIZE
        rgb = rng.random() < rgb_fraction
        drift = rng.normal(0, 1.5, 2)
        frame_rng = np.random.default_rng(rng.integers(2 ** 63))
        neutral_px = place(shape, centre, scale, roll)
        peak_px = place(apply_aus(shape, acted, gain, side), centre, scale, roll) + drift
        for d in ("img", "lmk", "facs"):
            (dirs[d] / seq).mkdir(parents=True, exist_ok=True)
        for f in range(1, n_frames + 1):
            t = (f - 1) / (n_frames - 1)
            t = t * t * (3 - 2 * t)  # ease in and out, as a pose builds and settles
            true = neutral_px + t * (peak_px - neutral_px)
            pixels = render_face(true, size, ap, neutral_px if f > 1 else None, frame_rng)
            if rgb:
                tint = np.array([1.06, 1.0, 0.9], dtype=np.float32)
                pixels = np.clip(pixels[..., None] * tint, 0, 255).astype(np.uint8)
            stem = f"{subject}_{seq}_{f:08d}"
            write_png(dirs["img"] / seq / f"{stem}.png", pixels)
            # The tracker is not perfect: the written landmarks carry sub-pixel noise.
            noisy = true + frame_rng.normal(0, 0.4, true.shape)
            (dirs["lmk"] / seq / f"{stem}_landmarks.txt").write_text("".join(record(x, y) for x, y in noisy))
        stem = f"{subject}_{seq}_{n_frames:08d}"
        (dirs["facs"] / seq / f"{stem}_facs.txt").write_text("".join(record(au, coded[au]) for au in sorted(coded)))
        if recipe.emotion is not None:
            (dirs["emo"] / seq).mkdir(parents=True, exist_ok=True)
            (dirs["emo"] / seq / f"{stem}_emotion.txt").write_text(record(recipe.emotion))
            result.emotions.append(recipe.emotion)
        result.sequences += 1
        result.frames += n_frames
        result.aus.append(tuple(sorted(coded)))
        result.rgb += rgb
        result.small += size == SMALL_FRAME_SIZE
        if junk:
            result.junk += _sequence_junk(junk_rng, dirs, subject, seq, n_frames)
    if junk:
        result.junk += _subject_junk(junk_rng, index, dirs, seq_number)
    return result


def _sequence_junk(rng: np.random.Generator, dirs: dict[str, Path], subject: str, seq: str, n: int) -> list[Path]:
    junk = []
    if rng.random() < 0.08:
        junk.append(dirs["img"] / seq / "Thumbs.db")
        junk[-1].write_bytes(_THUMBS_DB)
    if rng.random() < 0.06:
        f = int(rng.integers(1, n + 1))
        junk.append(dirs["img"] / seq / f"._{subject}_{seq}_{f:08d}.png")
        junk[-1].write_bytes(_APPLEDOUBLE)
    if rng.random() < 0.04:
        f = int(rng.integers(1, n + 1))
        junk.append(dirs["lmk"] / seq / f"._{subject}_{seq}_{f:08d}_landmarks.txt")
        junk[-1].write_bytes(_APPLEDOUBLE)
    return junk


def _subject_junk(rng: np.random.Generator, index: int, dirs: dict[str, Path], last_seq: int) -> list[Path]:
    junk = []
    for key in ("img", "facs", "lmk"):
        if rng.random() < 0.1:
            junk.append(dirs[key] / ".DS_Store")
            junk[-1].write_bytes(_DS_STORE)
    # An empty sequence folder (no frames, no labels), always in the first subject.
    if index == 0 or rng.random() < 0.02:
        junk.append(dirs["img"] / f"{last_seq + 1:03d}")
        junk[-1].mkdir(parents=True, exist_ok=True)
    if index == 0:
        junk.append(dirs["img"] / "001" / "notes.txt")
        junk[-1].write_text("frames re-exported from the capture software; ignore\n")
        for key in ("img", "lmk"):
            folder = dirs[key] / "001"
            name = "._" + sorted(p.name for p in folder.iterdir() if p.name.startswith("S"))[0]
            junk.append(folder / name)
            junk[-1].write_bytes(_APPLEDOUBLE)
    return junk


def _write_subject_star(args: tuple) -> _SubjectResult:
    return _write_subject(*args)


def generate(
    out_dir: str | Path,
    subjects: int = 123,
    seed: int = 0,
    *,
    min_frames: int = 3,
    max_frames: int = 6,
    rgb_fraction: float = 0.02,
    small_fraction: float = 0.03,
    junk: bool = True,
    workers: int = 1,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write a synthetic CK+ tree under `out_dir` and say what is in it.

    The same arguments give byte-identical files; subject i does not depend on how many
    subjects follow it, so a smaller tree is a prefix of a larger one with the same seed.
    `workers` > 1 draws subjects in parallel processes (same files). An `out_dir` that
    already holds a CK+ tree is refused, unless `overwrite` removes the old tree first (only
    its four CK+ folders; anything else in `out_dir` stays). Bad arguments raise ValueError
    with a one-line message naming the flag (this module stays free of torch, so it does
    not import utils.UserError).
    """
    if not 1 <= subjects <= MAX_SUBJECTS:
        raise ValueError(f"--subjects {subjects}: give 1 to {MAX_SUBJECTS} subjects")
    if not 2 <= min_frames <= max_frames:
        raise ValueError(f"--min-frames {min_frames} --max-frames {max_frames}: need 2 <= min <= max")
    for flag, v in (("--rgb-fraction", rgb_fraction), ("--small-fraction", small_fraction)):
        if not 0 <= v <= 1:
            raise ValueError(f"{flag} {v}: give a fraction between 0 and 1")
    if workers < 1:
        raise ValueError(f"--workers {workers}: give 1 or more")
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} is a file: give a folder")
    trees = [out / d for d in (IMAGES_DIR, FACS_DIR, LANDMARKS_DIR, EMOTION_DIR)]
    existing = [out / top for top in dict.fromkeys(d.split("/")[0] for d in (IMAGES_DIR, FACS_DIR, LANDMARKS_DIR,
                                                                             EMOTION_DIR)) if (out / top).exists()]
    if existing and not overwrite:
        # Writing over another tree would mix its sequences with these ones.
        raise ValueError(f"OUT_DIR {out} already holds a CK+ tree ({existing[0]}): choose a new folder, "
                        "or pass --overwrite to replace it")
    for t in existing:
        shutil.rmtree(t)
    for t in trees:
        t.mkdir(parents=True)
    jobs = [(out, seed, i, number, recipes, (min_frames, max_frames), rgb_fraction, small_fraction, junk)
            for i, (number, recipes) in enumerate(subject_plan(seed, subjects))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_write_subject_star, jobs, chunksize=4))
    else:
        results = [_write_subject(*job) for job in jobs]
    junk_files = [p for r in results for p in r.junk]
    if junk:
        for d in (IMAGES_DIR, FACS_DIR, LANDMARKS_DIR):
            junk_files.append(out / d / ".DS_Store")
            junk_files[-1].write_bytes(_DS_STORE)
    au_counts = Counter(au for r in results for aus in r.aus for au in aus)
    emotions = Counter(e for r in results for e in r.emotions)
    return SyntheticSummary(
        out_dir=out,
        subjects=subjects,
        sequences=sum(r.sequences for r in results),
        frames=sum(r.frames for r in results),
        au_counts=dict(sorted(au_counts.items())),
        emotion_counts=dict(sorted(emotions.items())),
        junk_files=sorted(set(junk_files)),
        rgb_sequences=sum(r.rgb for r in results),
        small_sequences=sum(r.small for r in results),
        seconds=time.perf_counter() - start,
    )


def _junk_kind(path: Path) -> str:
    if path.name.startswith("._"):
        return "._* AppleDouble"
    if path.name.isdigit():
        return "empty sequence folder"
    return path.name


def format_summary(s: SyntheticSummary) -> str:
    """The report the command line prints."""
    lines = [
        f"wrote a synthetic CK+ tree to {s.out_dir} in {s.seconds:.1f} s",
        f"  {s.subjects} subjects, {s.sequences} sequences, {s.frames} frames "
        f"({s.rgb_sequences} sequences RGB, {s.small_sequences} at 640x480)",
        "  AUs coded at the peak frames (AU: sequences):",
    ]
    items = [f"AU{au}: {n}" for au, n in s.au_counts.items()]
    lines += ["    " + ", ".join(items[i:i + 10]) for i in range(0, len(items), 10)]
    emo = ", ".join(f"{EMOTIONS[e]} {n}" for e, n in s.emotion_counts.items())
    lines.append(f"  emotion files: {sum(s.emotion_counts.values())} ({emo or 'none'})")
    kinds = Counter(_junk_kind(p) for p in s.junk_files)
    lines.append(f"  junk: {len(s.junk_files)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) or 'none'})")
    lines.append(f"  DATA_DIR     {s.out_dir / IMAGES_DIR}")
    lines.append(f"  LABEL_DIR    {s.out_dir / FACS_DIR}")
    lines.append(f"  LANDMARK_DIR {s.out_dir / LANDMARKS_DIR}")
    lines.append(f"  EMOTION_DIR  {s.out_dir / EMOTION_DIR}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write a synthetic CK+ copy (images, FACS labels, landmarks, emotions) with the official layout.")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where to write the tree (created if missing)")
    p.add_argument("--subjects", type=int, default=123, metavar="N",
                   help=f"number of subjects, 1..{MAX_SUBJECTS} (default: 123, as CK+: 593 sequences)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    p.add_argument("--min-frames", type=int, default=3, metavar="N", help="fewest frames per sequence (default: 3)")
    p.add_argument("--max-frames", type=int, default=6, metavar="N", help="most frames per sequence (default: 6)")
    p.add_argument("--rgb-fraction", type=float, default=0.02, metavar="F",
                   help="fraction of sequences saved as RGB, 0 for none (default: 0.02)")
    p.add_argument("--small-fraction", type=float, default=0.03, metavar="F",
                   help="fraction of sequences at 640x480 instead of 640x490, 0 for none (default: 0.03)")
    p.add_argument("--no-junk", dest="junk", action="store_false",
                   help="leave out .DS_Store, Thumbs.db, ._* files, notes.txt and the empty sequence folders")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a CK+ tree already in OUT_DIR (its four CK+ folders only) instead of refusing")
    p.add_argument("-j", "--workers", type=int, default=1, metavar="N",
                   help="processes drawing subjects in parallel; same files (default: 1)")
    return p


def main(args: argparse.Namespace) -> int:
    try:
        summary = generate(args.out_dir, args.subjects, args.seed, min_frames=args.min_frames,
                           max_frames=args.max_frames, rgb_fraction=args.rgb_fraction,
                           small_fraction=args.small_fraction, junk=args.junk, workers=args.workers,
                           overwrite=args.overwrite)
    except ValueError as e:  # a bad flag or OUT_DIR: one line, no traceback
        print(f"synthetic.py: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
