//! `public/io/xenbus.h`: `enum xenbus_state`, the state a frontend and its backend each
//! publish as the decimal `state` key of their xenstore directory during the split-driver
//! handshake.
//!
//! The values are `XenbusState<Name>` in the header; here they are the bare upper-case
//! names (`xenbus::CONNECTED` is `XenbusStateConnected`).

/// `XenbusStateUnknown`: no state published yet (the key is absent or unreadable).
pub const UNKNOWN: u32 = 0;
/// `XenbusStateInitialising`: the device is being set up.
pub const INITIALISING: u32 = 1;
/// `XenbusStateInitWait`: the backend has published its features and waits for the
/// frontend's ring details (backend only).
pub const INIT_WAIT: u32 = 2;
/// `XenbusStateInitialised`: the frontend has published its ring details (frontend
/// only).
pub const INITIALISED: u32 = 3;
/// `XenbusStateConnected`: the device is in use.
pub const CONNECTED: u32 = 4;
/// `XenbusStateClosing`: the device is being shut down (by either end).
pub const CLOSING: u32 = 5;
/// `XenbusStateClosed`: the device is shut down.
pub const CLOSED: u32 = 6;
/// `XenbusStateReconfiguring`: the backend is being reconfigured (backend only).
pub const RECONFIGURING: u32 = 7;
/// `XenbusStateReconfigured`: the reconfiguration is done (backend only).
pub const RECONFIGURED: u32 = 8;
