"""Audio LLM families, the layer below every stage (`common <- models <- {data_prep, train, eval}`).

One module per family (`models/<name>.py`), each providing the members of
`models.interface.AudioLMFamily` (checked by tests/test_family_conformance.py), and the model-input
code every stage shares (`models.inputs`: render, audio-token arithmetic, prompts for generation,
training batches with assistant-only labels). A module of this package is a family when it defines
`MODEL_TYPES`; adding a family is adding one module here (plus its configs), nothing else changes:
the tests, benches and the layering check read the families from `list_families()` and each family's
own declarations. A family module may also live outside the repository: the folders named in
`ART_FAMILY_PATH` (separated by `os.pathsep`) are searched after this one, in this process and in the
processes it starts (tests/test_new_family.py adds a throwaway family that way).
Family modules import torch/transformers inside their functions, so `get_family(name).SYSTEM_PROMPT`
is cheap (data_prep reads it).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
from pathlib import Path
from types import ModuleType

FAMILY_PATH_ENV = "ART_FAMILY_PATH"
# Python imports `models.<name>` from every folder of the package's __path__, so a folder added here
# holds family modules that import and list like the ones beside this file (which win on a name clash).
__path__.extend(str(Path(p).resolve()) for p in os.environ.get(FAMILY_PATH_ENV, "").split(os.pathsep) if p)


def list_families() -> list[str]:
    """Names of the family modules in this package and the ART_FAMILY_PATH folders: public modules
    that define MODEL_TYPES."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and hasattr(_module(info.name), "MODEL_TYPES"):
            names.append(info.name)
    return sorted(names)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def get_family(name: str) -> ModuleType:
    """The family module `models.<name>`; unknown names fail with the list of known families."""
    known = list_families()
    if name not in known:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(known)}")
    return _module(name)


def as_family(family: str | ModuleType) -> ModuleType:
    """A family module given as itself or by name (the shared code takes either)."""
    return get_family(family) if isinstance(family, str) else family


def _local_config(name_or_path: str) -> dict | None:
    """config.json of a local folder, or of a hub repo already in the local cache (no download)."""
    path = Path(name_or_path) / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if Path(name_or_path).exists():
        raise FileNotFoundError(f"{name_or_path} has no config.json; is it a model folder?")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # not a valid repo id: fall through to the id-string rules
        return None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def family_of(name_or_path: str) -> str:
    """Family name for a checkpoint: from config.json `model_type` when a config is available
    locally, else from the hub id string (e.g. `Qwen/Qwen2-Audio-7B-Instruct` -> qwen2_audio)."""
    families = {name: get_family(name) for name in list_families()}
    config = _local_config(str(name_or_path))
    if config is not None:
        model_type = config.get("model_type")
        for name, module in families.items():
            if model_type in module.MODEL_TYPES:
                return name
        known = {name: list(m.MODEL_TYPES) for name, m in families.items()}
        raise ValueError(f"{name_or_path}: model_type {model_type!r} matches no family; known: {known}")
    for name, module in families.items():
        if re.search(module.HUB_ID_PATTERN, str(name_or_path), flags=re.IGNORECASE):
            return name
    raise ValueError(
        f"cannot tell the model family of {name_or_path!r}: no local config.json and the id matches none of "
        f"{', '.join(families)}; pass the family explicitly"
    )
