"""Write an evaluation episode as MP4 (imageio-ffmpeg: its wheel ships ffmpeg) or GIF (Pillow).

Frames are the emulator's full-colour screen at native resolution (210×160 for Atari, envpool's
``render_mode="rgb_array"``), one per agent step: at frame skip 4 that is 15 frames per second,
so the video plays in real time. The running score is drawn in a small box in the bottom-left
corner, and the final score and the model's sha256 go into the MP4's ``comment`` metadata.
Frames stream to the encoder one by one (a 27K-step episode never sits in memory) for MP4; the
GIF writer holds them all, so prefer MP4 for long episodes.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

FPS = 15  # 60 Hz emulator / frame skip 4


class VideoWriter:
    def __init__(self, path: Path, title: str = "") -> None:
        self.path = Path(path)
        self.title = title
        self.comment = ""
        self.frames: list[Any] = []  # GIF only
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        self._writer: Any = None
        self._gif = self.path.suffix.lower() == ".gif"

    def __enter__(self) -> VideoWriter:
        return self

    def add(self, frame: Any, score: float) -> None:
        import numpy as np

        frame = _draw_score(np.ascontiguousarray(frame, dtype=np.uint8), score)
        self.shape = tuple(frame.shape)
        self.count += 1
        if self._gif:
            self.frames.append(frame)
            return
        if self._writer is None:
            import imageio.v2 as iio

            # macro_block_size=2: keep 210x160 as it is (the default 16 would rescale it).
            self._writer = iio.get_writer(
                self.path, format="FFMPEG", mode="I", fps=FPS, codec="libx264",
                macro_block_size=2, pixelformat="yuv420p", quality=8,
                ffmpeg_log_level="error",
                output_params=["-metadata", f"title={self.title}"],
            )  # fmt: skip
        self._writer.append_data(frame)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gif:
            if exc_type is None and self.frames:
                import imageio.v3 as iio

                iio.imwrite(self.path, self.frames, duration=1000 / FPS, loop=0)
            return
        if self._writer is not None:
            self._writer.close()
            if exc_type is None and self.comment:
                _set_comment(self.path, self.comment)

    def info(self) -> dict[str, Any]:
        h, w = (self.shape or (0, 0))[:2]
        return {"frames": self.count, "height": h, "width": w, "fps": FPS,
                "comment": self.comment}  # fmt: skip


def _draw_score(frame: Any, score: float) -> Any:
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    text = f"{score:g}"
    h = frame.shape[0]
    box = draw.textbbox((2, h - 12), text)
    draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
    draw.text((2, h - 12), text, fill=(255, 255, 0))
    return np.asarray(img)


def _set_comment(path: Path, comment: str) -> None:
    """Rewrite the container with a comment tag (stream copy: no re-encode)."""
    import subprocess

    import imageio_ffmpeg

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(path),
         "-c", "copy", "-metadata", f"comment={comment}", str(tmp)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    tmp.replace(path)
