"""Gaussian mixtures: the estimator (`mixture`), its math (`_math`, `_init`), the fit-gmm pipeline (`curves`,
`config`) and the MAETok authors' protocol (`official`)."""

from latentlab.analysis.gmm.mixture import ConvergenceWarning, GaussianMixture, GMMError, RegularisationWarning

__all__ = ["GaussianMixture", "ConvergenceWarning", "GMMError", "RegularisationWarning"]
