//! Device gateway: TCP/UDP/HTTP listeners for journey monitors and phones.
