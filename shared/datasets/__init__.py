"""Dataset specs: the model, the loader and the built-in specs (`transactions`, `breast_cancer`)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from shared.datasets.spec import (
    DatasetSpec,
    FieldSpec,
    FieldType,
    Impute,
    ModelSpec,
    PiiAction,
    PrivacySpec,
    QualitySpec,
    Role,
)

__all__ = [
    "DatasetSpec",
    "FieldSpec",
    "FieldType",
    "Impute",
    "ModelSpec",
    "PiiAction",
    "PrivacySpec",
    "QualitySpec",
    "Role",
    "UnknownDataset",
    "builtin_names",
    "load_spec",
    "load_spec_file",
]


class UnknownDataset(KeyError):
    """No spec with that name."""


def load_spec_file(path: Path) -> DatasetSpec:
    """Load and validate a spec from a YAML file; errors name the file and field."""
    try:
        data = yaml.safe_load(path.read_text())
        return DatasetSpec.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"dataset spec {path}: {error}") from error


def builtin_names() -> list[str]:
    """Names of the specs shipped with Lepton."""
    files = resources.files("shared.datasets").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


@cache
def load_spec(name: str, extra_dir: Path | None = None) -> DatasetSpec:
    """The spec called `name`: from `extra_dir/<name>.yaml` if present, else built in."""
    if extra_dir is not None and (extra_dir / f"{name}.yaml").is_file():
        return load_spec_file(extra_dir / f"{name}.yaml")
    if name not in builtin_names():
        raise UnknownDataset(name)
    with resources.as_file(resources.files("shared.datasets") / f"{name}.yaml") as path:
        return load_spec_file(path)
