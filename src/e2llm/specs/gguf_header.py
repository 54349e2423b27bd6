"""A fast reader of a GGUF file's header: metadata key/values and tensor names.

`gguf.GGUFReader` builds Python objects for every element of every array (the tokenizer's ~50k
strings) and takes seconds even for a 135M model; planning only needs the scalar metadata, array
lengths and tensor names, so this walks the header with `struct` over an mmap and skips array
bodies. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from e2llm.errors import InputError

# value type id -> struct format of one scalar (8: string, 9: array are handled apart)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's entry in the header (its data is not read)."""

    shape: tuple[int, ...]  # GGUF order: ne0, the length of a row, first
    ggml_type: int  # gguf.GGMLQuantizationType value; not checked here
    offset: int  # bytes from the start of the (aligned) data section


@dataclass(frozen=True)
class GGUFHeader:
    """Scalar/string metadata values; arrays appear as their length in `array_lengths`."""

    metadata: dict[str, int | float | bool | str]
    array_lengths: dict[str, int]
    tensors: dict[str, GGUFTensor]
    tensors_end: int  # where the tensor infos end; the data section starts at the next alignment
    file_size: int

    @property
    def tensor_names(self) -> frozenset[str]:
        return frozenset(self.tensors)


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[int | float | bool, ...]:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        raw = self.buf[self.pos : self.pos + int(n)]
        if len(raw) != n:
            raise struct.error("string runs past the end of the file")
        self.pos += int(n)
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        (n,) = self.unpack("Q")
        self.pos += int(n)


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse the header of the GGUF file at `path`; a bad file is an `InputError`."""
    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(buf), str(p))
    except FileNotFoundError:
        raise InputError(str(p), "GGUF file not found") from None
    except (OSError, ValueError, struct.error) as e:
        raise InputError(str(p), f"cannot read GGUF header: {e}") from None


def _parse(cur: _Cursor, where: str) -> GGUFHeader:
    if cur.buf[:4] != b"GGUF":
        raise InputError(where, "not a GGUF file (bad magic)", bytes(cur.buf[:4]))
    cur.pos = 4
    (version,) = cur.unpack("I")
    if version not in (2, 3):
        raise InputError(where, "unsupported GGUF version", version)
    n_tensors, n_kv = cur.unpack("QQ")
    metadata: dict[str, int | float | bool | str] = {}
    arrays: dict[str, int] = {}
    for _ in range(int(n_kv)):
        key = cur.string()
        (vtype,) = cur.unpack("I")
        if vtype == _ARRAY:
            etype, count = cur.unpack("IQ")
            arrays[key] = int(count)
            if etype == _STRING:
                for _ in range(int(count)):
                    cur.skip_string()
            elif etype in _SCALAR:
                cur.pos += struct.calcsize("<" + _SCALAR[int(etype)]) * int(count)
            else:
                raise InputError(where, f"unsupported array element type in {key}", etype)
        elif vtype == _STRING:
            metadata[key] = cur.string()
        elif vtype in _SCALAR:
            metadata[key] = cur.unpack(_SCALAR[int(vtype)])[0]
        else:
            raise InputError(where, f"unsupported metadata type in {key}", vtype)
    if cur.pos > len(cur.buf):  # the skips above do not read, so check they stayed inside
        raise InputError(where, "truncated GGUF header", f"{len(cur.buf)} bytes")
    tensors = {}
    for _ in range(int(n_tensors)):
        name = cur.string()
        (n_dims,) = cur.unpack("I")
        if n_dims > _MAX_DIMS:
            raise InputError(f"{where}: {name}", f"tensor has more than {_MAX_DIMS} dimensions", n_dims)
        dims = cur.unpack("Q" * int(n_dims))
        ggml_type, offset = cur.unpack("IQ")
        tensors[name] = GGUFTensor(tuple(int(d) for d in dims), int(ggml_type), int(offset))
    return GGUFHeader(metadata, arrays, tensors, cur.pos, len(cur.buf))
