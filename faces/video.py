"""Video files, read and written with PyAV (the optional `av` package): frames streamed one at a
time as a viewer shows them (rotation metadata applied), each with its number and time; and an
MP4 written frame by frame. A photo is read as a clip of one frame (`PhotoReader`, with Pillow,
EXIF rotation applied), so whatever reads frames reads both the same way. Nothing here knows
about faces or AUs.

PyAV is imported only when a video is opened, so the rest of the project runs without it.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from ckplus import crop_cache
import utils

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                  ".ogv", ".ts", ".mts")
INSTALL_HINT = "pip install -r requirements-predict.txt"
# Rate of the written video when the input does not say its own (rare: raw streams).
FALLBACK_RATE = Fraction(25)
# A video whose decoding ends more than this many frames (or 2% of them) short of its announced
# length is reported as cut short; the slack absorbs rounded durations and the few frames an
# MP4 edit list may hide.
SHORT_SLACK = 3


class VideoError(Exception):
    """Why a video cannot be read (further): the message is the CSV row's detail."""


class CutShort(VideoError):
    """The video decoded without an error but ended well before the length it announces."""


def is_video(path: Path) -> bool:
    return path.name.lower().endswith(VIDEO_SUFFIXES)


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError(f"PyAV is not installed: {INSTALL_HINT}") from None
    return av


def _reason(e: Exception) -> str:
    """FFmpeg's own words without the errno and file name PyAV adds around them."""
    return utils.first_line(getattr(e, "strerror", None) or e) or type(e).__name__


class VideoReader:
    """An open video: its frame rate, an estimate of its length, and its frames one at a time.

    Frames are numbered from 0 in display order; a frame's time is its presentation time in
    seconds from the start of the stream (frame / rate for constant-rate video).
    """

    is_video = True

    def __init__(self, path: Path):
        av = _import_av()
        self.path = path
        self._error = av.FFmpegError
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"not a video file PyAV can decode ({_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError("the file holds no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps pace with dlib
        self.decoded = 0

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    @property
    def rate(self) -> Fraction | None:
        """Frames per second (the stream's average), None when the file does not say."""
        rate = self.stream.average_rate or self.stream.guessed_rate
        return Fraction(rate) if rate else None

    @property
    def expected_frames(self) -> int | None:
        """The number of frames the file announces: its index's count, else duration x rate."""
        if self.stream.frames:
            return int(self.stream.frames)
        seconds = None
        if self.stream.duration is not None and self.stream.time_base is not None:
            seconds = float(self.stream.duration * self.stream.time_base)
        elif self.container.duration is not None:
            seconds = self.container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        if seconds is None or self.rate is None:
            return None
        return round(seconds * self.rate)

    def frames(self, every: int = 1) -> Iterator[tuple[int, float, Image.Image]]:
        """(number, time in seconds, RGB image upright) of frames 0, every, 2 * every, ...

        Every frame is decoded (inter-frame codecs need them all) but only the kept ones are
        converted. Raises VideoError when the decoder gives up part way; the frames before it
        have been yielded, and `decoded` says how many there were.
        """
        start = self.stream.start_time
        index = -1
        try:
            for frame in self.container.decode(self.stream):
                index += 1
                self.decoded = index + 1
                if index % every:
                    continue
                yield index, self._seconds(frame, index, start), upright(frame)
        except self._error as e:
            raise VideoError(f"decoding failed after frame {index} ({_reason(e)})") from None

    def _seconds(self, frame, index: int, start: int | None) -> float:
        if frame.pts is None or frame.time_base is None:
            return float(index / self.rate) if self.rate else float("nan")
        return float((frame.pts - (start or 0)) * frame.time_base)

    def check_complete(self) -> None:
        """Raise CutShort when decoding ended well short of the announced length: a file cut
        off in a copy decodes without an error, only shorter."""
        expected = self.expected_frames
        if expected and self.decoded < expected - max(SHORT_SLACK, 0.02 * expected):
            raise CutShort(f"only {self.decoded} of the {expected} frames it announces decode "
                           f"(the file is cut short or damaged)")


def read_image(path: Path) -> Image.Image:
    """Decode a photo as a viewer shows it (EXIF rotation applied); raises one of crop_cache.DECODE_ERRORS."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


class PhotoReader:
    """A photo as a clip of one frame, read like a VideoReader: frame 0, at no time (NaN), the
    image as a viewer shows it. Raises VideoError when Pillow cannot decode it."""

    rate = None  # a photo has no frame rate
    is_video = False

    def __init__(self, path: Path):
        self.path = path
        try:
            self.image = read_image(path)
        except UnidentifiedImageError:
            raise VideoError("not an image file Pillow can decode") from None
        except crop_cache.DECODE_ERRORS as e:
            raise VideoError(f"{type(e).__name__}: {utils.first_line(e)}") from None
        self.decoded = 0

    def __enter__(self) -> PhotoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.image = None

    @property
    def expected_frames(self) -> int:
        return 1

    def frames(self, every: int = 1) -> Iterator[tuple[int, float, Image.Image]]:
        """The one frame (every N keeps frame 0 of any clip)."""
        self.decoded = 1
        yield 0, float("nan"), self.image

    def check_complete(self) -> None:
        """A photo that decoded is whole."""


def open_clip(path: Path) -> VideoReader | PhotoReader:
    """A video, or a photo as a clip of one frame; raises VideoError when it cannot be read."""
    return VideoReader(path) if is_video(path) else PhotoReader(path)


def upright(frame) -> Image.Image:
    """The frame as RGB, turned as the video's display matrix says (phones store portrait
    video sideways and a rotation beside it): the counterpart of a photo's EXIF rotation."""
    image = frame.to_image()
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_270}.get(round(getattr(frame, "rotation", 0) or 0) % 360)
    return image.transpose(turn) if turn is not None else image


class VideoWriter:
    """H.264 MP4 (MPEG-4 Part 2 where the FFmpeg build lacks x264), written frame by frame into
    an open binary file. Frames of odd width or height are padded with black by one pixel,
    which 4:2:0 chroma needs."""

    def __init__(self, file: BinaryIO, rate: Fraction | None, size: tuple[int, int]):
        av = _import_av()
        self._av = av
        self.container = av.open(file, mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate or FALLBACK_RATE)
        self.size = (size[0] + size[0] % 2, size[1] + size[1] % 2)
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"

    def write(self, image: Image.Image) -> None:
        if image.size != self.size:
            canvas = Image.new("RGB", self.size)
            canvas.paste(image, (0, 0))
            image = canvas
        for packet in self.stream.encode(self._av.VideoFrame.from_image(image.convert("RGB"))):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()
