//! The CNI plugin (see issue 4).
