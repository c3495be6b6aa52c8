//! overlay: the WireGuard data path and cluster store (see issue 5).
