"""Designers' own videos: a recording episode out to mp4, and a video plus its action log in as a recording.

- ``write_mp4`` encodes any stream of frames (H.264, yuv420p, nearest-neighbour upscaled so that small frames
  are watchable and survive the 2x2 chroma subsampling); the engine reuses it for generated videos, with ``hstack``
  to put real and generated frames side by side.
- ``export_mp4`` writes one episode of a recording as an mp4 at the recording's rate plus its action log
  (``games.data.action_log``), the same pair of files ``import_video`` reads.
- ``import_video`` decodes a video, resamples it to the dataset's tick rate and size and maps the action log onto
  the ticks (see ``games.data.action_log`` for how). Output tick ``k`` shows the source frame on screen at ``k / fps``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from games.data.action_log import TIME_EPS, read_action_log, write_action_log
from games.data.actions import ActionSpace
from games.data.errors import InputError

READ_CHUNK = 256  # frames read from a recording at a time when exporting


# ----------------------------------------------------------------------------------------------------------------
# Writing videos

def hstack(*frames: np.ndarray, gap: int = 2, gap_value: int = 255) -> np.ndarray:
    """Frames side by side with a ``gap``-pixel separator: [..., H, W_i, 3] -> [..., H, sum W_i + gaps, 3].

    Works on single frames [H, W, 3] and on clips [T, H, W, 3] alike (e.g. real | generated).
    """
    if not frames:
        raise ValueError("hstack needs at least one frame")
    arrays = [np.asarray(f, np.uint8) for f in frames]
    sep_shape = arrays[0].shape[:-2] + (gap, arrays[0].shape[-1])
    parts = []
    for i, a in enumerate(arrays):
        if a.shape[:-2] != arrays[0].shape[:-2] or a.shape[-1] != arrays[0].shape[-1]:
            raise ValueError(f"hstack: shapes {a.shape} and {arrays[0].shape} differ in more than width")
        if i and gap:
            parts.append(np.full(sep_shape, gap_value, np.uint8))
        parts.append(a)
    return np.concatenate(parts, axis=-2)


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale [H, W, 3] -> [H*scale, W*scale, 3], padded by edge replication to even sizes."""
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = frame.shape[:2]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class VideoWriter:
    """Streams uint8 [H, W, 3] frames into an H.264 mp4 at ``fps`` (use as a context manager).

    ``scale`` upscales each frame (nearest neighbour) first; ``crf`` is x264's quality (0 lossless, ~18 visually
    lossless). The file appears whole or not at all: it is written beside ``path`` and renamed on a clean close;
    an exception inside the ``with`` block leaves no file.
    """

    def __init__(self, path, fps: float, scale: int = 1, crf: int = 14):
        if not (isinstance(scale, int) and 1 <= scale <= 32):
            raise InputError(f"scale must be an integer in 1..32, got {scale!r}")
        if not fps > 0:
            raise InputError(f"fps must be positive, got {fps!r}")
        self.path, self.fps, self.scale, self.crf = Path(path), fps, scale, crf
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder: give the video's file name (NAME.mp4)")
        if self.path.suffix.lower() != ".mp4":
            raise InputError(f"{self.path}: a video is written as an mp4, so its name must end in .mp4")
        self.partial = self.path.with_name(self.path.stem + ".partial" + self.path.suffix)
        try:  # can it be written? Find out now, not after the frames are made
            self.partial.open("wb").close()
            self.partial.unlink()
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.frames = 0
        self._av = _av()
        self._container = self._stream = self._shape = None

    def write(self, frame: np.ndarray) -> None:
        av = self._av
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._shape is not None and frame.shape != self._shape:
            raise ValueError(f"frame {self.frames} has shape {frame.shape}, the first had {self._shape}")
        big = upscale(frame, self.scale)  # [H*scale, W*scale, 3], even sizes
        if self._container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.partial), "w", format="mp4")
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(100_000))
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(int(self.crf)), "preset": "medium"}
            self._shape = frame.shape
            self._stream.height, self._stream.width = big.shape[:2]
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file (``keep``) or throw it away."""
        try:
            if self._container is not None:
                if keep:
                    for packet in self._stream.encode():  # flush the encoder's delayed frames
                        self._container.mux(packet)
                self._container.close()
                self._container = None
                if keep:
                    os.replace(self.partial, self.path)
        finally:
            if self.partial.exists():
                self.partial.unlink()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(keep=exc_type is None)


def write_mp4(path, frames: Iterable[np.ndarray], fps: float, scale: int = 1, crf: int = 14) -> int:
    """Encode uint8 [H, W, 3] frames to an H.264 mp4 at ``fps``; returns the number of frames written."""
    with VideoWriter(path, fps, scale, crf) as writer:
        for frame in frames:
            writer.write(frame)
    if writer.frames == 0:
        raise InputError(f"no frames to write to {path}")
    return writer.frames


def export_mp4(data_root, out_path, episode: int | str | None = None, scale: int = 4,
               actions_log: bool = True, crf: int = 14) -> Path:
    """Write one episode of the recording at ``data_root`` to ``out_path`` (mp4 at the recording's fps).

    ``episode``: an index into the recording's episodes or an episode name; None is the first episode. With
    ``actions_log`` the episode's actions go beside the video as ``<out_path stem>.jsonl``. Returns ``out_path``.
    """
    from games.data.recording import Recording

    rec = Recording(data_root)
    ep = _pick_episode(rec, episode, data_root)
    out_path = Path(out_path)

    def frames() -> Iterator[np.ndarray]:
        for start in range(0, ep.length, READ_CHUNK):
            yield from ep.frames(start, min(start + READ_CHUNK, ep.length))

    write_mp4(out_path, frames(), rec.fps, scale=scale, crf=crf)
    if actions_log:
        write_action_log(out_path.with_suffix(".jsonl"), rec.action_space, ep.actions(0, ep.length), rec.fps)
    return out_path


def _pick_episode(rec, episode, root):
    eps = rec.episodes
    if not eps:
        raise InputError(f"recording {root} has no episodes")
    if episode is None:
        return eps[0]
    names = [e.name for e in eps]
    if isinstance(episode, str) and episode in names:
        return eps[names.index(episode)]
    if isinstance(episode, str) and episode.lstrip("-").isdigit():
        episode = int(episode)
    if isinstance(episode, int) and -len(eps) <= episode < len(eps):
        return eps[episode]
    raise InputError(f"no episode {episode!r} in {root}; it has {len(eps)}: {', '.join(names[:10])}"
                     + (" ..." if len(names) > 10 else ""))


def _chain(first, rest):
    yield first
    yield from rest


# ----------------------------------------------------------------------------------------------------------------
# Reading videos

@dataclass(frozen=True)
class ImportSummary:
    root: Path  # the dataset written to
    episode: str  # name of the new episode
    frames: int  # ticks written
    fps: float  # the dataset's tick rate
    source_frames: int  # frames decoded from the video
    source_fps: float  # the video's average frame rate
    before_log: int  # leading ticks before the log's first entry (recorded as no-op)
    warnings: tuple[str, ...] = ()  # what was imported but looks wrong (the command prints them)


def import_video(video, actions, out, width: int | None = None, height: int | None = None,
                 fps: float | None = None, action_space: ActionSpace | None = None, game: str | None = None,
                 chunk_frames: int = 256, progress: bool = True) -> ImportSummary:
    """Turn ``video`` plus its action log ``actions`` (JSONL) into one new episode of the dataset at ``out``.

    Size and rate default to the existing dataset's (else 64x64 at the video's own rate); the controls to
    ``action_space``, else the dataset's, else the log's header, else those seen in the log; ``game`` to the
    dataset's, else "imported". A dataset that already exists must agree on all of these.
    """
    from games.data.recording import Recording
    from games.data.writer import RecordingWriter

    video, out = Path(video), Path(out)
    existing = _existing_dataset(out, Recording)
    if existing is not None:
        width, height = width or existing.width, height or existing.height
        fps, game = fps or existing.fps, game or existing.game
        action_space = action_space or existing.action_space
    width, height, game = width or 64, height or 64, game or "imported"
    log = read_action_log(actions, action_space)
    space = log.action_space
    if existing is not None:
        _check_compatible(existing, out, game, space, fps, height, width)

    container, stream = _open_video(video)
    with container:
        source_fps = _frame_rate(stream, video)
        fps = float(fps or source_fps)
        if not fps > 0:
            raise InputError(f"fps must be positive, got {fps}")
        duration = _duration(container, stream)
        first_entry = float(log.times(source_fps)[0])
        if duration is not None and first_entry >= duration - TIME_EPS:
            raise InputError(f"action log {actions} starts at {first_entry:.3f} s, after the end of {video} "
                             f"({duration:.3f} s): it covers none of the video")
        decoded = [0]  # source frames decoded so far, counted by _decode
        ticks = _resample(_decode(container, stream, video, decoded), fps, source_fps)
        first = next(ticks, None)  # before anything is written: a video without frames leaves no episode
        if first is None:
            raise InputError(f"{video} has no video frames")
        before = int(np.ceil(first_entry * fps - TIME_EPS))  # leading ticks before the log's first entry
        from tqdm import tqdm

        bar = tqdm(total=round(duration * fps) if duration else None, unit="frame", disable=not progress,
                   desc=f"import {video.name}")
        fps = int(fps) if fps.is_integer() else fps  # keep whole rates whole in the manifest
        source = {"video": str(video), "actions": str(actions), "source_fps": source_fps}
        with RecordingWriter(out, game, space, fps, height, width, chunk_frames=chunk_frames) as writer:
            unfinished = [i for i, e in enumerate(writer.episodes) if not e["complete"] and e["source"] == source]
            # the same import interrupted before: go on where it stopped (decoding is deterministic), not beside it
            ep = writer.resume_episode(unfinished[-1]) if unfinished else writer.begin_episode(source=source)
            done = ep.frames_written
            with ep, bar:
                n = 0
                for frame, action in zip(_chain(first, ticks), log.tick_actions(fps, source_fps)):
                    if n >= done:
                        ep.append(_resize(frame, width, height), action)
                    n += 1
                    bar.update(1)
                if before >= n:  # only reached when the header gave no duration: the episode stays incomplete
                    raise InputError(f"action log {actions} starts at {first_entry:.3f} s, after the end of {video}: "
                                     f"it covers none of the video ({ep.name} left incomplete)")
        name = ep.name
    return ImportSummary(out, name, n, fps, decoded[0], source_fps, min(before, n),
                         _import_warnings(log, actions, video, n, fps, source_fps, duration))


def _import_warnings(log, actions, video, n: int, fps: float, source_fps: float, duration) -> tuple[str, ...]:
    """What an import took but a designer should hear about: a video shorter than its header says, log entries
    after its last frame, a log that never presses anything."""
    warnings = []
    if duration is not None:
        expected = round(duration * fps)
        if n < expected - max(2, expected // 100):
            warnings.append(f"{video} ends after {n} frames, but its header says about {expected}: the file may be "
                            "cut short")
    times = log.times(source_fps)
    late = [e for e, t in zip(log.entries, times) if t >= n / fps - 1e-9]  # never on screen: after the last tick
    if late:
        warnings.append(f"{len(late)} entries of {actions} (from line {late[0].line}) fall after the video's last "
                        f"frame ({n / fps:.2f} s) and were not used")
    if not any(e.keys or e.buttons or e.dx or e.dy for e in log.entries):
        warnings.append(f"{actions} never holds a key or a button and never moves the mouse: every frame's "
                        "action is empty")
    return tuple(warnings)


def _existing_dataset(out: Path, Recording):
    """The recording already at ``out``, None when there is none yet; a non-dataset folder is an InputError."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    return Recording(out)  # raises RecordingError (an InputError) when the folder is not a recording


