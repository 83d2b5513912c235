"""Which terms of the update each golden case pins: the ``coverage`` root attribute of its file.

A term is listed for a case exactly when getting that term wrong -- the named mistake in ``TERMS`` -- changes
at least one required field of the case by more than 100 times the checker's default tolerance
(``|cand - gold| > 100 (atol + rtol |gold|)`` somewhere), and a term is absent exactly when the mistake leaves
every field within the default tolerance.  ``tests/test_golden_coverage.py`` proves both directions for every
case and term with the independent PyTorch candidate (``tests/_torch_rules.py``, whose ``wrong=<term>`` makes
the mistake), so the table below is measured, not asserted.
"""
from __future__ import annotations

# term -> (what the correct update does; the mistake that the term's presence detects)
TERMS = {
    "batch_mean": ("the output error is the batch mean e = (softmax(a_N) - onehot(y)) / B (eq. (7), decisions D2)",
                   "e without the 1/B"),
    "inject": ("a hidden segment's feedback signal enters at the output of its `inject` layer (after the "
               "activation and any pooling)",
               "the signal enters one layer earlier (the ReLU derivative or the pooling is skipped)"),
    "feedback": ("FA-type rules (fa, kp, usf, brsf, frsf) carry the error to a layer's input with the recorded "
                 "`B`", "the layer's own W is used (BP's transport)"),
    "usf_scale": ("uSF's B = s sign(W), s the standard deviation of the weight init", "s = 1"),
    "drtp_target": ("DRTP's hidden segments receive B_i y* / B (drtp_reduction = mean)", "B_i y* without 1/B"),
    "pepita_error": ("PEPITA's modulated input is x + F (softmax - y*), the per-example error",
                     "x + F e with the batch-mean e"),
    "kp_decay": ("KP adds kp_decay * W to W's direction and kp_decay * B to B's", "the decay is dropped"),
    "alpha": ("default SSA: alpha scales the task gradients of U, s and V", "alpha ignored on U, s, V"),
    "alpha_bias": ("default SSA: alpha scales the bias's task gradient too", "the bias update not scaled"),
    "alpha_paper": ("paper SSA (eqs. (11)-(13)): alpha appears nowhere",
                    "alpha scales the task terms and the bias there as well"),
    "beta": ("the alignment gradient is 2 beta (X - T_X) (eq. (8))", "beta (X - T_X)"),
    "gamma": ("the orthogonality gradient is 4 gamma X (X^T X - I) (eq. (9))", "2 gamma X (X^T X - I)"),
    "gamma_placement": ("default SSA adds the orthogonality gradient after the projection, the paper variant "
                        "inside it (project_ortho)", "the other placement"),
    "hoyer": ("hoyer * d(||s||_1 / ||s||_2)/ds is added to every SVD layer's ds while hoyer_active",
              "the Hoyer term omitted"),
    "hoyer_classifier": ("... the classifier's ds included (reduce_last concerns only the rank cut)",
                         "the Hoyer term omitted on the classifier only"),
    "hoyer_paper": ("... in the paper variant too (it belongs to the rank schedule, not to eqs. (11)-(13))",
                    "the Hoyer term omitted in the paper variant"),
    "projection": ("default SSA: tangent projection X -> G - X sym(X^T G); paper: (I - U U^T) G for U and "
                   "G (I_r - V^T V) for V", "default: the complement (I - X X^T) G; paper: the tangent projection"),
    "s_inverse": ("default SSA's task term is the true gradient G V S (U) and G^T U S (V); the paper variant's "
                  "is G V S^-1 and G^T U S^-1 (eqs. (12), (13))", "S and S^-1 swapped"),
    "momentum": ("SGD momentum: buf = momentum buf + d (dampening 0; buf = d at the first step), p -= lr buf",
                 "buf = momentum buf + (1 - momentum) d"),
    "adam_bias": ("Adam divides m by 1 - beta1^t and v by 1 - beta2^t", "no bias correction"),
    "retraction": ("after an optimiser step SSA (orthogonality retract: every step; retract-every K: steps K, 2K, "
                   "...) replaces U and V by their polar factor X (X^T X)^(-1/2)",
                   "the Q factor of X = QR (diag(R) > 0) instead"),
    "retract_every": ("orthogonality retract-every K retracts after optimiser steps K, 2K, ... of the run only "
                      "(warm-up steps counted)", "a retraction after every step"),
    "predsim_beta": ("PredSim's local loss is (1 - beta) prediction + beta similarity matching",
                     "beta and 1 - beta swapped"),
    "similarity_std": ("PredSim's similarity matrix of a 4-D block output (C > 3, H > 1) is taken of its per-channel "
                       "standard deviations over space (unbiased)", "of the flattened output"),
    "last_module": ("AugLocal's last hidden layer learns from the output layer's error (BP through the output "
                    "layer), the layers before it from their auxiliary networks",
                    "the output error is not carried into the last hidden layer"),
    "feedback_conv": ("FA-type rules carry the error to a conv layer's input with its recorded conv-shaped `B` (the "
                      "input gradient of a convolution with kernel B)",
                      "the conv layer's own W is used there (linear layers keep their B)"),
    "paper_no_retract": ("paper SSA at its defaults (orthogonality retract, retraction auto -> none) never retracts",
                         "a polar retraction of U and V after every optimiser step"),
    "paper_retract_every": ("paper SSA with orthogonality retract-every (retraction auto -> polar) retracts after "
                            "optimiser steps K, 2K, ... as the default variant does",
                            "no retraction in the paper variant"),
}

