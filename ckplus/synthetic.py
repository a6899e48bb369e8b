"""A synthetic CK+ copy: faces drawn from 68 landmarks, moved by FACS Action Units.

Real CK+ is licensed per user and never available here, so every test, demo and
benchmark runs on a tree this module writes. The tree has the official layout, file
names and number formats (ckplus/__init__.py, CKPLUS.md), the junk a real copy carries, and label
statistics that follow CK+'s table: with the defaults (123 subjects, any seed) it holds
593 sequences, 327 emotion files, and exactly the AUs 1, 2, 4, 5, 6, 7, 12, 15, 17 and 25
are coded in more than 90 sequences.

How a sequence is made, section by section below:
  the label recipe  each sequence draws a set of AUs (and maybe an emotion) from a deck whose
                    totals follow CK+'s table;
  face geometry     each subject gets its own neutral 68-point shape; the peak is that shape
                    plus each AU's movements (the AU_MOVES table) scaled by its intensity;
  drawing           `render_face` draws a grey face from landmarks alone;
  generation        the frames ease from neutral to peak; each subject's frames, landmark,
                    FACS and emotion files and junk are written by one (possibly parallel) job.

    python synthetic.py /tmp/ckplus                 # the default tree (593 sequences)
    python synthetic.py /tmp/tiny --subjects 3      # a prefix of the default tree
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import ckplus
from utils import HelpFormatter, UserError, run_cli

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


# What each AU does to the face. A row (landmarks, axis, amount) moves those landmarks along
# X or Y (face units, y down) at intensity C: one amount for all of them, one each, or a
# function of the neutral shape where the movement depends on the face. A fourth field, -1 or
# +1, marks a row that belongs to the image left or right half only (unilateral AU12/AU14).
# AUs not listed (e.g. AU21, AU28, AU64) are coded in the labels but do not move the face.
X, Y = 0, 1
BROW_R_OUTER_FIRST = BROW_R[::-1]  # so both brows take their values in the same order, outer -> inner
UPPER_LIDS, LOWER_LIDS = [37, 38, 43, 44], [40, 41, 46, 47]
UPPER_LIP, LOWER_LIP = [49, 50, 51, 52, 53], [55, 56, 57, 58, 59]  # outer lip between the corners
LIP_CORNERS = [48, 54, 60, 64]


def _mouth_width(shape: np.ndarray) -> float:
    return shape[54, 0] - shape[48, 0]


def _lip_corners(up: float, out: float) -> list[tuple]:
    """AU12/AU14: each corner up and outwards, the lip points beside it following less."""
    rows = []
    for side, landmarks in ((-1, [48, 60, 49, 59, 61, 67]), (1, [54, 64, 53, 55, 63, 65])):
        rows.append((landmarks, Y, [-f * up for f in (1, 0.8, 0.4, 0.45, 0.3, 0.3)], side))
        rows.append((landmarks, X, [side * f * out for f in (1, 0.8, 0.35, 0.35, 0.2, 0.2)], side))
    return rows


def _jaw_drop(drop: float) -> list[tuple]:
    """AU26/AU27: the chin and lower lip go down by `drop`, the jaw line and lip corners less."""
    return [
        (JAW, Y, lambda shape: drop * _jaw_weight(shape)), ([56, 57, 58], Y, drop), ([55, 59], Y, 0.8 * drop),
        ([65, 66, 67], Y, [0.9 * drop, drop, 0.9 * drop]), (LIP_CORNERS, Y, 0.3 * drop),
    ]


AU_MOVES: dict[int, list[tuple]] = {
    1: [  # inner brow raiser
        (BROW_L, Y, [-0.01, -0.04, -0.08, -0.12, -0.14]), (BROW_R_OUTER_FIRST, Y, [-0.01, -0.04, -0.08, -0.12, -0.14]),
        ([21, 22], X, [-0.01, 0.01]),
    ],
    2: [  # outer brow raiser
        (BROW_L, Y, [-0.14, -0.13, -0.09, -0.04, -0.01]), (BROW_R_OUTER_FIRST, Y, [-0.14, -0.13, -0.09, -0.04, -0.01]),
        ([37, 44], Y, -0.01),
    ],
    4: [  # brow lowerer: down and together
        (BROW_L, Y, [0.04, 0.06, 0.08, 0.11, 0.12]), (BROW_R_OUTER_FIRST, Y, [0.04, 0.06, 0.08, 0.11, 0.12]),
        (BROW_L, X, [0.0, 0.02, 0.04, 0.06, 0.07]), (BROW_R, X, [-0.07, -0.06, -0.04, -0.02, 0.0]),
        (UPPER_LIDS, Y, 0.012),
    ],
    5: [(UPPER_LIDS, Y, -0.06), ([36, 39, 42, 45], Y, -0.005)],  # upper lid raiser
    6: [  # cheek raiser: lower lid and outer corner up, crow's feet
        (LOWER_LIDS, Y, [-0.025, -0.04, -0.04, -0.025]), ([36, 45], Y, -0.02), ([36, 45], X, [0.01, -0.01]),
        (UPPER_LIDS, Y, 0.01), ([17, 26], Y, 0.02), ([1, 15], X, [0.015, -0.015]),
    ],
    7: [(LOWER_LIDS, Y, [-0.045, -0.035, -0.035, -0.045]), (UPPER_LIDS, Y, 0.02)],  # lid tightener
    9: [  # nose wrinkler: nose and upper lip up, inner brows down
        (NOSTRILS, Y, -0.06), ([29, 30], Y, [-0.02, -0.045]), ([31, 35], X, [-0.015, 0.015]),
        (UPPER_LIP, Y, -0.04), ([61, 62, 63], Y, -0.03), ([21, 22], Y, 0.04), (LOWER_LIDS, Y, -0.02),
    ],
    10: [(UPPER_LIP, Y, -0.06), ([61, 62, 63], Y, -0.045), (NOSTRILS, Y, -0.015)],  # upper lip raiser
    12: _lip_corners(up=0.12, out=0.08) + [([50, 51, 52], Y, -0.015), ([56, 57, 58], Y, 0.01)],  # lip corner puller
    14: _lip_corners(up=0.02, out=0.05),  # dimpler: corners back, barely up
    15: [  # lip corner depressor
        ([48, 54], Y, 0.1), ([60, 64], Y, 0.085), ([49, 53, 59, 55], Y, 0.035), ([48, 60], X, 0.01),
        ([54, 64], X, -0.01),
    ],
    16: [([56, 57, 58], Y, 0.06), ([65, 66, 67], Y, 0.05)],  # lower lip depressor
    17: [  # chin raiser: chin and lower lip up, mouth arches
        (JAW, Y, lambda shape: -0.07 * _jaw_weight(shape)), ([56, 57, 58], Y, -0.06), ([55, 59], Y, -0.03),
        ([65, 66, 67], Y, -0.015), ([61, 62, 63], Y, -0.015), (UPPER_LIP, Y, -0.02), (LIP_CORNERS, Y, 0.025),
    ],
    18: [([48, 60], X, 0.07), ([54, 64], X, -0.07)],  # lip pucker
    20: [  # lip stretcher: corners sideways (further on a wide mouth), a little down
        ([48, 60], X, lambda shape: -0.1 * _mouth_width(shape) / 0.74),
        ([54, 64], X, lambda shape: 0.1 * _mouth_width(shape) / 0.74),
        ([49, 59], X, -0.04), ([53, 55], X, 0.04), (LIP_CORNERS, Y, 0.025),
    ],
    23: [  # lip tightener: narrower, thinner lips
        ([48, 60, 49, 59], X, 0.04), ([54, 64, 53, 55], X, -0.04), ([50, 51, 52], Y, 0.025), ([56, 57, 58], Y, -0.025),
    ],
    24: [(UPPER_LIP, Y, 0.035), (LOWER_LIP, Y, -0.04), ([48, 60], X, -0.015), ([54, 64], X, 0.015)],  # lip presser
    25: [  # lips part
        ([65, 66, 67], Y, [0.06, 0.07, 0.06]), (LOWER_LIP, Y, [0.03, 0.05, 0.055, 0.05, 0.03]), ([61, 62, 63], Y, -0.01),
    ],
    26: _jaw_drop(0.13),  # jaw drop
    27: _jaw_drop(0.24) + [([48, 60], X, 0.05), ([54, 64], X, -0.05), ([50, 51, 52, 61, 62, 63], Y, -0.02)],  # stretch
    38: [([31, 32], X, -0.03), ([34, 35], X, 0.03)],  # nostril dilator
    39: [([31, 32], X, 0.025), ([34, 35], X, -0.025)],  # nostril compressor
    43: [(UPPER_LIDS, Y, 0.09)],  # eyes closed: the upper lid down onto the lower one
    45: [(UPPER_LIDS, Y, 0.07)],  # blink
    54: [(slice(None), Y, lambda shape: 0.03 * shape[:, 1])],  # head down: the lower face compresses a little
}


def au_displacement(au: int, shape: np.ndarray, side: int = 0) -> np.ndarray:
    """Where each landmark of `shape` moves (face units) for `au` at intensity C: its AU_MOVES rows.

    `side` -1 or +1 limits a unilateral action (AU12, AU14) to the image left or right half.
    """
    d = np.zeros((68, 2))
    for landmarks, axis, amount, *half in AU_MOVES.get(au, []):
        if side and half and half[0] != side:
            continue
        d[landmarks, axis] = amount(shape) if callable(amount) else amount
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
        peak += gain * intensity_scale(intensity) * au_displacement(au, shape, side)
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
    noise: float = 3.0  # std of the sensor noise, grey levels
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
    out = np.array(img, dtype=np.float32)
    # Lighting: a side light across the face and a vertical gradient over the frame.
    xs = np.arange(width, dtype=np.float32)
    across = np.clip((xs - np.float32(fr.origin[0])) / np.float32(1.3 * fr.unit), -1, 1)
    shade = 1 + np.float32(ap.light * 0.25) * across
    ramp = np.float32(ap.background_slope / 100.0) * (np.arange(height, dtype=np.float32) - np.float32(height / 2))
    out *= shade  # in place: the same float32 results as out * shade + ramp, without two more frame copies
    out += ramp[:, None]
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

# Pillow filters every row adaptively whatever the level; of its settings, Huffman-only deflate is
# the fastest on these noisy frames and gives the smallest files (measured: about 11 ms and 168 kB
# a 640x490 frame, against 13-15 ms and 193 kB at level 1 with the default strategy).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY}

# Junk as found in real copies: the first bytes of each format, then filler.
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(56)
_THUMBS_DB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56)
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(14)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """An 8-bit grey (H, W) or RGB (H, W, 3) frame as a PNG."""
    Image.fromarray(pixels).save(path, **PNG_OPTIONS)


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
    out: Path, seed: int, index: int, number: int, recipes: list[Recipe], *, frames: tuple[int, int],
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
    dirs = {kind: folder / subject for kind, folder in ckplus.folders(out).items()}

    def path(kind: str, seq: str, frame: int) -> Path:
        return dirs[kind] / seq / ckplus.file_name(kind, subject, seq, frame)

    result = _SubjectResult(0, 0, [], [], [], 0, 0)
    seqs: list[str] = []
    seq_number = 0
    for recipe in recipes:
        seq_number += 1 + int(rng.random() < 0.12)  # CK+ sequence numbers skip now and then
        seq = f"{seq_number:03d}"
        seqs.append(seq)
        coded, acted = _draw_intensities(rng, recipe.aus)
        side = int(rng.choice([-1, 1])) if recipe.unilateral else 0
        n_frames = int(rng.integers(frames[0], frames[1] + 1))
        size = SMALL_FRAME_SIZE if rng.random() < small_fraction else FRAME_SIZE
        rgb = rng.random() < rgb_fraction
        drift = rng.normal(0, 1.5, 2)
        frame_rng = np.random.default_rng(rng.integers(2 ** 63))
        neutral_px = place(shape, centre, scale, roll)
        peak_px = place(apply_aus(shape, acted, gain, side), centre, scale, roll) + drift
        for kind in ("frame", "landmarks", "facs"):
            (dirs[kind] / seq).mkdir(parents=True, exist_ok=True)
        for f in range(1, n_frames + 1):
            t = (f - 1) / (n_frames - 1)
            t = t * t * (3 - 2 * t)  # ease in and out, as a pose builds and settles
            true = neutral_px + t * (peak_px - neutral_px)
            pixels = render_face(true, size, ap, neutral_px if f > 1 else None, frame_rng)
            if rgb:
                tint = np.array([1.06, 1.0, 0.9], dtype=np.float32)
                pixels = np.clip(pixels[..., None] * tint, 0, 255).astype(np.uint8)
            write_png(path("frame", seq, f), pixels)
            # The tracker is not perfect: the written landmarks carry sub-pixel noise.
            noisy = true + frame_rng.normal(0, 0.4, true.shape)
            path("landmarks", seq, f).write_text("".join(ckplus.record(x, y) for x, y in noisy))
        path("facs", seq, n_frames).write_text("".join(ckplus.record(au, coded[au]) for au in sorted(coded)))
        if recipe.emotion is not None:
            (dirs["emotion"] / seq).mkdir(parents=True, exist_ok=True)
            path("emotion", seq, n_frames).write_text(ckplus.record(recipe.emotion))
            result.emotions.append(recipe.emotion)
        result.sequences += 1
        result.frames += n_frames
        result.aus.append(tuple(sorted(coded)))
        result.rgb += rgb
        result.small += size == SMALL_FRAME_SIZE
        if junk:
            result.junk += _sequence_junk(junk_rng, dirs, subject, seq, n_frames)
    if junk:
        result.junk += _subject_junk(junk_rng, index, dirs, subject, seqs)
    return result


def _sequence_junk(rng: np.random.Generator, dirs: dict[str, Path], subject: str, seq: str, n: int) -> list[Path]:
    junk = []
    if rng.random() < 0.08:
        junk.append(dirs["frame"] / seq / "Thumbs.db")
        junk[-1].write_bytes(_THUMBS_DB)
    for kind, chance in (("frame", 0.06), ("landmarks", 0.04)):
        if rng.random() < chance:
            frame = int(rng.integers(1, n + 1))
            junk.append(dirs[kind] / seq / ("._" + ckplus.file_name(kind, subject, seq, frame)))
            junk[-1].write_bytes(_APPLEDOUBLE)
    return junk


def _subject_junk(rng: np.random.Generator, index: int, dirs: dict[str, Path], subject: str,
                  seqs: list[str]) -> list[Path]:
    junk = []
    for kind in ("frame", "facs", "landmarks"):
        if rng.random() < 0.1:
            junk.append(dirs[kind] / ".DS_Store")
            junk[-1].write_bytes(_DS_STORE)
    # An empty sequence folder (no frames, no labels), always in the first subject.
    if index == 0 or rng.random() < 0.02:
        junk.append(dirs["frame"] / f"{int(seqs[-1]) + 1:03d}")
        junk[-1].mkdir(parents=True, exist_ok=True)
    if index == 0:
        first = seqs[0]  # 001, or 002 when the numbering skipped at once
        junk.append(dirs["frame"] / first / "notes.txt")
        junk[-1].write_text("frames re-exported from the capture software; ignore\n")
        for kind in ("frame", "landmarks"):
            junk.append(dirs[kind] / first / ("._" + ckplus.file_name(kind, subject, first, 1)))
            junk[-1].write_bytes(_APPLEDOUBLE)
    return junk


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (a container's share), not the host's
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    workers: int | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write a synthetic CK+ tree under `out_dir` and say what is in it.

    The same arguments give byte-identical files; subject i does not depend on how many
    subjects follow it, so a smaller tree is a prefix of a larger one with the same seed.
    `workers` processes draw subjects in parallel (the same files for any number); None
    means one per CPU core. An `out_dir` that already holds a CK+ tree is refused, unless
    `overwrite` removes the old tree first (only its four CK+ folders; anything else in
    `out_dir` stays). Bad arguments raise UserError with a one-line message naming the flag.
    """
    if workers is None:
        workers = max(1, min(_usable_cpus(), subjects))
    if not 1 <= subjects <= MAX_SUBJECTS:
        raise UserError(f"--subjects {subjects}: give 1 to {MAX_SUBJECTS} subjects")
    if not 2 <= min_frames <= max_frames:
        raise UserError(f"--min-frames {min_frames} --max-frames {max_frames}: need 2 <= min <= max")
    for flag, v in (("--rgb-fraction", rgb_fraction), ("--small-fraction", small_fraction)):
        if not 0 <= v <= 1:
            raise UserError(f"{flag} {v}: give a fraction between 0 and 1")
    if workers < 1:
        raise UserError(f"--workers {workers}: give 1 or more")
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT_DIR {out} is a file: give a folder")
    folders = ckplus.folders(out)
    tops = dict.fromkeys(out / Path(sub).parts[0] for sub in ckplus.SUBDIRS.values())
    existing = [top for top in tops if top.exists()]
    if existing and not overwrite:
        # Writing over another tree would mix its sequences with these ones.
        raise UserError(f"OUT_DIR {out} already holds a CK+ tree ({existing[0]}): choose a new folder, "
                        "or pass --overwrite to replace it")
    for top in existing:
        shutil.rmtree(top)
    for folder in folders.values():
        folder.mkdir(parents=True)
    numbers, recipes = zip(*subject_plan(seed, subjects))
    write = functools.partial(_write_subject, out, seed, frames=(min_frames, max_frames), rgb_fraction=rgb_fraction,
                              small_fraction=small_fraction, junk=junk)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(write, range(subjects), numbers, recipes))
    else:
        results = list(map(write, range(subjects), numbers, recipes))
    junk_files = [p for r in results for p in r.junk]
    if junk:
        for kind in ("frame", "facs", "landmarks"):
            junk_files.append(folders[kind] / ".DS_Store")
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