def _check_compatible(rec, out, game, space, fps, height, width) -> None:
    want = {"game": game, "action space": space, "fps": fps, "size": (height, width)}
    have = {"game": rec.game, "action space": rec.action_space, "fps": rec.fps, "size": (rec.height, rec.width)}
    for what in want:
        if want[what] is not None and want[what] != have[what]:
            hint = ("; pass the same controls or a new output folder" if what == "action space" else "")
            raise InputError(f"existing dataset {out} has {what} {_show(have[what])}, "
                             f"the import asks for {_show(want[what])}{hint}")


def _show(v):
    return v.to_dict() if isinstance(v, ActionSpace) else v


def _av():
    """PyAV, imported lazily: only video export and import need FFmpeg (the optional extra ``video``)."""
    try:
        import av
    except ImportError:
        raise InputError("video import and export need PyAV: pip install av") from None
    return av


def _open_video(video: Path):
    av = _av()
    if not video.is_file():
        raise InputError(f"video not found: {video}")
    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {video} as a video: {e}") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{video} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame-parallel decoding
    return container, stream


def _frame_rate(stream, video) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise InputError(f"cannot tell the frame rate of {video}")
    return float(rate)


def _duration(container, stream) -> float | None:
    """The video's length in seconds from its header, None when it does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6  # microseconds
    return None


def _decode(container, stream, video, counter: list[int]) -> Iterator[tuple[float, object]]:
    """(seconds since the first frame, PyAV frame) in display order; ``counter[0]`` counts them."""
    av = _av()

    t0, i = None, 0
    try:
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else i / float(stream.average_rate or 30)
            t0 = t if t0 is None else t0
            i = counter[0] = i + 1
            yield t - t0, frame
    except av.error.FFmpegError as e:
        raise InputError(f"cannot decode {video} (frame {i}): {e}") from None


def _resample(frames: Iterator[tuple[float, object]], fps: float, source_fps: float) -> Iterator[np.ndarray]:
    """Full-size uint8 [H, W, 3] frames of ticks 0, 1, ...: tick k shows the source frame on screen at k / fps."""
    k, prev, prev_rgb, t_last = 0, None, None, 0.0

    def rgb():  # convert only source frames that some tick shows
        nonlocal prev_rgb
        if prev_rgb is None:
            prev_rgb = prev.to_ndarray(format="rgb24")
        return prev_rgb

    for t, frame in frames:
        while prev is not None and k / fps < t - TIME_EPS:  # tick k comes before this frame: the previous shows
            yield rgb()
            k += 1
        prev, prev_rgb, t_last = frame, None, t
    end = t_last + 1.0 / source_fps  # the last frame stays on screen for one source frame
    while prev is not None and k / fps < end - TIME_EPS:
        yield rgb()
        k += 1


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """[h, w, 3] -> [height, width, 3]; box (area) filter when shrinking, bilinear when enlarging."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    box = width <= w and height <= h
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BOX if box else Image.BILINEAR))
