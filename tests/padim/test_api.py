"""The public API is pinned: what __all__ promises exists, and the seed's names are there."""

from __future__ import annotations

import padim


def test_every_name_in_all_exists() -> None:
    missing = [name for name in padim.__all__ if not hasattr(padim, name)]
    assert missing == []


def test_public_names_are_listed_in_all() -> None:
    public = {name for name in vars(padim) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(padim, name)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(padim.__all__) - {"__version__"}


def test_seed_readme_api_is_available() -> None:
    from padim import PaDiM, PaDiMNVP, PaDiMShared, PaDiMSVDD  # noqa: F401

    for method in ("train_one_batch", "train", "predict", "score", "save", "load"):
        assert callable(getattr(PaDiM, method))
