//! Device backends the VMM provides to a PV guest in place of Xen's dom0 daemons.
//!
//! [`console`] stands in for xenconsoled: it services the guest's console page
//! (`struct xencons_interface`) and connects it to the user's terminal, a file, or a
//! pseudo-terminal. [`ring_page`] is the shared-page access it and the xenstore
//! daemon (`crate::xenstore`) use. [`service`] runs both on the backends' own thread.

pub mod blk;
pub mod console;
pub mod devices;
pub mod gnttab;
pub mod grant;
pub mod net;
pub mod ring;
pub mod ring_page;
pub mod service;
pub mod xenbus;
