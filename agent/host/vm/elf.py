"""The little the launcher reads of ELF files: is a program static, can QEMU boot a
kernel image directly (PVH), and where the compressed kernel sits inside a bzImage."""

from __future__ import annotations

import lzma
import struct
import zlib

PT_INTERP = 3
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU looks for
ELF64 = b"\x7fELF\x02\x01"  # 64-bit, little-endian


def _program_headers(data: bytes) -> list[tuple[int, int, int]]:
    """(type, file offset, file size) of each program header of a 64-bit ELF."""
    if not data.startswith(ELF64):
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    entsize, count = struct.unpack_from("<HH", data, 0x36)
    headers = []
    for index in range(count):
        kind, _flags, offset, _vaddr, _paddr, size = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * entsize
        )
        headers.append((kind, offset, size))
    return headers


def is_static(head: bytes) -> bool:
    """Whether the program whose first bytes are ``head`` (its program headers
    included: 4 KiB is plenty) needs no dynamic loader."""
    try:
        return all(kind != PT_INTERP for kind, _, _ in _program_headers(head))
    except (ValueError, struct.error):
        return False


def has_pvh_entry(image: bytes) -> bool:
    """Whether the ELF kernel ``image`` has the PVH note QEMU's ``-kernel`` needs."""
    for kind, offset, size in _program_headers(image):
        if kind != PT_NOTE:
            continue
        position, end = offset, offset + size
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", image, position)
            name = image[position + 12 : position + 12 + namesz]
            if name.rstrip(b"\0") == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            position += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(size: int) -> int:
    return (size + 3) & ~3


def unpack_bzimage(bzimage: bytes) -> bytes | None:
    """The ELF ``vmlinux`` inside a compressed kernel image (xz or gzip), or None.

    Booting it directly saves the kernel's own decompression at every boot,
    seconds under emulation."""
    for magic, decompress in ((b"\xfd7zXZ\x00", _xz), (b"\x1f\x8b\x08\x00", _gzip)):
        start = bzimage.find(magic)
        while start >= 0:
            try:
                image = decompress(bzimage[start:])
            except (lzma.LZMAError, OSError, EOFError, zlib.error):
                image = b""
            if image.startswith(ELF64):
                return image
            start = bzimage.find(magic, start + 1)
    return None


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def modinfo(module: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a kernel module: each key's values."""
    if not module.startswith(ELF64):
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", module, 0x28)[0]
    entsize, count, names_index = struct.unpack_from("<HHH", module, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _kind, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", module, shoff + index * entsize
        )
        return name, offset, size

    _, names_offset, _ = section(names_index)
    for index in range(count):
        name, offset, size = section(index)
        end = module.index(b"\0", names_offset + name)
        if module[names_offset + name : end] == b".modinfo":
            info: dict[str, list[str]] = {}
            for entry in module[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    return {}
