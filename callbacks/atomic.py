"""Temporary re-export of `utils.atomic` (moved there in issue 7) until every caller imports it from there."""

from utils.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, ensure_writable_dir
from utils.checks import check_filename_part

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_filename_part",
    "ensure_writable_dir",
]
