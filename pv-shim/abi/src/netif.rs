//! `public/io/netif.h`: the network device protocol.
