"""Whether the files of a checkpoint can be read, checked without loading them (and without torch): each JSON file
parses (`trainer_state.json` holds a Trainer state), each safetensors file's header describes exactly the bytes the
file has, a sharded model's index names shards that are there, and each `torch.save` archive (`optimizer.pt`,
`scheduler.pt`, `rng_state.pth`, ...) has its zip directory, with every member inside the file.

What this cannot find: changed bytes inside a tensor's data. safetensors keeps no checksum, and `torch.load` does not
check the CRCs of its zip archive, so a checkpoint with flipped bits in its weights or optimizer state resumes with
them, whatever the values.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile

__all__ = ["damaged_files"]

# torch.save archives a checkpoint holds (and the pickled training_args.bin, also a zip archive).
_ARCHIVES = (".pt", ".pth", ".bin")
# A safetensors header above this size is not one (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


def damaged_files(path: str) -> list[str]:
    """What is wrong with the files of the checkpoint folder `path`, one entry a file, e.g.
    `["model.safetensors is truncated: its header describes 1,204 bytes of tensors, the file holds 1,000"]`; `[]`
    when none of the checks above finds anything. A missing file is not reported here (see
    [`~hf_maxsup.runner.output_dir.checkpoint_problems`]).
    """
    problems = []
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if name.endswith(".json"):
            problem = _json_problem(file, name, path)
        elif name.endswith(".safetensors"):
            problem = _safetensors_problem(file)
        elif name.endswith(_ARCHIVES):
            problem = _archive_problem(file)
        else:
            continue
        if problem:
            problems.append(f"{name} {problem}")
    return problems


def _json_problem(file: str, name: str, folder: str) -> str | None:
    try:
        with open(file, encoding="utf-8") as f:
            content = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        if name == "trainer_state.json":
            return None  # a truncated state is the mark of an interrupted save: an incomplete checkpoint
        return f"is not readable JSON ({err})"
    if name == "trainer_state.json" and not (isinstance(content, dict) and isinstance(content.get("global_step"), int)):
        return f"holds no Trainer state (a {type(content).__name__} without global_step)"
    if name.endswith(".safetensors.index.json"):
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            return "holds no weight_map"
        missing = sorted({shard for shard in weight_map.values() if not os.path.isfile(os.path.join(folder, shard))})
        if missing:
            return f"names shard(s) that are missing: {', '.join(missing)}"
    return None


def _safetensors_problem(file: str) -> str | None:
    """Checks the layout of the format: an 8-byte little-endian header size, the JSON header, then the tensors' bytes,
    which must end exactly where the file ends."""
    size = os.path.getsize(file)
    if size < 8:
        return f"is {size} bytes long: too short for a safetensors file (an empty or truncated write)"
    with open(file, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if header_size > min(size - 8, _MAX_HEADER):
            return f"has no safetensors header (it gives a header of {header_size:,} bytes in a file of {size:,})"
        try:
            header = json.loads(f.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError) as err:
            return f"has an unreadable safetensors header ({type(err).__name__}: {err})"
    if 8 + header_size + end != size:
        state = "truncated" if 8 + header_size + end > size else "longer than its header says"
        return f"is {state}: its header describes {end:,} bytes of tensors, the file holds {size - 8 - header_size:,}"
    return None


def _archive_problem(file: str) -> str | None:
    """Checks that a `torch.save` zip archive has its directory (written last) and that each member lies inside the
    file; not the members' CRCs (a full read of the file, which `torch.load` does not check either)."""
    size = os.path.getsize(file)
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"is not a whole torch.save archive ({err}; {size:,} bytes: truncated, or another kind of file)"
    outside = [member.filename for member in members if member.header_offset + member.compress_size > size]
    if outside:
        return f"is truncated: its member {outside[0]} ends past the file's {size:,} bytes"
    return None
