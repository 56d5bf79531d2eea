//! netback: the network device backend (`public/io/netif.h`).
