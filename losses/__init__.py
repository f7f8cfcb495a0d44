"""Pure loss maths for the FER methods: tensors in, tensors out, no state.

One module per method. Each module docstring cites the method's paper (authors, title, venue) and its
official repository (files and functions); each function docstring names the paper equation or
component and the official function it reproduces:

* :mod:`losses.ldlva` -- LDLVA (label distribution learning from valence-arousal neighbours): Le et al.,
  WACV 2023; ``minhnhatvt/label-distribution-learning-fer-tf``.
* :mod:`losses.lanet` -- LA-Net (landmark-aware label distribution, EL contrastive, AWing): Wu & Cui,
  ICCV 2023; ``hw-tony/LA-Net``.
* :mod:`losses.ddaf`  -- DDAF (dual-domain affect fusion: VA mixed labels, weighted losses): Neo, Chen &
  Winkler, CVPR Workshops (ABAW) 2023; the authors' closest public code ``dexterdley/FER_C``.
* :mod:`losses.nla`   -- NLA (noise-aware Gaussian weighting and logit-space JSD): Lee et al., AAAI 2025;
  ``jungyu0413/NLA``.
* :mod:`losses.scn`   -- SCN (Wang et al., CVPR 2020): importance-weighted logits, rank
  regularisation, margin relabelling.
* :mod:`losses.rul`   -- RUL (Zhang et al., NeurIPS 2021): uncertainty-weighted feature mixup and
  the add-up loss.
* :mod:`losses.eac`   -- EAC (Zhang et al., ECCV 2022): flip attention consistency of class
  activation maps.
* :mod:`losses.common` -- shared helpers (guarded log, one-hot, soft-target cross-entropy, class
  activation maps, horizontal flip of channels-last maps).

SCN, RUL and EAC cite their papers and official repositories in their module docstrings.

Conventions: tensors are float32; functions are usable inside ``tf.function`` (no Python branching on
tensor values); the number of classes C is never hard-coded. Learned state (per-sample λ, class
centres, label banks, queues) lives on the models; update rules here return new values instead of
assigning. Offline statistics (class counts, trimmed VA statistics, CCC, sampler counts) are numpy.
"""
