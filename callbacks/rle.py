"""Temporary re-export of `utils.rle` (moved there in issue 7) until every caller imports it from there."""

from utils.rle import RleEncoder, rle_decode, rle_encode

__all__ = ["RleEncoder", "rle_decode", "rle_encode"]
