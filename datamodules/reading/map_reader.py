"""Rows of a fragment's 2-D map (mask, labels, ignore / supervision / validation map), whatever its file format.

Maps come as PNG (grey, bilevel, palette, grey+alpha, RGB(A), 16-bit), TIFF (strips or tiles, any compression
tifffile decodes, the same colour types) or zarr (a 2-D ``(y, x)`` array, or a 3-D ``(z, y, x)`` label volume as
the challenge's label converter writes: the map is the maximum over ``z``). Every kind is turned into one channel
of *values* on a *full scale* (1, 255 or 65535) by one documented rule:

- grey, bilevel, 16-bit: the value as stored (TIFF min-is-white grey is inverted);
- palette: the brightest channel of the pixel's palette colour, times its palette alpha (if any);
- RGB: the brightest channel; RGBA and grey+alpha: that, times alpha / full scale (transparent reads as 0).

TIFF and zarr maps are read band of rows by band (strips or tiles decoded as the rows are asked for), so a
330-megapixel map is never whole in memory. A PNG cannot be decoded in parts by Pillow: it is held as Pillow's
own buffer (1 byte a pixel for grey and palette maps, 4 for RGBA) and bands are copied out of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

MAP_SUFFIXES = (".png", ".tif", ".tiff", ".zarr")
_BAND_PIXELS = 1 << 22  # about 4 Mi pixels a band: 4 MB of uint8 rows however wide the map is
_ZARR_DTYPES = ("bool", "uint8", "uint16")
_FULL_SCALE = {0: 1, 1: 255, 2: 65535}  # by itemsize (0: bool): the value meaning "fully on"


def check_shape(found: tuple[int, ...], shape: tuple[int, int], path: Path, what: str) -> None:
    """Raises ValueError naming ``path`` when a map's ``(H, W)`` is not the volume's."""
    if tuple(found) != tuple(shape):
        raise ValueError(
            f"{what} '{path}' is {found[1]}x{found[0]} (W x H) but the volume's slices are {shape[1]}x{shape[0]}"
        )


def _brightest(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1)


def _times_alpha(value: np.ndarray, alpha: np.ndarray, full: int) -> np.ndarray:
    wide = value.astype(np.uint32) * alpha.astype(np.uint32)
    return ((wide + full // 2) // full).astype(value.dtype)


def _colour_rule(pixels: np.ndarray, colour: str, full: int) -> np.ndarray:
    """One channel from ``[h, w]`` or ``[h, w, c]`` pixels by the module's rule."""
    if colour in ("grey", "bilevel"):
        return pixels[..., 0] if pixels.ndim == 3 else pixels
    if colour == "grey+alpha":
        return _times_alpha(pixels[..., 0], pixels[..., 1], full)
    if colour == "rgb":
        return _brightest(pixels[..., :3])
    if colour == "rgba":
        return _times_alpha(_brightest(pixels[..., :3]), pixels[..., 3], full)
    raise AssertionError(colour)


