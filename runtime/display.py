"""Pixels on a screen: a frame drawn as a texture by moderngl, in a pygame window or an offscreen EGL framebuffer.

``FramePresenter`` owns the GL objects (one texture the size of a frame, one full-screen quad) and draws a frame
with aspect-correct integer scaling, then alpha-blends ``Overlay`` images (the HUD, the help) over it at one screen
pixel per image pixel: overlays live only on the screen, never in the frame. ``Window`` gives it a pygame window
with an OpenGL 3.3 core context;
``OffscreenDisplay`` gives it an EGL framebuffer (no display needed: tests, video export, servers). Both read back
what they drew with ``read_screen()``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from games.data.errors import InputError

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

_VERTEX = """
#version 330
in vec2 in_pos;
out vec2 uv;
void main() {
    uv = vec2(in_pos.x * 0.5 + 0.5, 0.5 - in_pos.y * 0.5);  // row 0 of the frame at the top
    gl_Position = vec4(in_pos, 0.0, 1.0);
}
"""
_FRAGMENT = """
#version 330
uniform sampler2D frame;
in vec2 uv;
out vec4 color;
void main() { color = vec4(texture(frame, uv).rgb, 1.0); }
"""
_OVERLAY_FRAGMENT = """
#version 330
uniform sampler2D image;
in vec2 uv;
out vec4 color;
void main() { color = texture(image, uv); }
"""


@dataclass
class Overlay:
    """An RGBA image drawn over the frame's picture at one screen pixel per image pixel."""
    image: np.ndarray  # uint8 [h, w, 4], row 0 at the top
    where: str = "top-left"  # top-left | center of the frame's picture on the screen


