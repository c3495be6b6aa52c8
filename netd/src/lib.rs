//! netd: the host network model (see issue 3).
