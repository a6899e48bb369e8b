"""Face crops from landmarks, normalisation and augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import preprocess


def box_landmarks(x0, y0, x1, y1):
    """68 points whose bounding box is exactly (x0, y0)-(x1, y1)."""
    pts = np.full((68, 2), [(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
    pts[0] = (x0, y0)
    pts[1] = (x1, y1)
    return pts


def test_original_crop_is_the_original_rectangle():
    lmk = box_landmarks(200, 150, 400, 380)
    assert preprocess.crop_box(lmk, (640, 490), "original") == (150, 50, 450, 390)


def test_original_crop_is_clipped_at_the_frame_edge():
    lmk = box_landmarks(20, 60, 300, 485)
    # left 20-50 and top 60-100 fall outside; bottom 485+10 too
    assert preprocess.crop_box(lmk, (640, 490), "original") == (0, 0, 350, 490)


def test_square_crop_is_centred_and_keeps_aspect():
    lmk = box_landmarks(200, 150, 400, 350)  # 200 x 200 box centred on (300, 250)
    left, top, right, bottom = preprocess.crop_box(lmk, (640, 490), "square", margin=0.5)
    assert right - left == bottom - top == 300
    assert (left + right) / 2 == 300 and (top + bottom) / 2 == 250
    # a tall box: the side follows the longer side
    left, top, right, bottom = preprocess.crop_box(box_landmarks(250, 100, 350, 400), (640, 490), "square", margin=0)
    assert (right - left, bottom - top) == (300, 300)


def test_square_crop_near_the_edge_is_padded_black_by_default_and_shifted_inside_with_crop_fill_image():
    frame = np.full((490, 640), 200, dtype=np.uint8)
    lmk = box_landmarks(-40, 320, 160, 520)  # face partly outside the frame, bottom-left
    box = preprocess.crop_box(lmk, (640, 490), "square", margin=0)
    assert box == (-40, 320, 160, 520)
    crop = preprocess.crop_face(frame, lmk, size=20, mode="square", margin=0)
    assert crop.shape == (20, 20) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, preprocess.crop_face(frame, lmk, size=20, mode="square", margin=0, fill="black"))
    # 40 of 200 px to the left and 30 of 200 px at the bottom lie outside the frame: black
    assert (crop[:, :3] == 0).all() and (crop[-1:, :] == 0).all()
    assert (crop[5:15, 8:15] == 200).all()
    # --crop-fill image moves the square inside the frame: (0, 290, 200, 490), no black
    assert preprocess.inside_frame(box, (640, 490)) == (0, 290, 200, 490)
    assert (preprocess.crop_face(frame, lmk, size=20, mode="square", margin=0, fill="image") == 200).all()


def test_original_crop_stretches_to_the_square():
    frame = np.zeros((490, 640), dtype=np.uint8)
    frame[:, 320:] = 255  # right half white
    lmk = box_landmarks(220, 200, 420, 300)  # original box 170..470 wide, 100..310 tall
    crop = preprocess.crop_face(frame, lmk, size=30, mode="original")
    assert crop.shape == (30, 30)
    # x=320 sits at 150/300 of the box width: the edge is in the middle of the crop
    assert (crop[:, :14] == 0).all() and (crop[:, 16:] == 255).all()


def test_rgb_input_becomes_gray():
    from PIL import Image
    rgb = Image.new("RGB", (640, 490), (255, 0, 0))
    crop = preprocess.crop_face(rgb, box_landmarks(200, 150, 400, 350), size=16)
    assert crop.shape == (16, 16) and int(crop[8, 8]) == 76  # ITU-R 601 luma of pure red


def test_prepare_batch_normalises_and_makes_three_channels():
    images = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    x = preprocess.prepare_batch(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    expected = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    half = preprocess.prepare_batch(images, *preprocess.resolve_norm("half", (0,) * 3, (1,) * 3))
    torch.testing.assert_close(half[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, -0.2]]))


def test_channels_last():
    x = preprocess.prepare_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_is_seeded_and_changes_images():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8)
    a = preprocess.prepare_batch(images, (0.5,) * 3, (0.5,) * 3, augment=True, generator=g)
    b = preprocess.prepare_batch(images, (0.5,) * 3, (0.5,) * 3, augment=True,
                                 generator=torch.Generator().manual_seed(3))
    plain = preprocess.prepare_batch(images, (0.5,) * 3, (0.5,) * 3)
    assert a.shape == plain.shape == (4, 3, 32, 32)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, plain)
    with pytest.raises(ValueError):
        preprocess.prepare_batch(images, (0.5,) * 3, (0.5,) * 3, augment=True)
