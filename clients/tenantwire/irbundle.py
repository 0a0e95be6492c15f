"""The OpenVINO IR bundle: one file that carries an IR model's two files, for submission.

An OpenVINO IR model is two files, ``model.xml`` (the graph) and ``model.bin`` (the weights), but a
submission is one byte blob. The bundle is a ZIP archive (suffix ``.ovir``) holding exactly the
entries ``model.xml`` and ``model.bin`` at its root, both stored uncompressed (weights hardly
compress, and a stored entry cannot expand beyond its declared size, so a bundle is no zip bomb).
The client library builds one when given a ``.xml`` path with its ``.bin`` beside it; the OpenVINO
runtime reads both members from memory. Only the standard library is used, so the client does not
need OpenVINO.
"""

import io
import zipfile
from pathlib import Path
from typing import Tuple, Union

# Written at the Python 3.6 language level: a device worker imports this module (README, "Device workers").

SUFFIX = ".ovir"
XML = "model.xml"
BIN = "model.bin"
_ZIP_MAGIC = b"PK\x03\x04"


class BundleError(ValueError):
    """The bytes are not a valid IR bundle, or the IR files to bundle are missing."""


def is_bundle(data: Union[bytes, memoryview]) -> bool:
    return bytes(data[:4]) == _ZIP_MAGIC


def pack(xml: bytes, weights: bytes) -> bytes:
    """A bundle of one IR model's graph and weights."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(XML, xml)
        archive.writestr(BIN, weights)
    return out.getvalue()


def pack_files(xml_path: Path) -> bytes:
    """Bundle ``xml_path`` with the ``.bin`` of the same stem beside it, as OpenVINO saves them."""
    bin_path = xml_path.with_suffix(".bin")
    if not bin_path.is_file():
        raise BundleError(f"OpenVINO IR {xml_path} needs its weights file {bin_path} beside it")
    return pack(xml_path.read_bytes(), bin_path.read_bytes())


def unpack(data: Union[bytes, memoryview]) -> Tuple[bytes, bytes]:
    """(graph xml, weights) from a bundle. Raises BundleError."""
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            if set(infos) != {XML, BIN}:
                raise BundleError(f"an IR bundle holds exactly {XML} and {BIN}, this one holds {sorted(infos)}")
            if any(info.compress_type != zipfile.ZIP_STORED for info in infos.values()):
                raise BundleError("an IR bundle's entries must be stored uncompressed")
            return archive.read(XML), archive.read(BIN)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise BundleError(f"not a valid IR bundle: {exc}") from exc