class MapReader:
    """One channel of a 2-D map, read in bands of rows; opening checks the file, its size and its kind.

    Args:
        path: a ``.png``, ``.tif`` / ``.tiff`` or ``.zarr`` map.
        shape: the volume's ``(H, W)``.
        what: what the map is, for error messages ("mask", "ink labels" …).

    Attributes:
        colour: ``grey``, ``bilevel``, ``palette``, ``grey+alpha``, ``rgb`` or ``rgba`` (how the file stores colour).
        full: the value meaning "fully on": 1 (bilevel / bool), 255 (8-bit) or 65535 (16-bit).
        band_rows: rows per band that reading costs least.

    Raises:
        ValueError: an unreadable file, a map that is not 2-D, an unsupported pixel type or a size other than
            ``shape``, naming the file.
    """

    def __init__(self, path: Path, shape: tuple[int, int], what: str) -> None:
        self.path, self.shape, self.what = Path(path), tuple(shape), what
        self._png: Image.Image | None = None
        self._lut: np.ndarray | None = None
        self._tiff: tuple[tifffile.TiffFile, tifffile.TiffPage] | None = None
        self._zarr = None
        suffix = self.path.suffix.lower()
        if suffix == ".zarr":
            self._open_zarr()
        elif suffix in (".tif", ".tiff"):
            self._open_tiff()
        elif suffix == ".png":
            self._open_png()
        else:
            raise ValueError(f"{what} '{path}': unsupported map format (expected {', '.join(MAP_SUFFIXES)})")
        check_shape(self._size, self.shape, self.path, what)
        self.band_rows = max(1, min(self.shape[0], self._band_rows()))

    @property
    def description(self) -> str:
        """The storage in a few words, e.g. ``png palette 8-bit``."""
        bits = {1: "1-bit", 255: "8-bit", 65535: "16-bit"}[self.full]
        return f"{self.path.suffix.lower().lstrip('.')} {self.colour} {bits}"

    # ---------------------------------------------------------------------------------------------- opening

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{self.what} '{self.path}' {message}")

    def _open_png(self) -> None:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # real labels reach 330 Mpx
        try:
            img = Image.open(self.path)
            img.load()  # Pillow closes a single-frame file it opened once decoded
        except Exception as err:
            raise self._fail(f"cannot be read as an image: {err}") from err
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        modes = {
            "1": ("bilevel", 1),
            "L": ("grey", 255),
            "LA": ("grey+alpha", 255),
            "RGB": ("rgb", 255),
            "RGBA": ("rgba", 255),
            "P": ("palette", 255),
            "PA": ("palette", 255),
            "I;16": ("grey", 65535),
            "I;16B": ("grey", 65535),
            "I;16L": ("grey", 65535),
            "I": ("grey", 65535),
        }
        if img.mode not in modes:
            raise self._fail(f"has Pillow mode {img.mode}, which is not a supported map type")
        self.colour, self.full = modes[img.mode]
        if img.mode in ("P", "PA"):
            self._lut = _palette_lut(img)
        self._png, self._size = img, (img.height, img.width)

    def _open_tiff(self) -> None:
        try:
            tif = tifffile.TiffFile(self.path)
        except Exception as err:
            raise self._fail(f"cannot be read as a TIFF: {type(err).__name__}: {err}") from err
        page = tif.pages.first
        samples, dtype = int(page.samplesperpixel), np.dtype(page.dtype)
        series_shape = tuple(tif.series[0].shape) if tif.series else ()
        if len(series_shape) - (samples > 1) != 2:
            tif.close()
            raise self._fail(f"holds an image of shape {series_shape}; expected a 2-D map (one page)")
        photometric = int(page.photometric)
        if dtype not in (np.dtype(bool), np.dtype("uint8"), np.dtype("uint16")) or page.imagedepth > 1:
            tif.close()
            raise self._fail(f"holds {dtype} pixels of depth {page.imagedepth}; expected a 2-D 1/8/16-bit map")
        self.full = _FULL_SCALE[dtype.itemsize if dtype.kind != "b" else 0]
        if photometric == tifffile.PHOTOMETRIC.PALETTE:
            self.colour = "palette"
            rgb = np.asarray(page.colormap, dtype=np.float64).T  # [entries, 3], 16-bit
            self._lut = np.round(rgb.max(axis=1) / 257.0).astype(np.uint8)
            self.full = 255
        elif samples == 1:
            self.colour = "bilevel" if dtype.kind == "b" else "grey"
        elif samples == 2:
            self.colour = "grey+alpha"
        elif samples in (3, 4) and photometric == tifffile.PHOTOMETRIC.RGB:
            self.colour = "rgb" if samples == 3 else "rgba"
        else:
            tif.close()
            raise self._fail(f"has {samples} samples per pixel (photometric {photometric}); expected grey or RGB(A)")
        self._invert = photometric == tifffile.PHOTOMETRIC.MINISWHITE and dtype.kind != "b" and samples == 1
        self._tiff, self._size = (tif, page), tuple(int(s) for s in page.shape[:2])
        self._segments: Iterator | None = None
        self._decoded_to = 0  # rows of the page decoded so far by the running segment iterator
        self._pending: dict[int, np.ndarray] = {}  # decoded rows not yet handed out, by first row

    def _open_zarr(self) -> None:
        from datamodules.reading.volume_zarr import native_dtype, open_node, resolve_array

        label = f"{self.what} '{self.path}'"
        node = open_node(self.path, label)
        errors = []
        for ndim, axes in ((2, ("y", "x")), (3, ("z", "y", "x"))):
            try:
                array = resolve_array(node, label, ndim=ndim, axes=axes)
                break
            except ValueError as err:
                errors.append(str(err))
        else:
            raise ValueError(f"{label} is neither a 2-D (y, x) map nor a 3-D (z, y, x) label volume: {errors[0]}")
        dtype = native_dtype(array, label, _ZARR_DTYPES)
        self.full = _FULL_SCALE[dtype.itemsize if dtype.kind != "b" else 0]
        self.colour = "bilevel" if dtype.kind == "b" else "grey"
        self._zarr = array
        self._size = tuple(int(s) for s in array.shape[-2:])

    def _band_rows(self) -> int:
        width = max(1, self.shape[1])
        rows = max(16, _BAND_PIXELS // width)
        if self._zarr is not None:
            chunk = int(self._zarr.chunks[-2])
            return chunk * max(1, rows // chunk)
        if self._tiff is not None:
            page = self._tiff[1]
            step = int(page.tilelength) if page.is_tiled else int(page.rowsperstrip or self.shape[0])
            step = min(step, self.shape[0])
            return step * max(1, rows // step)
        return rows

    # ---------------------------------------------------------------------------------------------- reading

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as one channel of values on the ``full`` scale (bool, uint8 or uint16).

        Bands are cheapest asked for in order, top to bottom (a TIFF is decoded once per pass).
        """
        try:
            if self._png is not None:
                pixels = np.asarray(self._png.crop((0, start, self.shape[1], stop)))
                if self._lut is not None:
                    index = pixels[..., 0] if pixels.ndim == 3 else pixels
                    values = self._lut[index]
                    return _times_alpha(values, pixels[..., 1], 255) if pixels.ndim == 3 else values
                if self.full == 65535 and pixels.dtype != np.uint16:  # mode "I": int32 holding 16-bit values
                    if pixels.min() < 0 or pixels.max() > 65535:
                        raise self._fail("holds values outside 0..65535")
                    pixels = pixels.astype(np.uint16)
                return _colour_rule(pixels, self.colour, self.full)
            if self._zarr is not None:
                band = np.asarray(self._zarr[..., start:stop, :])
                return band.max(axis=0) if band.ndim == 3 else band
            pixels = self._tiff_rows(start, stop)
            if self._lut is not None:
                return self._lut[pixels]
            if self._invert:
                return (self.full - pixels).astype(pixels.dtype)
            return _colour_rule(pixels, self.colour, self.full)
        except ValueError:
            raise
        except Exception as err:  # a damaged strip, tile or chunk: name the map, not the decoder's internals
            raise self._fail(f"cannot read rows {start}..{stop}: {type(err).__name__}: {err}") from err

    def _tiff_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows of the TIFF page, decoding strips or tiles in order and keeping only those not yet handed out."""
        tif, page = self._tiff
        if self._segments is None or start < self._hand_out_from:
            self._segments = page.segments(sort=True)
            self._decoded_to, self._pending, self._hand_out_from = 0, {}, 0
        width = self.shape[1]
        samples = int(page.samplesperpixel)
        while self._decoded_to < stop:
            # One row of tiles (or one strip) at a time: all its segments share their first row.
            data, index, _ = next(self._segments)
            y = int(index[2])
            if y not in self._pending:
                rows = min(data.shape[1], self.shape[0] - y)
                self._pending[y] = np.zeros((rows, width, samples), dtype=page.dtype)
            band = self._pending[y]
            x = int(index[3])
            cols = min(data.shape[2], width - x)
            band[:, x : x + cols] = data[0, : band.shape[0], :cols]
            if x + cols >= width:
                self._decoded_to = y + band.shape[0]
        out = np.empty((stop - start, width, samples), dtype=page.dtype)
        for y in sorted(self._pending):
            band = self._pending[y]
            lo, hi = max(start, y), min(stop, y + band.shape[0])
            if lo < hi:
                out[lo - start : hi - start] = band[lo - y : hi - y]
            if y + band.shape[0] <= stop:
                del self._pending[y]  # every later request starts at or after stop
        self._hand_out_from = stop
        return out[..., 0] if samples == 1 else out

    def bands(self) -> Iterator[tuple[slice, np.ndarray]]:
        """Every band of rows, top to bottom."""
        for start in range(0, self.shape[0], self.band_rows):
            stop = min(start + self.band_rows, self.shape[0])
            yield slice(start, stop), self.rows(start, stop)

    def close(self) -> None:
        """Releases the file (a PNG's decoded buffer, a TIFF's handle)."""
        if self._tiff is not None:
            self._tiff[0].close()
            self._tiff = None
        self._png = None

    def __enter__(self) -> MapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _palette_lut(img: Image.Image) -> np.ndarray:
    """Index -> grey value of a palette image: the brightest channel of each colour, times its tRNS alpha."""
    palette = np.asarray(img.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(palette)] = palette.max(axis=1)[:256]
    transparency = img.info.get("transparency")
    if isinstance(transparency, (bytes, bytearray)):
        alpha = np.full(256, 255, dtype=np.uint8)
        alpha[: len(transparency)] = np.frombuffer(bytes(transparency), dtype=np.uint8)[:256]
        lut = _times_alpha(lut, alpha, 255)
    elif isinstance(transparency, int) and 0 <= transparency < 256:
        lut[transparency] = 0
    return lut
