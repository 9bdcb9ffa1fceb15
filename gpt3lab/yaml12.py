"""YAML loading with YAML 1.2's numbers.

PyYAML resolves plain scalars by YAML 1.1 rules, under which `3e-3` and `1e5` (no dot, or no sign after
the `e`) are strings; YAML 1.2, JSON, litgpt's and nanoGPT's configs all read them as floats. This loader
is PyYAML's safe loader plus the 1.2 float form, so `lr: 3e-3` is a number and only a quoted `'3e-3'`
stays a string.
"""
from __future__ import annotations

import re

import yaml


class SafeLoader12(yaml.SafeLoader):
    """yaml.SafeLoader that also resolves YAML 1.2 floats (1e5, 3e-3, .5, 1.)."""


# YAML 1.2 core schema float: a dot or an exponent is required (plain digits stay ints)
_FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_FLOAT_12_STRICT = re.compile(r"^(?=.*[.eE])" + _FLOAT_12.pattern[1:])

SafeLoader12.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SafeLoader12.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12_STRICT, list("-+0123456789."))


def safe_load(text: str):
    """yaml.safe_load with YAML 1.2 floats."""
    return yaml.load(text, Loader=SafeLoader12)   # noqa: S506 (a SafeLoader subclass)


__all__ = ["safe_load", "SafeLoader12"]