# ----------------------------------------------------------------------------- command line


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
    lines += [f"  {ckplus.ROLES[kind]:<12} {folder}" for kind, folder in ckplus.folders(s.out_dir).items()]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write a synthetic CK+ copy (images, FACS labels, landmarks, emotions) with the official layout.",
        formatter_class=HelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where to write the tree (created if missing)")
    p.add_argument("--subjects", type=int, default=123, metavar="N",
                   help=f"number of subjects, 1..{MAX_SUBJECTS} (default: 123, as CK+: 593 sequences)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    p.add_argument("--min-frames", type=int, default=3, metavar="N", help="fewest frames per sequence")
    p.add_argument("--max-frames", type=int, default=6, metavar="N", help="most frames per sequence")
    p.add_argument("--rgb-fraction", type=float, default=0.02, metavar="F",
                   help="fraction of sequences saved as RGB, 0 for none")
    p.add_argument("--small-fraction", type=float, default=0.03, metavar="F",
                   help="fraction of sequences at 640x480 instead of 640x490, 0 for none")
    p.add_argument("--no-junk", dest="junk", action="store_false",
                   help="leave out .DS_Store, Thumbs.db, ._* files, notes.txt and the empty sequence folders "
                        "(default: written, as a real copy carries them)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a CK+ tree already in OUT_DIR (its four CK+ folders only) instead of refusing")
    p.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="processes drawing subjects in parallel; the same files for any N (default: one per CPU core)")
    return p


def main(args: argparse.Namespace) -> None:
    print(format_summary(generate(
        args.out_dir, args.subjects, args.seed, min_frames=args.min_frames, max_frames=args.max_frames,
        rgb_fraction=args.rgb_fraction, small_fraction=args.small_fraction, junk=args.junk, workers=args.workers,
        overwrite=args.overwrite)))


def cli(argv: list[str] | None = None) -> int:
    return run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