# case -> terms (measured: see the module docstring)
COVERAGE: dict[str, tuple[str, ...]] = {
    "bp__mlp__default": ("batch_mean",),
    "bp__conv__default": ("batch_mean",),
    "bp__res__default": ("batch_mean",),
    "fa__mlp__default": ("batch_mean", "feedback"),
    "fa__conv__default": ("batch_mean", "feedback"),
    "kp__mlp__default": ("batch_mean", "feedback"),
    "kp__conv__default": ("batch_mean", "feedback"),
    "dfa__mlp__default": ("batch_mean", "inject"),
    "dfa__conv__default": ("batch_mean",),
    "dfa__res__default": ("batch_mean", "inject"),
    "usf__mlp__default": ("batch_mean", "feedback", "usf_scale"),
    "usf__conv__default": ("batch_mean", "feedback", "usf_scale"),
    "brsf__mlp__default": ("batch_mean", "feedback"),
    "brsf__conv__default": ("batch_mean", "feedback"),
    "frsf__mlp__default": ("batch_mean", "feedback"),
    "frsf__conv__default": ("batch_mean", "feedback"),
    "drtp__mlp__default": ("batch_mean", "inject", "drtp_target"),
    "drtp__conv__default": ("batch_mean", "drtp_target"),
    "drtp__res__default": ("batch_mean", "inject", "drtp_target"),
    "pepita__mlp__default": ("batch_mean", "pepita_error"),
    "ssa__mlp__default": ("batch_mean", "inject", "beta", "hoyer", "hoyer_classifier", "projection", "s_inverse"),
    "ssa__conv__default": ("batch_mean", "beta", "hoyer", "hoyer_classifier", "projection", "s_inverse"),
    "svd-bp__mlp__default": ("batch_mean", "hoyer", "hoyer_classifier"),
    "svd-bp__conv__default": ("batch_mean", "hoyer", "hoyer_classifier"),
    "bp__mlp__momentum3": ("batch_mean", "momentum"),
    "bp__conv__momentum3": ("batch_mean", "momentum"),
    "bp__mlp__adam3": ("batch_mean", "adam_bias"),
    "bp__conv__adam3": ("batch_mean", "adam_bias"),
    "kp__mlp__decay": ("batch_mean", "feedback", "kp_decay"),
    "kp__conv__decay": ("batch_mean", "feedback", "kp_decay"),
    "dfa__mlp__momentum3": ("batch_mean", "inject", "momentum"),
    "dfa__conv__momentum3": ("batch_mean", "momentum"),
    "dfa__mlp__adam3": ("batch_mean", "inject", "adam_bias"),
    "dfa__conv__adam3": ("batch_mean", "adam_bias"),
    "dfa__conv__before-pool": ("batch_mean", "inject"),
    "ssa__mlp__paper": ("batch_mean", "inject", "beta", "hoyer", "hoyer_classifier", "hoyer_paper", "projection"),
    "ssa__conv__paper": ("batch_mean", "beta", "hoyer", "hoyer_classifier", "hoyer_paper", "projection", "s_inverse"),
    "ssa__mlp__paper-sgd1": ("batch_mean", "inject", "beta", "hoyer", "hoyer_classifier", "hoyer_paper", "projection"),
    "ssa__conv__paper-sgd1": ("batch_mean", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier",
                              "hoyer_paper", "projection", "s_inverse"),
    "ssa__mlp__sgd1": ("batch_mean", "inject", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier",
                       "projection", "s_inverse"),
    "ssa__conv__sgd1": ("batch_mean", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier", "projection",
                        "s_inverse"),
    "ssa__mlp__coef": ("batch_mean", "inject", "alpha", "alpha_bias", "beta", "gamma", "gamma_placement", "hoyer",
                       "hoyer_classifier", "projection", "s_inverse"),
    "ssa__conv__coef": ("batch_mean", "alpha", "alpha_bias", "beta", "gamma", "gamma_placement", "hoyer",
                        "hoyer_classifier", "projection", "s_inverse"),
    "ssa__mlp__paper-coef": ("batch_mean", "inject", "alpha_paper", "beta", "gamma", "gamma_placement", "hoyer",
                             "hoyer_classifier", "hoyer_paper", "projection", "s_inverse"),
    "ssa__conv__paper-coef": ("batch_mean", "alpha_paper", "beta", "gamma", "gamma_placement", "hoyer",
                              "hoyer_classifier", "hoyer_paper", "projection", "s_inverse"),
    "ssa__mlp__momentum3": ("batch_mean", "inject", "beta", "hoyer", "hoyer_classifier", "projection", "s_inverse",
                            "momentum", "retraction"),
    "ssa__conv__momentum3": ("batch_mean", "beta", "hoyer", "hoyer_classifier", "projection", "s_inverse", "momentum",
                             "retraction"),
    "ssa__mlp__adam3": ("batch_mean", "inject", "beta", "hoyer", "hoyer_classifier", "projection", "s_inverse",
                        "adam_bias", "retraction"),
    "ssa__conv__adam3": ("batch_mean", "beta", "hoyer", "hoyer_classifier", "projection", "s_inverse", "adam_bias",
                         "retraction"),
    "ssa__mlp__every2": ("batch_mean", "inject", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier",
                         "projection", "s_inverse", "adam_bias", "retraction", "retract_every"),
    "ssa__conv__every2": ("batch_mean", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier", "projection",
                          "s_inverse", "adam_bias", "retraction", "retract_every"),
    "svd-bp__mlp__sgd1": ("batch_mean", "gamma", "hoyer", "hoyer_classifier"),
    "svd-bp__conv__sgd1": ("batch_mean", "gamma", "hoyer", "hoyer_classifier"),
    "predsim__mlp__default": ("batch_mean", "inject", "predsim_beta"),
    "predsim__conv__default": ("batch_mean", "inject", "predsim_beta", "similarity_std"),
    "predsim__mlp__warm2": ("batch_mean", "inject", "predsim_beta"),
    "predsim__conv__warm2": ("batch_mean", "inject", "predsim_beta", "similarity_std"),
    "auglocal__mlp__default": ("batch_mean", "inject", "last_module"),
    "auglocal__conv__default": ("batch_mean", "last_module"),
    "auglocal__res__default": ("batch_mean", "inject", "last_module"),
    "fa__conv2__default": ("batch_mean", "feedback", "feedback_conv"),
    "kp__conv2__default": ("batch_mean", "feedback", "feedback_conv"),
    "usf__conv2__default": ("batch_mean", "feedback", "usf_scale", "feedback_conv"),
    "brsf__conv2__default": ("batch_mean", "feedback", "feedback_conv"),
    "frsf__conv2__default": ("batch_mean", "feedback", "feedback_conv"),
    "ssa__conv__paper-momentum10": ("batch_mean", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier",
                                    "hoyer_paper", "projection", "s_inverse", "momentum", "paper_no_retract"),
    "ssa__conv__paper-every10": ("batch_mean", "beta", "gamma", "gamma_placement", "hoyer", "hoyer_classifier",
                                 "hoyer_paper", "projection", "s_inverse", "momentum", "retraction", "retract_every",
                                 "paper_retract_every"),
}


def coverage_of(case):
    """The terms case ``case`` (``<rule>__<model>__<variant>``) pins; ``()`` for a case not in the table."""
    return tuple(COVERAGE.get(case, ()))
