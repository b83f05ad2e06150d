"""Writing the viewer's frames to files: ``.mp4`` (imageio-ffmpeg, H.264) and ``.gif``
(Pillow, a palette per frame), one frame at a time, under a temporary name renamed when
complete."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ._optional import require
from .errors import MissingFileError, MovieExistsError, OptionError

__all__ = ["palette_frame", "write_movie"]


def write_movie(
    viewer: Any,
    path: Path,
    times: np.ndarray,
    *,
    fps: float | None,
    overwrite: bool,
    quality: float,
    progress: bool,
) -> Path:
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise OptionError(f"path {str(path)!r} must end in .mp4 or .gif (the format to write)")
    if path.exists() and not overwrite:
        raise MovieExistsError(
            f"{path} exists; pass overwrite=True to replace it, or choose another path."
        )
    if path.is_dir():
        raise MovieExistsError(f"{path} is a directory; choose a file path ending in {suffix}")
    if not path.parent.is_dir():
        raise MissingFileError(f"the folder {path.parent} does not exist; create it first")
    fps = float(fps if fps is not None else (viewer.fr or 30.0))
    if not fps > 0:
        raise OptionError(f"fps={fps!r} must be positive")
    if suffix == ".mp4":
        if not 1 <= quality <= 10:
            raise OptionError(f"quality={quality!r} must be in 1..10")
        require("imageio_ffmpeg", "writing .mp4")
    else:
        require("PIL.Image", "writing .gif")
    _ = viewer.limits  # exact limits first (may take one pass over Y), outside the bar
    # written under a hidden name, renamed when complete (a failed write leaves nothing)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        with tqdm(total=len(times), desc=path.name, unit="frame", disable=not progress) as bar:

            def frames() -> Iterator[np.ndarray]:
                for t in times:
                    yield viewer.frame(int(t))
                    bar.update(1)

            if suffix == ".mp4":
                _write_mp4(tmp, frames(), viewer.frame_shape, fps, quality)
            else:
                _write_gif(tmp, frames(), fps)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_mp4(
    path: Path, frames: Iterator[np.ndarray], shape: tuple[int, ...], fps: float, quality: float
) -> None:
    imageio_ffmpeg = require("imageio_ffmpeg", "writing .mp4")

    H, W = shape[0], shape[1]
    H2, W2 = H + H % 2, W + W % 2
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (W2, H2),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=quality,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        buf = np.zeros((H2, W2, 3), dtype=np.uint8)
        for frame in frames:
            buf[:H, :W] = frame
            writer.send(np.ascontiguousarray(buf))
    finally:
        writer.close()


def palette_frame(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index (H, W) uint8, palette (n, 3) uint8)`` with ``palette[index]`` ≈ ``frame``.

    Exact when the frame has at most 256 colours. Otherwise the rarest gray levels (``r = g =
    b``) are dropped and their pixels take the nearest kept gray level.
    """
    f = np.asarray(frame, dtype=np.uint8)
    code = (f[..., 0].astype(np.uint32) << 16) | (f[..., 1].astype(np.uint32) << 8) | f[..., 2]
    uniq, inv, counts = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    if uniq.size > 256:
        r, g, b = (uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255
        gray = (r == g) & (g == b)
        n_drop = uniq.size - 256
        gray_idx = np.flatnonzero(gray)
        if gray_idx.size < n_drop:
            raise OptionError(
                f"a frame has {int((~gray).sum())} distinct non-gray colours; a GIF holds 256"
            )
        order = gray_idx[np.argsort(counts[gray_idx], kind="stable")]
        drop = np.zeros(uniq.size, dtype=bool)
        drop[order[:n_drop]] = True
        kept_gray = np.flatnonzero(gray & ~drop)
        remap = np.arange(uniq.size)
        levels = r[kept_gray].astype(np.int64)
        for i in np.flatnonzero(drop):
            remap[i] = kept_gray[np.argmin(np.abs(levels - int(r[i])))]
        keep = np.flatnonzero(~drop)
        new_pos = np.full(uniq.size, -1, dtype=np.int64)
        new_pos[keep] = np.arange(keep.size)
        inv = new_pos[remap][inv]
        uniq = uniq[keep]
    palette = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=-1)
    return inv.reshape(f.shape[:2]).astype(np.uint8), palette.astype(np.uint8)


def _write_gif(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    Image = require("PIL.Image", "writing .gif")

    def paletted(frame: np.ndarray) -> Any:
        index, palette = palette_frame(frame)
        im = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
        im.putpalette(palette.ravel().tobytes(), rawmode="RGB")
        return im

    it = iter(frames)
    first = paletted(next(it))
    duration = max(20, round(1000.0 / fps / 10.0) * 10)  # GIF delays are 1/100 s
    first.save(
        path,
        format="GIF",
        save_all=True,
        append_images=(paletted(f) for f in it),
        duration=duration,
        loop=0,
    )