def fit_viewport(frame_wh: tuple[int, int], screen_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest integer multiple of the frame that fits the screen, centred.

    Falls back to an aspect-correct fractional scale when the screen is smaller than one frame.
    """
    fw, fh = frame_wh
    sw, sh = screen_wh
    k = min(sw // fw, sh // fh)
    if k >= 1:
        w, h = fw * k, fh * k
    else:
        s = min(sw / fw, sh / fh)
        w, h = max(1, int(fw * s)), max(1, int(fh * s))
    return (sw - w) // 2, (sh - h) // 2, w, h


class FramePresenter:
    """Draws uint8 [H, W, 3] frames into the current framebuffer of a moderngl context."""

    def __init__(self, ctx, filter: str = "nearest"):
        import moderngl

        if filter not in ("nearest", "linear"):
            raise InputError(f"filter must be nearest or linear, got {filter!r}")
        self.ctx = ctx
        self._gl_filter = moderngl.NEAREST if filter == "nearest" else moderngl.LINEAR
        self.program = ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        quad = np.array([-1, -1, 1, -1, -1, 1, 1, 1], dtype="f4")
        quad_buffer = ctx.buffer(quad.tobytes())
        self.vao = ctx.vertex_array(self.program, [(quad_buffer, "2f", "in_pos")])
        self.overlay_program = ctx.program(vertex_shader=_VERTEX, fragment_shader=_OVERLAY_FRAGMENT)
        self.overlay_vao = ctx.vertex_array(self.overlay_program, [(quad_buffer, "2f", "in_pos")])
        self.texture = None
        self.overlay_textures: list = []  # one per overlay slot, re-created when its size changes
        self.scale = 1  # screen pixels per frame pixel at the last draw (at least 1)

    def draw(self, frame: np.ndarray, target_size: tuple[int, int],
             overlays: tuple[Overlay, ...] = ()) -> tuple[int, int, int, int]:
        """Upload ``frame``, draw it scaled into a target of ``target_size`` (w, h) and blend ``overlays`` over it;
        returns the frame's viewport."""
        import moderngl

        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        h, w = frame.shape[:2]
        if self.texture is None or self.texture.size != (w, h):
            if self.texture is not None:
                self.texture.release()
            self.texture = self.ctx.texture((w, h), 3, alignment=1)
            self.texture.filter = (self._gl_filter, self._gl_filter)
        self.texture.write(frame.tobytes(), alignment=1)
        self.ctx.viewport = (0, 0, *target_size)
        self.ctx.clear(0.0, 0.0, 0.0)
        viewport = fit_viewport((w, h), target_size)
        self.ctx.viewport = viewport
        self.texture.use(0)
        self.vao.render(moderngl.TRIANGLE_STRIP)
        self.scale = max(1, viewport[2] // w)
        for slot, overlay in enumerate(overlays):
            self._draw_overlay(slot, overlay, viewport, target_size)
        return viewport

    def _draw_overlay(self, slot: int, overlay: Overlay, viewport, target_size) -> None:
        import moderngl

        image = np.ascontiguousarray(overlay.image, dtype=np.uint8)
        h, w = image.shape[:2]
        while len(self.overlay_textures) <= slot:
            self.overlay_textures.append(None)
        texture = self.overlay_textures[slot]
        if texture is None or texture.size != (w, h):
            if texture is not None:
                texture.release()
            texture = self.overlay_textures[slot] = self.ctx.texture((w, h), 4, alignment=1)
            texture.filter = (moderngl.NEAREST, moderngl.NEAREST)
        texture.write(image.tobytes(), alignment=1)
        vx, vy, vw, vh = viewport  # GL viewports count y from the bottom
        if overlay.where == "center":
            x, y = vx + (vw - w) // 2, vy + (vh - h) // 2
        else:
            margin = max(2, min(vw, vh) // 64)
            x, y = vx + margin, vy + vh - margin - h
        self.ctx.viewport = (x, y, w, h)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        texture.use(0)
        self.overlay_vao.render(moderngl.TRIANGLE_STRIP)
        self.ctx.disable(moderngl.BLEND)
        self.ctx.viewport = (0, 0, *target_size)


def _no_display_error() -> InputError:
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    why = f"cannot connect to {display}" if display else "DISPLAY is not set"
    return InputError(f"no display available ({why}); run it on a desktop, or use headless=true to render offscreen")


class Window:
    """A pygame window with an OpenGL 3.3 core context that moderngl draws frames into."""

    def __init__(self, size: tuple[int, int], title: str = "rollingworld", filter: str = "nearest",
                 fullscreen: bool = False, vsync: bool = False, capture: bool = False):
        import pygame

        self.capture = capture  # keep a read-back of every presented frame (tests, screenshots)
        self._screen = None

        explicit_driver = os.environ.get("SDL_VIDEODRIVER")
        if sys.platform.startswith("linux") and not explicit_driver and not (
                os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise _no_display_error()
        if pygame.display.get_init() and pygame.display.get_driver() in ("offscreen", "dummy") and not explicit_driver:
            pygame.display.quit()  # initialised without a display earlier (e.g. by a Gymnasium renderer)
        for attempt in range(5):
            try:
                pygame.display.init()
            except pygame.error as e:
                raise InputError(f"cannot open a window: {e} (use headless=true to render offscreen)") from None
            if explicit_driver or pygame.display.get_driver() not in ("offscreen", "dummy"):
                break
            # SDL could not reach the display server and fell back to no display; a server that is busy
            # accepting (or a window just closed) can refuse a connection for a moment: try again briefly
            pygame.display.quit()
            time.sleep(0.1 * (attempt + 1))
        else:
            raise _no_display_error()
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MAJOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MINOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_PROFILE_MASK, pygame.GL_CONTEXT_PROFILE_CORE)
        flags = pygame.OPENGL | pygame.DOUBLEBUF | (pygame.FULLSCREEN if fullscreen else pygame.RESIZABLE)
        try:
            self.surface = pygame.display.set_mode((0, 0) if fullscreen else size, flags, vsync=int(vsync))
        except pygame.error as e:
            raise InputError(f"cannot open an OpenGL 3.3 window: {e} (use headless=true to render offscreen)") from None
        pygame.display.set_caption(title)
        import moderngl

        self.ctx = moderngl.create_context()
        self.presenter = FramePresenter(self.ctx, filter)
        self.size = pygame.display.get_window_size()

    @property
    def scale(self) -> int:
        """Screen pixels per frame pixel at the last show."""
        return self.presenter.scale

    def show(self, frame: np.ndarray, overlays: tuple[Overlay, ...] = ()) -> None:
        """Draw ``frame`` scaled to the window, ``overlays`` over it, and flip."""
        import pygame

        self.size = pygame.display.get_window_size()
        self.presenter.draw(frame, self.size, overlays)
        if self.capture:
            w, h = self.size
            data = self.ctx.screen.read(viewport=(0, 0, w, h), components=3, alignment=1)
            self._screen = np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()
        pygame.display.flip()

    def read_screen(self) -> np.ndarray:
        """What the window showed at the last flip, uint8 [H, W, 3], row 0 at the top.

        Needs ``capture=True``: the frame is read from the default framebuffer just before the flip (on Mesa the
        front buffer of an X window reads back black, so reading it after the flip would prove nothing).
        """
        if self._screen is None:
            raise RuntimeError("read_screen needs Window(capture=True) and one show()")
        return self._screen

    def set_title(self, title: str) -> None:
        import pygame

        pygame.display.set_caption(title)

    def toggle_fullscreen(self) -> None:
        import pygame

        pygame.display.toggle_fullscreen()  # SDL keeps the GL context; the next show() fits the new size

    def grab_mouse(self, grab: bool) -> None:
        """Confine and hide the pointer (SDL then reports relative motion without edges), or release it."""
        import pygame

        pygame.event.set_grab(grab)
        pygame.mouse.set_visible(not grab)

    def close(self) -> None:
        import pygame

        self.ctx.release()
        pygame.display.quit()


class OffscreenDisplay:
    """The same drawing into an EGL framebuffer: no window, no display server."""

    def __init__(self, size: tuple[int, int], filter: str = "nearest"):
        import moderngl

        try:
            self.ctx = moderngl.create_context(standalone=True, backend="egl")
        except Exception as e:  # moderngl raises a bare Exception when EGL is missing
            raise InputError(f"cannot create an offscreen EGL context: {e}") from None
        self.size = tuple(size)
        self.fbo = self.ctx.simple_framebuffer(self.size, components=3)
        self.presenter = FramePresenter(self.ctx, filter)

    @property
    def scale(self) -> int:
        return self.presenter.scale

    def show(self, frame: np.ndarray, overlays: tuple[Overlay, ...] = ()) -> None:
        self.fbo.use()
        self.presenter.draw(frame, self.size, overlays)

    def read_screen(self) -> np.ndarray:
        w, h = self.size
        data = self.fbo.read(components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()

    def set_title(self, title: str) -> None:
        pass

    def toggle_fullscreen(self) -> None:
        pass

    def grab_mouse(self, grab: bool) -> None:
        pass

    def close(self) -> None:
        self.ctx.release()
        # moderngl leaves the EGL context current on this thread: a GLX window opened later in the same process
        # then dies with BadAccess in glXMakeCurrent (Mesa). Releasing the thread's EGL state prevents that.
        try:
            import ctypes

            ctypes.CDLL("libEGL.so.1").eglReleaseThread()
        except OSError:
            pass
