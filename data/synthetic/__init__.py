"""The built-in synthetic FER benchmark: procedurally rendered faces with known label distributions.

It is the toolkit's embedded default dataset, so the whole pipeline and the label-noise / label-ambiguity
methods can be exercised without a download, against a ground truth no real dataset has.

``generative``  the model behind each face: latent VA clusters, true label distributions, annotators'
                votes, expression parameters (no drawing)
``render``      the procedural face renderer (identity, geometry, drawing, occluders, photometric noise)
``dataset``     one sample, the prepared directory, ``generate`` and the cached ``ensure_synthetic``
``identities``  a face-identity set drawn by the same renderer, disjoint from the benchmark's faces
``output``      worker processes, progress line and atomic/cached output folders shared by both

The command line is ``python -m preprocess.synthetic``. This package imports only numpy, OpenCV and the
project's ``common``/``data`` modules; nothing runs at import time.
"""

from data.synthetic.dataset import (GENERATOR_VERSION, config_hash, default_root, ensure_synthetic,
                                    ensure_synthetic_from_options, generate, render_sample)
from data.synthetic.generative import (CLASS_CENTRES, CLASS_SPREADS, IMBALANCE_ORDER, PARAM_NAMES, PROTOTYPES,
                                       SPLIT_IDS, SyntheticConfig, class_names, class_priors, expression_params,
                                       latent_class_sequence, sample_annotations, true_distribution)
from data.synthetic.identities import (IDENTITY_NAMESPACE, IdentityConfig, ensure_identities, generate_identities,
                                       identities_root, identity_config_hash, identity_params,
                                       render_identity_image)
from data.synthetic.render import NUM_LANDMARKS, render_face, sample_identity

__all__ = [
    "CLASS_CENTRES", "CLASS_SPREADS", "GENERATOR_VERSION", "IDENTITY_NAMESPACE", "IMBALANCE_ORDER",
    "NUM_LANDMARKS", "PARAM_NAMES", "PROTOTYPES", "SPLIT_IDS", "IdentityConfig", "SyntheticConfig",
    "class_names", "class_priors", "config_hash", "default_root", "ensure_identities", "ensure_synthetic",
    "ensure_synthetic_from_options", "expression_params", "generate", "generate_identities", "identities_root",
    "identity_config_hash", "identity_params", "latent_class_sequence", "render_face", "render_identity_image",
    "render_sample", "sample_annotations", "sample_identity", "true_distribution",
]
