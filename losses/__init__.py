"""Pure loss maths for the FER methods: tensors in, tensors out, no state.

One module per method, each following the official code described in
``shared/reference/peer-methods.md`` (section numbers are cited in every docstring):

* :mod:`losses.ldlva` -- LDLVA (label distribution learning from valence-arousal neighbours), §1.
* :mod:`losses.lanet` -- LA-Net (landmark-aware label distribution, EL contrastive, AWing), §2.
* :mod:`losses.ddaf`  -- DDAF (dual-domain affect fusion: VA mixed labels, weighted losses), §3.
* :mod:`losses.nla`   -- NLA (noise-aware Gaussian weighting and logit-space JSD), §4.
* :mod:`losses.common` -- shared helpers (guarded log, one-hot, soft-target cross-entropy).

Conventions: tensors are float32; functions are usable inside ``tf.function`` (no Python branching on
tensor values); the number of classes C is never hard-coded. Learned state (per-sample λ, class
centres, label banks, queues) lives on the models; update rules here return new values instead of
assigning. Offline statistics (class counts, trimmed VA statistics, CCC, sampler counts) are numpy.
"""
