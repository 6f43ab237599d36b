"""xtrt.profile: profile a model's whole pipeline and say whether the CPU or the GPU limits it.

    from xtrt.profile import ProfileOptions, profile_model
    result = profile_model(ProfileOptions(model=Path("m.onnx"), images="photos/", batches=[1, 8]))
    print(result.verdict.line)

Command line: ``python -m xtrt.profile MODEL.onnx`` (or ``xtrt-profile``).  Heavy imports happen
on first use, so importing this package is cheap.
"""
from __future__ import annotations

__all__ = ["ProfileOptions", "ProfileResult", "profile_model", "SCHEMA_VERSION"]


def __getattr__(name: str):
    if name in __all__:
        from xtrt.profile import api

        return getattr(api, name)
    raise AttributeError(name)
