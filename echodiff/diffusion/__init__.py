"""Cascaded video diffusion (EchoDiffusion) on imagen-pytorch: build, condition on EF + anatomy, sample, save.

Importing this package imports imagen-pytorch with no network access (see :func:`import_imagen`).
"""

from echodiff.diffusion.imagen import (
    EF_EMBEDDINGS,
    CascadeModel,
    build_imagen,
    condition_embedding,
    ef_embedding,
    import_imagen,
    load_model_folder,
    save_model_folder,
)
from echodiff.diffusion.sampling import SOLVERS, sample, write_avis

import_imagen()

__all__ = [
    "EF_EMBEDDINGS", "SOLVERS", "CascadeModel", "build_imagen", "condition_embedding", "ef_embedding", "import_imagen",
    "load_model_folder", "sample", "save_model_folder", "write_avis",
]
